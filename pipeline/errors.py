"""Errors that reach the user as one line and exit code 2 (no traceback)."""

from __future__ import annotations

from typing import Any

__all__ = ["UserError", "ConfigError"]


class UserError(Exception):
    """A mistake in user input (config, data, URL). The message names what and where, and the fix."""


class ConfigError(UserError, ValueError):
    """A bad config value: ``<key>=<value>: <what is expected>``.

    A config section raises it with the key relative to itself (``save_every``); the config loader
    (:func:`pipeline.config.load_config`) prefixes the section's path (``checkpoint.save_every``).
    """

    def __init__(self, key: str, value: Any, expected: str) -> None:
        self.key, self.value, self.expected = key, value, expected
        super().__init__(f"{key}={_show(value)}: {expected}")

    def __reduce__(self) -> tuple:  # picklable (Ray sends exceptions between processes)
        return ConfigError, (self.key, self.value, self.expected)

    def under(self, section: str) -> ConfigError:
        """The same error with the key inside ``section`` (a dotted path)."""
        return ConfigError(f"{section}.{self.key}", self.value, self.expected)


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return repr(list(value))
    return str(value)
