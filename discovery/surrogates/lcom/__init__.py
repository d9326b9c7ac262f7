"""LCOM as a campaign surrogate: `kind` declares the config and ``KIND`` (light), `surrogate`
holds `LCOMSurrogate` (imports torch only when built)."""
