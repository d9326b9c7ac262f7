"""CD-VAE as a campaign generator: `kind` declares the config and ``GENERATOR_KIND`` (light),
`generator` holds `CDVAEGenerator` (imports torch only when built)."""
