"""Versions of the libraries the pipeline is most sensitive to, against the ranges it is tested with.

``vla --version`` prints them; ``vla doctor`` shows them as its first check. A version outside its
tested range gives a warning, never an error: a cluster image may carry a newer release that works.
The ranges follow pyproject.toml (tests/test_versions.py keeps the two in step): CI tests the pins
in constraints.txt, ``make test-compat`` the lowest torch.
"""

from __future__ import annotations

import importlib.metadata
import platform
from dataclasses import dataclass

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

__all__ = ["TESTED", "VersionCheck", "installed", "check_versions", "version_lines"]

TESTED: dict[str, str] = {
    "python": ">=3.11,<3.14",
    "torch": ">=2.11,<=2.14.1",
    "transformers": ">=5.17,<6",
    "ray": ">=2.60,<2.61",
}


@dataclass(frozen=True)
class VersionCheck:
    name: str
    version: str | None  # None: not installed
    tested: str

    @property
    def in_range(self) -> bool | None:
        """True/False against the tested range; None when not installed or not a PEP 440 version."""
        if self.version is None:
            return None
        try:
            return Version(self.version) in SpecifierSet(self.tested)
        except InvalidVersion:
            return None

    @property
    def warning(self) -> str | None:
        if self.in_range is False:
            return f"{self.name} {self.version} is outside the tested range {self.tested}"
        return None


def installed(name: str) -> str | None:
    """The installed version of a distribution (``python``: the interpreter's), None if absent."""
    if name == "python":
        return platform.python_version()
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_versions() -> list[VersionCheck]:
    return [VersionCheck(name, installed(name), spec) for name, spec in TESTED.items()]


def version_lines(checks: list[VersionCheck]) -> list[str]:
    """One line per library: ``torch 2.14.1 (tested >=2.11,<=2.14.1)`` or ``ray not installed``."""
    return [f"{c.name} {c.version} (tested {c.tested})" if c.version else f"{c.name} not installed"
            for c in checks]
