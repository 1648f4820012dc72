"""Where the files shipped with the package live.

``dataset_mixtures/`` (mixtures + registry entries) is the repository's top-level folder; the
symlink ``pipeline/dataset_mixtures`` points at it, so setuptools copies it into every wheel as
package data, and a checkout, an editable install and a wheel install all resolve it the same way.
"""

from __future__ import annotations

import os

__all__ = ["mixtures_dir", "registry_dir"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def mixtures_dir() -> str:
    """The built-in mixtures folder (real path: the checkout's ``dataset_mixtures/``, or the copy
    inside an installed wheel)."""
    return os.path.realpath(os.path.join(_PACKAGE_DIR, "dataset_mixtures"))


def registry_dir() -> str:
    """The built-in dataset registry entries (``dataset_mixtures/registry``)."""
    return os.path.join(mixtures_dir(), "registry")
