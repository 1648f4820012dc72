"""pipeline: the data and training pipeline behind OpenVLA-style vision-language-action models.

Importing the package only sets a few process-wide environment defaults that must be in place
before optional heavy libraries load (gcsfs, ray, tensorflow). Everything else is imported lazily.
"""

import os

# gcsfs >= 2026.x asks for the bucket type over gRPC first, which a local emulator cannot answer
# (every call then hangs 60 s). Hierarchical-namespace buckets are not used by this project.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

__all__ = ["__version__"]
