"""YAML documents that curators edit (mixtures, dataset registry entries): parse once, and keep the
line of every key so that errors can say ``<file>:<line>: <key>: ...``."""

from __future__ import annotations

from typing import Any

import yaml

from pipeline.errors import UserError

__all__ = ["key_lines", "parse_with_lines"]


def key_lines(node: Any, prefix: str = "") -> dict[str, int]:
    """Dotted key path (``a.b``, ``a[0].c``) -> 1-based line, for every mapping key and list item."""
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            out[f"{prefix}{k.value}"] = k.start_mark.line + 1
            out.update(key_lines(v, f"{prefix}{k.value}."))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out[f"{prefix[:-1]}[{i}]"] = v.start_mark.line + 1
            out.update(key_lines(v, f"{prefix[:-1]}[{i}]."))
    return out


def parse_with_lines(text: str, path: str, *, what: str = "YAML",
                     loader: type = yaml.SafeLoader) -> tuple[Any, dict[str, int]]:
    """``(data, key_lines)`` of ``text``; a syntax error is one UserError ``<path>:<line>: malformed <what>: ...``."""
    try:
        data = yaml.load(text, Loader=loader)  # noqa: S506 - loader is SafeLoader or a subclass
        lines = key_lines(yaml.compose(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{where}: malformed {what}: {getattr(e, 'problem', None) or e}") from None
    return data, lines
