"""``{{name}}`` placeholders in text templates (bash and YAML keep their own ``$`` and ``{}``)."""

from __future__ import annotations

import os
import re

__all__ = ["render", "render_file"]

_TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def render(text: str, values: dict[str, object]) -> str:
    """Replace every ``{{key}}`` with ``str(values[key])``; an unknown key is a bug (KeyError)."""

    def _sub(match: re.Match) -> str:
        return str(values[match.group(1)])

    return _PLACEHOLDER.sub(_sub, text)


def render_file(name: str, values: dict[str, object]) -> str:
    """Render ``launch/templates/<name>``."""
    with open(os.path.join(_TEMPLATE_DIR, name), encoding="utf-8") as f:
        text = f.read()
    return render(text, values)
