"""Storage helpers over fsspec: one API for local paths and ``gs://`` URLs.

Writes are atomic: a local file is written under a temporary name and renamed into place; a GCS
object only becomes visible once its upload is finalized. Readers therefore never see a partial
file under its final name.

Set ``STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT`` to talk to a local GCS emulator.

RETRIES: every call here retries transient storage errors (connection refused/reset, timeouts,
HTTP 408/429/5xx, aiohttp client errors) with exponential backoff and jitter, logging one warning
per retry; missing files, permission errors and other 4xx answers are raised at once. When the
budget is spent, :class:`StorageUnavailable` (a one-line UserError naming the URL and the number of
attempts) is raised. Knobs (environment): ``VLA_STORAGE_RETRIES`` (attempts, default 10),
``VLA_STORAGE_RETRY_MAX_S`` (total seconds, default 60), ``VLA_STORAGE_RETRY_BASE_S`` (first delay,
default 0.5; doubled per attempt, capped at 15 s, times a random factor in [0.5, 1.5)) and
``VLA_GCSFS_RETRIES`` (attempts gcsfs makes inside one call, default 2; gcsfs' own default of 6
hides an outage for ~33 s per call without a log line).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import posixpath
import random
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

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
    "read_range",
    "copy_file",
    "copy_dir",
    "retry",
    "retry_policy",
    "is_transient",
    "RetryPolicy",
    "StorageUnavailable",
    "RetryingReader",
]

log = logging.getLogger("pipeline.fs")
T = TypeVar("T")

_FS_CACHE: dict[tuple[str, str], Any] = {}


# -- retry --------------------------------------------------------------------------------------------
class StorageUnavailable(UserError):
    """Transient storage errors outlasted the retry budget (one line: URL, attempts, last error)."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 10  # total tries, the first included
    max_s: float = 60.0  # give up when the next delay would pass this many seconds since the first try
    base_s: float = 0.5  # first delay; doubled per retry, capped at cap_s, times a jitter in [0.5, 1.5)
    cap_s: float = 15.0


def _env_num(name: str, default: float, cast: Callable[[str], Any]) -> Any:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise UserError(f"environment {name}={raw!r}: expected a number") from None
    if value < 0:
        raise UserError(f"environment {name}={raw!r}: must be >= 0")
    return value


def retry_policy() -> RetryPolicy:
    """The policy from the environment (read on every call: cheap, and tests can change it)."""
    return RetryPolicy(attempts=max(1, _env_num("VLA_STORAGE_RETRIES", 10, int)),
                       max_s=_env_num("VLA_STORAGE_RETRY_MAX_S", 60.0, float),
                       base_s=_env_num("VLA_STORAGE_RETRY_BASE_S", 0.5, float))


_TRANSIENT_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE,
                     errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EAGAIN}
_TRANSIENT_NAMES = {"TransportError", "ServerDisconnectedError", "ChunkedEncodingError", "ProxyError",
                    "ReadTimeout", "ConnectTimeout", "IncompleteRead", "RemoteDisconnected"}


def _http_code(e: BaseException) -> int | None:
    code = getattr(e, "code", None)
    if code is None:
        code = getattr(e, "status", None)
    try:
        return int(code) if code is not None else None
    except (TypeError, ValueError):
        return None


def is_transient(e: BaseException) -> bool:
    """True for errors worth retrying: connection refused/reset, timeouts, HTTP 408/429/5xx."""
    if isinstance(e, (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
                      NotADirectoryError, UserError)):
        return False
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None and isinstance(e, aiohttp.ClientResponseError):
        return e.status in (408, 429) or e.status >= 500
    name = type(e).__name__
    if name == "HttpError":  # gcsfs.retry.HttpError carries the HTTP status
        code = _http_code(e)
        return code is None or code in (408, 429) or code >= 500
    if isinstance(e, (ConnectionError, TimeoutError)) or name in _TRANSIENT_NAMES:
        return True
    if aiohttp is not None and isinstance(e, aiohttp.ClientError):
        return True
    requests = sys.modules.get("requests")
    if requests is not None and isinstance(e, (requests.ConnectionError, requests.Timeout)):
        return True
    if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
        return True
    cause = e.__cause__ or e.__context__
    return cause is not None and cause is not e and isinstance(cause, (ConnectionError, TimeoutError))


