"""Typed configuration: omegaconf structured configs built from dataclasses.

Every CLI verb owns one dataclass config (kept next to the component that uses it). A config is
built from its defaults, then an optional YAML file (``--config FILE``), then ``key=value``
overrides, in that order. Any problem (unknown key, wrong type, missing required value, malformed
YAML, a value a section's ``__post_init__`` refuses) raises :class:`~pipeline.errors.UserError` with
one line that names the full key. Sections compose (a section is a field holding another config
dataclass; no config inherits another's checks) and raise :class:`~pipeline.errors.ConfigError`
with their own key; the loader adds the section's path. :func:`parse_argv` is the one parser of
``[--config FILE] [key=value ...]`` (the ``vla`` CLI and every torchrun rank).

Field help text lives in ``field(metadata={"help": "..."})`` and is shown by ``vla VERB --help``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from typing import Any, TypeVar

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf import errors as oc_errors

from pipeline.errors import ConfigError, UserError

__all__ = ["MISSING", "load_config", "load_argv", "parse_argv", "config_help", "to_yaml", "to_dict", "flat_keys",
           "helpfield", "as_name_list", "import_object"]

T = TypeVar("T")


def helpfield(default: Any = MISSING, help: str = "", **kwargs: Any) -> Any:
    """A dataclass field with help text; mutable defaults go through ``default_factory``."""
    meta = {"help": help}
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta, **kwargs)
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        value = default
        return dataclasses.field(default_factory=lambda: dataclasses.replace(value), metadata=meta, **kwargs)
    return dataclasses.field(default=default, metadata=meta, **kwargs)


def import_object(spec: str) -> Any:
    """The object an import string ``module:attr`` names (verbs, launch backends, hook factories)."""
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def as_name_list(value: Any, key: str) -> list[str]:
    """A list of names from a list or a comma-separated string ('all', 'a,b')."""
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key}={value!r}: expected a list of names, e.g. {key}=[bridge_orig,kuka] or {key}=all")
    return [v.strip() for v in value]


def flat_keys(cls: type) -> list[tuple[str, str, Any, str]]:
    """``(dotted_key, type_name, default, help)`` for every leaf field of a config dataclass."""
    rows: list[tuple[str, str, Any, str]] = []
    instance = _defaults_instance(cls)
    _collect(cls, instance, "", rows)
    return rows


def _defaults_instance(cls: type) -> Any:
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.default is MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            kwargs[f.name] = MISSING
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    name = getattr(tp, "__name__", None) or str(tp)
    return str(name).replace("typing.", "")


def _collect(cls: type, instance: Any, prefix: str, rows: list) -> None:
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _collect(type(value), value, key + ".", rows)
            continue
        default = "???" if value is MISSING else value
        rows.append((key, _type_name(f.type), default, f.metadata.get("help", "")))


def config_help(cls: type) -> str:
    rows = flat_keys(cls)
    width = max((len(k) for k, *_ in rows), default=10)
    lines = []
    for key, tp, default, text in rows:
        shown = "(required)" if default == "???" else f"= {default!r}"
        lines.append(f"  {key:<{width}}  {tp:<10} {shown}" + (f"  {text}" if text else ""))
    return "\n".join(lines)


def _suggest(key: str, cls: type) -> str:
    moved = getattr(cls, "MOVED_KEYS", {})
    if key in moved:
        return f" (now {moved[key]})"
    keys = [k for k, *_ in flat_keys(cls)]
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _user_error(e: Exception, cls: type, source: str) -> UserError:
    key = getattr(e, "full_key", None) or getattr(e, "key", None) or ""
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, oc_errors.ConfigKeyError) or "not in struct" in msg or "Key '" in msg and "not in" in msg:
        return UserError(f"{source}: unknown config key '{key}'{_suggest(str(key), cls)}")
    if isinstance(e, oc_errors.MissingMandatoryValue):
        return UserError(f"missing required config value '{key}' (set it with {key}=...)")
    if isinstance(e, oc_errors.ValidationError):
        return UserError(f"{source}: config key '{key}' has the wrong type: {msg}")
    return UserError(f"{source}: bad config value for '{key}': {msg}")


def _parse_overrides(overrides: list[str]) -> list[str]:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise UserError(f"bad argument '{item}': expected key=value")
    return list(overrides)


def _load_yaml(path: str) -> DictConfig:
    from pipeline import fs

    try:
        text = fs.read_text(path)
    except FileNotFoundError as e:
        raise UserError(f"config file {path} not found") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"config file {path}{where}: malformed YAML ({getattr(e, 'problem', e)})") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path}: expected a mapping of keys at the top level")
    return OmegaConf.create(data)


def _open_dicts(node: DictConfig) -> None:
    """Let ``dict``-typed fields take new keys (``debug.hook_args.step=2``); sections stay closed."""
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            if OmegaConf.get_type(child) is dict:
                OmegaConf.set_struct(child, False)
            else:
                _open_dicts(child)


def _build(cls: type, node: DictConfig, path: str = "") -> Any:
    """``cls`` from ``node``, sections first; a section's ConfigError gets the section's path."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = f"{path}{f.name}"
        if OmegaConf.is_missing(node, f.name):
            raise UserError(f"missing required config value '{key}' (set it with {key}=...)")
        value = node[f.name]
        if isinstance(value, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(value)):
            kwargs[f.name] = _build(OmegaConf.get_type(value), value, key + ".")
        elif isinstance(value, (DictConfig, ListConfig)):
            kwargs[f.name] = OmegaConf.to_container(value, resolve=True)
        else:
            kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise (e.under(path[:-1]) if path else e) from None


