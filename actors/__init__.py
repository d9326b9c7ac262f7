"""Installed as `discovery.actors`; never import it as a top-level `actors` package."""

if __name__ != "discovery.actors":
    raise ImportError("import this package as 'discovery.actors', not 'actors' (see PACKAGING.md)")
