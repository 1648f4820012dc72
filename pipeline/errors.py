"""Errors that reach the user as one line and exit code 2 (no traceback)."""

__all__ = ["UserError"]


class UserError(Exception):
    """A mistake in user input (config, data, URL). The message names what and where, and the fix."""
