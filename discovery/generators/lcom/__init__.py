"""LCOM as a campaign generator: `kind` declares the config and ``GENERATOR_KIND`` (light),
`generator` holds `LCOMGenerator` (imports torch only when built)."""