def _first_line(e: BaseException, limit: int = 200) -> str:
    text = (str(e).splitlines() or [""])[0]
    return f"{type(e).__name__}: {text[:limit]}" if text else type(e).__name__


def retry(fn: Callable[[], T], url: str, *, what: str = "access", policy: RetryPolicy | None = None,
          sleep: Callable[[float], None] = time.sleep) -> T:
    """``fn()`` with retries of transient storage errors (see the module doc); other errors pass."""
    policy = policy or retry_policy()
    start = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - classified below; non-transient errors are re-raised
            if not is_transient(e):
                raise
            elapsed = time.monotonic() - start
            delay = min(policy.cap_s, policy.base_s * 2 ** (attempt - 1)) * (0.5 + random.random())
            if attempt >= policy.attempts or elapsed + delay > policy.max_s:
                raise StorageUnavailable(
                    f"{url}: storage unavailable, {what} failed after {attempt} attempt{'s' if attempt > 1 else ''} over {elapsed:.1f}s "
                    f"({_first_line(e)}); wait longer with VLA_STORAGE_RETRY_MAX_S / VLA_STORAGE_RETRIES"
                ) from e
            log.warning("storage %s of %s failed (attempt %d of %d: %s); retrying in %.1fs", what, url,
                        attempt, policy.attempts, _first_line(e, 120), delay)
            sleep(delay)


def _drop_gcsfs_out_of_retries(record: logging.LogRecord) -> bool:
    """gcsfs logs a traceback per failed call; ``retry`` logs one warning line per retry instead."""
    return not str(record.msg).startswith("_request out of retries")


def _limit_gcsfs_retries(gcs: Any) -> None:
    """Make gcsfs try ``VLA_GCSFS_RETRIES`` times per request (its default 6 waits ~33 s silently)."""
    n = int(_env_num("VLA_GCSFS_RETRIES", 2, int))
    try:
        from gcsfs.retry import retry_request

        inner = type(gcs)._request.__wrapped__
        gcs._request = retry_request(retries=max(1, n))(inner).__get__(gcs)
        logging.getLogger("gcsfs").addFilter(_drop_gcsfs_out_of_retries)
    except Exception:  # noqa: BLE001 - another gcsfs layout: keep its own retries
        log.debug("gcsfs internals changed; keeping its default retries")


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
                gcs = fsspec.filesystem("gcs", skip_instance_cache=True, **kwargs)
            except ImportError as e:  # pragma: no cover - gcsfs is a declared dependency
                raise UserError(f"{url}: gs:// needs the gcsfs package ({e})") from e
            _limit_gcsfs_retries(gcs)
            _FS_CACHE[key] = gcs
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
    return retry(lambda: fs.exists(path), url, what="exists")


def open_url(url: str, mode: str = "rb", *, retrying: bool = False):
    """Open ``url``; ``retrying=True`` (remote, mode "rb"): a :class:`RetryingReader` whose reads
    survive transient errors (re-open, seek to the position, read again: no byte lost or repeated)."""
    if retrying and mode == "rb" and is_remote(url):
        return RetryingReader(url)
    fs, path = get_fs(url)
    return fs.open(path, mode)