def load_config(cls: type[T], overrides: list[str] | None = None, config_file: str | None = None) -> T:
    """Build a ``cls`` instance from defaults, then ``config_file``, then ``overrides``.

    Every section is checked as it is built (its ``__post_init__``); any problem is a one-line
    :class:`UserError` naming the full key (``data.stream.buffer_bytes=10: must be >= 1 MiB``).
    """
    base = OmegaConf.structured(cls)
    OmegaConf.set_struct(base, True)
    _open_dicts(base)
    source = "config"
    try:
        if config_file:
            source = config_file
            base = OmegaConf.merge(base, _load_yaml(config_file))
        source = "override"
        dotlist = _parse_overrides(overrides or [])
        if dotlist:
            base = OmegaConf.merge(base, OmegaConf.from_dotlist(dotlist))
        return _build(cls, base)
    except UserError:
        raise
    except oc_errors.OmegaConfBaseException as e:
        raise _user_error(e, cls, source) from e
    except ValueError as e:  # a section that raises ValueError instead of ConfigError
        raise UserError(f"{source}: {str(e).splitlines()[0]}") from e


def parse_argv(cls: type, args: list[str], *, positional: tuple[str, ...] = ()) -> tuple[list[str], str | None]:
    """``(overrides, config_file)`` from a verb's arguments (the one command-line parser).

    ``--config FILE``; ``key=value``; ``--key VALUE`` or ``--key=value``; ``--flag`` for a bool key;
    bare words fill ``positional`` keys in order (the name ``--config`` there: the config file).
    """
    bool_keys = {k for k, tp, *_ in flat_keys(cls) if tp == "bool"}
    overrides: list[str] = []
    config_file = None
    slots = list(positional)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--config":
            if i + 1 >= len(args):
                raise UserError("--config needs a file name")
            config_file = args[i + 1]
            i += 2
            continue
        if arg.startswith("--"):
            key = arg[2:].replace("-", "_")
            if "=" in key:
                overrides.append(key)
            elif key in bool_keys:
                overrides.append(f"{key}=true")
            elif i + 1 < len(args):
                overrides.append(f"{key}={args[i + 1]}")
                i += 1
            else:
                raise UserError(f"option {arg} needs a value")
        elif "=" in arg:
            overrides.append(arg)
        elif slots and slots[0] == "--config":
            slots.pop(0)
            config_file = arg
        elif slots:
            overrides.append(f"{slots.pop(0)}={arg}")
        else:
            raise UserError(f"unexpected argument '{arg}': expected key=value")
        i += 1
    return overrides, config_file


def load_argv(cls: type[T], args: list[str], *, positional: tuple[str, ...] = ()) -> T:
    """:func:`parse_argv` then :func:`load_config`."""
    overrides, config_file = parse_argv(cls, args, positional=positional)
    return load_config(cls, overrides, config_file)


def to_dict(cfg: Any) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def to_yaml(cfg: Any, *, redact: bool = True) -> str:
    """The config as YAML; credentials in values are masked (pipeline.secrets) unless ``redact=False``."""
    text = OmegaConf.to_yaml(OmegaConf.structured(cfg))
    if redact:
        from pipeline.secrets import redact as _redact

        text = _redact(text)
    return text
