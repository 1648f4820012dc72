"""OXE dataset registry and standardization (numpy only).

>>> from pipeline.data.oxe import get_spec
>>> spec = get_spec("bridge_orig")
>>> ep = spec.standardize(raw_episode)          # canonical episode, see pipeline.data.schema
"""

from pipeline.data.oxe.registry import MAGIC_SOUP_PLUS, get_spec, list_datasets
from pipeline.data.oxe.spec import STANDARDIZATION_VERSION, DatasetSpec

__all__ = ["DatasetSpec", "MAGIC_SOUP_PLUS", "STANDARDIZATION_VERSION", "get_spec", "list_datasets"]