class RetryingReader:
    """Read-only file over a remote URL; each read is retried (fs.retry) from the same byte offset."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = url
        self._pos = 0
        self._f: Any = None
        self._f = retry(self._open, url, what="open")

    def _open(self) -> Any:
        fs, path = get_fs(self.url)
        f = fs.open(path, "rb")
        if self._pos:
            f.seek(self._pos)
        return f

    def _drop(self) -> None:
        f, self._f = self._f, None
        if f is not None:
            try:
                f.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close
                pass

    def read(self, n: int = -1) -> bytes:
        def attempt() -> bytes:
            if self._f is None:
                self._f = self._open()
            try:
                return self._f.read(n)
            except Exception:
                self._drop()  # the next attempt re-opens at self._pos
                raise

        data = retry(attempt, self.url, what="read")
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 1:
            offset += self._pos
        elif whence == 2:
            offset += retry(lambda: get_fs(self.url)[0].size(get_fs(self.url)[1]), self.url, what="size")
        self._pos = int(offset)
        if self._f is not None:
            self._f.seek(self._pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        self._drop()

    def __enter__(self) -> RetryingReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_bytes(url: str) -> bytes:
    fs, path = get_fs(url)
    return retry(lambda: fs.cat_file(path), url, what="read")


def read_range(url: str, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of ``url`` (one ranged request on GCS; retried as a whole)."""
    fs, path = get_fs(url)
    return retry(lambda: fs.cat_file(path, start=start, end=end), url, what="read")


def write_bytes(url: str, data: bytes) -> None:
    """Write ``data`` atomically (temp name + rename locally; single finalized upload on GCS)."""
    fs, path = get_fs(url)
    if is_remote(url):
        retry(lambda: fs.pipe_file(path, data), url, what="write")
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
        entries = retry(lambda: fs.ls(path, detail=False), url, what="list")
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

    def rm() -> None:
        if fs.exists(path):  # checked on each try: a retry after a partial delete
            fs.rm(path, recursive=recursive)

    retry(rm, url, what="remove")


def copy_file(src: str, dst: str) -> None:
    """Copy one file between local paths and URLs (any direction), retried as a whole on transient
    errors; the destination appears only complete (local: temp name + rename; GCS: one finalized
    upload). Files stream from/to local disk, so a large file is never held in memory."""
    src_fs, src_path = get_fs(src)
    dst_fs, dst_path = get_fs(dst)
    if is_remote(dst):
        if is_remote(src):
            write_bytes(dst, read_bytes(src))
        else:
            retry(lambda: dst_fs.put_file(src_path, dst_path), dst, what="write")
        return
    os.makedirs(os.path.dirname(dst_path) or ".", exist_ok=True)
    tmp = f"{dst_path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        retry(lambda: src_fs.get_file(src_path, tmp), src, what="read")
        os.replace(tmp, dst_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def copy_dir(src: str, dst: str) -> int:
    """Copy every file under directory ``src`` into ``dst`` (local paths or URLs, any direction),
    keeping relative paths. Each file is retried on its own (:func:`copy_file`), so an outage costs
    the file in flight, not the files already copied. Returns the number of files;
    FileNotFoundError when ``src`` does not exist."""
    src_fs, root = get_fs(src)
    if not retry(lambda: src_fs.isdir(root), src, what="list"):
        raise FileNotFoundError(f"{src}: no such directory")
    paths = sorted(retry(lambda: src_fs.find(root), src, what="list"))
    sep = "/" if is_remote(src) else os.sep
    for path in paths:
        rel = path[len(root.rstrip(sep)) + 1:]
        copy_file(_with_protocol(src, path), join(dst, *rel.split(sep)))
    if not is_remote(dst):
        os.makedirs(get_fs(dst)[1], exist_ok=True)  # an empty source still gives the directory
    return len(paths)


def check_local_dir_writable(url: str, key: str) -> None:
    """UserError unless local ``url`` is (or can be created as) a writable directory; no-op for URLs.

    Nothing is created: the nearest existing ancestor must be a writable directory.
    """
    if is_remote(url):
        return
    path = os.path.abspath(get_fs(url)[1])
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise UserError(f"{key}={url}: cannot create a directory there ({path} is a file)")
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{key}={url}: {path} is not writable; pick another {key}")
