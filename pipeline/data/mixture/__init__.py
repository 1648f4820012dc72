"""Dataset mixtures: the YAML files curators edit, and ``vla mixture show | diff``."""
