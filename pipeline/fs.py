"""Storage helpers over fsspec: one API for local paths and ``gs://`` URLs.

Writes are atomic: a local file is written under a temporary name and renamed into place; a GCS
object only becomes visible once its upload is finalized. Readers therefore never see a partial
file under its final name.

Set ``STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT`` to talk to a local GCS emulator.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from typing import Any

import fsspec

from pipeline.errors import UserError

__all__ = [
    "get_fs",
    "join",
    "is_remote",
    "exists",
    "open_url",
    "read_bytes",
    "write_bytes",
    "read_text",
    "write_text",
    "read_json",
    "write_json",
    "listdir",
    "makedirs",
    "remove",
    "basename",
]

_FS_CACHE: dict[tuple[str, str], Any] = {}


def is_remote(url: str) -> bool:
    return "://" in str(url) and not str(url).startswith("file://")


def _protocol(url: str) -> str:
    return str(url).split("://", 1)[0] if "://" in str(url) else "file"


def get_fs(url: str):
    """Return ``(filesystem, path)`` for a local path or URL."""
    url = str(url)
    protocol = _protocol(url)
    if protocol in ("gs", "gcs"):
        emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
        key = (protocol, emulator)
        if key not in _FS_CACHE:
            kwargs: dict[str, Any] = {}
            if emulator:
                kwargs = {"endpoint_url": emulator, "token": "anon"}
            try:
                _FS_CACHE[key] = fsspec.filesystem("gcs", skip_instance_cache=True, **kwargs)
            except ImportError as e:  # pragma: no cover - gcsfs is a declared dependency
                raise UserError(f"{url}: gs:// needs the gcsfs package ({e})") from e
        return _FS_CACHE[key], url.split("://", 1)[1]
    if protocol == "file":
        path = url[len("file://"):] if url.startswith("file://") else url
        return fsspec.filesystem("file"), os.path.abspath(path)
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def _with_protocol(url: str, path: str) -> str:
    protocol = _protocol(url)
    return path if protocol == "file" else f"{protocol}://{path}"


def join(url: str, *parts: str) -> str:
    url = str(url)
    if is_remote(url):
        return posixpath.join(url.rstrip("/"), *parts)
    return os.path.join(url, *parts)


def basename(url: str) -> str:
    return posixpath.basename(str(url).rstrip("/"))


def exists(url: str) -> bool:
    fs, path = get_fs(url)
    return fs.exists(path)


def open_url(url: str, mode: str = "rb"):
    fs, path = get_fs(url)
    return fs.open(path, mode)


def read_bytes(url: str) -> bytes:
    fs, path = get_fs(url)
    return fs.cat_file(path)


def write_bytes(url: str, data: bytes) -> None:
    """Write ``data`` atomically (temp name + rename locally; single finalized upload on GCS)."""
    fs, path = get_fs(url)
    if is_remote(url):
        fs.pipe_file(path, data)
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def write_text(url: str, text: str) -> None:
    write_bytes(url, text.encode("utf-8"))


def read_json(url: str) -> Any:
    return json.loads(read_text(url))


def write_json(url: str, obj: Any, indent: int | None = 2) -> None:
    write_text(url, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def listdir(url: str) -> list[str]:
    """Full URLs of the direct children of ``url`` (sorted); [] when it does not exist."""
    fs, path = get_fs(url)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    out = [_with_protocol(url, e.rstrip("/")) for e in entries if e.rstrip("/") != path.rstrip("/")]
    return sorted(out)


def makedirs(url: str) -> None:
    fs, path = get_fs(url)
    if not is_remote(url):
        fs.makedirs(path, exist_ok=True)


def remove(url: str, recursive: bool = False) -> None:
    fs, path = get_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)
