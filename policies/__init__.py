"""Installed as `discovery.policies`; never import it as a top-level `policies` package."""

if __name__ != "discovery.policies":
    raise ImportError("import this package as 'discovery.policies', not 'policies' (see PACKAGING.md)")
