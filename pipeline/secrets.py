"""Redaction of credentials in anything the pipeline prints, logs or saves.

``redact(text)`` masks, with ``[REDACTED]``:

- the values of environment variables whose names look secret (``*_TOKEN``, ``*_SECRET``,
  ``*PASSWORD``, ``*_KEY``, ``*_CREDENTIALS``, ...; values of 8+ characters that are not a path),
  and the secret fields of the JSON file ``GOOGLE_APPLICATION_CREDENTIALS`` points to;
- token-shaped strings: Google OAuth ``ya29.``, Google API keys, Hugging Face ``hf_``, GitHub
  ``ghp_``, AWS access key ids, PEM private keys, ``Bearer`` headers;
- the password of a URL's userinfo (``gs://user:PASSWORD@bucket`` -> ``gs://user:[REDACTED]@bucket``);
- ``"private_key": "..."``-style JSON fields and ``secret_key=...`` / ``token: ...`` pairs whose
  value looks like a token (16+ characters with a digit; a secret's *name* such as
  ``kuberay.gcs_secret: gcs-sa`` stays).

Text without any of these is returned unchanged (same object). ``install()`` (called by the CLI)
redacts every log record (a ``logging.Filter`` applied through the record factory, so handlers made
later are covered too) and uncaught-exception tracebacks.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from typing import Any

__all__ = ["MASK", "redact", "secret_values", "RedactingFilter", "install"]

MASK = "[REDACTED]"

# names: a secret-ish word as the whole name or its last "_" component(s)
_SECRET_NAME = re.compile(
    r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|API_?KEY|ACCESS_?KEY|SECRET_?KEY|PRIVATE_?KEY|KEY|"
    r"CREDENTIALS?|AUTH_TOKEN|SESSION_TOKEN|SAS|CONNECTION_STRING)$", re.IGNORECASE)
_NOT_SECRET_VALUES = {"true", "false", "none", "null", "disabled", "enabled", "default", "auto"}
_MIN_LEN = 8

_KEYWORDS = ("token", "secret", "password", "passwd", "apikey", "api_key", "api-key", "accesskey", "access_key",
             "access-key", "secretkey", "secret_key", "privatekey", "private_key", "private-key")
# (pattern, replacement, lowercase trigger substrings: the regex only runs when one is in the text)
_PATTERNS = [
    # PEM private keys, also JSON-escaped ("\n" as two characters) and cut-off ones
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.DOTALL), MASK,
     ("private key",)),
    (re.compile(r"\bya29\.[0-9A-Za-z_\-.]{8,}"), MASK, ("ya29.",)),      # Google OAuth access token
    (re.compile(r"\b1//[0-9A-Za-z_\-]{20,}"), MASK, ("1//",)),            # Google refresh token
    (re.compile(r"\bAIza[0-9A-Za-z_\-]{30,}"), MASK, ("aiza",)),          # Google API key
    (re.compile(r"\bhf_[A-Za-z0-9]{20,}"), MASK, ("hf_",)),                # Hugging Face token
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}"), MASK, ("ghp_", "gho_", "ghu_", "ghs_", "ghr_")),  # GitHub
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), MASK, ("akia", "asia")),  # AWS access key id
    (re.compile(r"(?i)\b(bearer|token)\s+(?=[^\s]*\d)([A-Za-z0-9._~+/=\-]{16,})"), r"\1 " + MASK,
     ("bearer", "token")),
    # URL userinfo: keep the scheme and user, mask the password
    (re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.\-]*://)([^/\s:@'\"]*):([^/\s@'\"]+)@"), r"\1\2:" + MASK + "@", ("@",)),
    # JSON fields of credential files
    (re.compile(r"(\"(?:private_key|private_key_id|client_secret|refresh_token|access_token|password|token|"
                r"secret|api_key)\"\s*:\s*\")([^\"\\]|\\.)+(\")"), r"\1" + MASK + r"\3", _KEYWORDS),
    # key=value / key: value where the key names a secret
    (re.compile(r"(?i)\b([\w.\-]*(?:token|secret|password|passwd|api_?key|access_?key|secret_?key|"
                r"private_?key)\s*[=:]\s*)(['\"]?)(?=[^\s'\"]*\d)([A-Za-z0-9._~+/=\-]{16,})"), r"\1\2" + MASK,
     _KEYWORDS),
]

_cache: dict[str, Any] = {"key": None, "regex": None}


def _looks_secret_value(value: str) -> bool:
    v = value.strip()
    if len(v) < _MIN_LEN or v.lower() in _NOT_SECRET_VALUES or v.isdigit():
        return False
    return not ((v.startswith("/") or v.startswith("~")) and os.path.exists(os.path.expanduser(v)))


def _credential_file_values(path: str) -> list[str]:
    try:
        if os.path.getsize(path) > 1_000_000:
            return []
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict):
        return []
    keys = ("private_key", "private_key_id", "client_secret", "refresh_token", "access_token")
    return [str(data[k]) for k in keys if isinstance(data.get(k), str) and len(str(data[k])) >= _MIN_LEN]


def secret_values(environ: Any = None) -> list[str]:
    """Values to mask: secret-named environment variables and credential-file fields (longest first)."""
    environ = os.environ if environ is None else environ
    values = []
    for name, value in environ.items():
        if not _SECRET_NAME.search(name):
            continue
        if name.upper().endswith("CREDENTIALS") and os.path.isfile(value):
            values += _credential_file_values(value)  # the path itself is not a secret
        elif _looks_secret_value(value):
            values.append(value.strip())
    return sorted(set(values), key=len, reverse=True)


def _env_changed() -> bool:
    """Cheap check (no full scan of the environment on every log line): same size, same values of the
    secret-named variables, and a full rescan at most every 2 s."""
    names = _cache.get("names")
    if names is None or len(os.environ) != _cache["size"] or time.monotonic() - _cache["at"] > 2.0:
        return True
    return any(os.environ.get(k) != v for k, v in names)


def _env_regex() -> re.Pattern | None:
    if not _env_changed():
        return _cache["regex"]
    key = tuple((k, v) for k, v in os.environ.items() if _SECRET_NAME.search(k))
    _cache.update(names=key, size=len(os.environ), at=time.monotonic())
    if key != _cache["key"]:
        values = secret_values()
        escaped = []
        for v in values:
            escaped.append(re.escape(v))
            if "\n" in v:  # also as written inside JSON / repr: "\n" as two characters
                escaped.append(re.escape(v.replace("\n", "\\n")))
        _cache["regex"] = re.compile("|".join(escaped)) if escaped else None
        _cache["key"] = key
    return _cache["regex"]


def redact(text: str) -> str:
    """``text`` with every credential masked (see the module doc); other text is left as it is."""
    if not text:
        return text
    out = text
    env = _env_regex()
    if env is not None:
        out = env.sub(MASK, out)
    low = out.lower()
    for pattern, repl, triggers in _PATTERNS:
        if any(t in low for t in triggers):
            out = pattern.sub(repl, out)
    return text if out == text else out


class RedactingFilter(logging.Filter):
    """Redacts a record's message (arguments merged in) and its traceback text in place."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is the logging module's to report
            return True
        clean = redact(message)
        if clean is not message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = RedactingFilter()


def install() -> None:
    """Redact every log record from now on (any logger, any handler) and uncaught tracebacks. Idempotent."""
    old_factory = logging.getLogRecordFactory()
    if not getattr(old_factory, "_vla_redacting", False):
        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = old_factory(*args, **kwargs)
            _FILTER.filter(record)
            return record

        factory._vla_redacting = True  # type: ignore[attr-defined]
        logging.setLogRecordFactory(factory)
    for handler in logging.getLogger().handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
    old_hook = sys.excepthook
    if not getattr(old_hook, "_vla_redacting", False):
        def hook(exc_type, exc, tb) -> None:  # noqa: ANN001
            import traceback

            sys.stderr.write(redact("".join(traceback.format_exception(exc_type, exc, tb))))

        hook._vla_redacting = True  # type: ignore[attr-defined]
        sys.excepthook = hook
