"""``vla serve``: a small HTTP endpoint around one loaded :class:`pipeline.inference.VLAPolicy`.

    vla serve checkpoint=gs://bucket/runs/demo/export port=8000 host=127.0.0.1 quantization=bf16

- ``POST /act`` with JSON ``{"image": <base64 PNG/JPEG>, "instruction": str, "unnorm_key": str|null}``
  -> 200 ``{"action": [7 floats], "unnorm_key": str|null, "latency_ms": float}``.
- ``GET /health`` -> 200 ``{"status": "ok", "checkpoint", "quantization", "device", "unnorm_keys"}``.
- Client mistakes (bad JSON, missing field, wrong type, bad base64, undecodable image, body over
  ``max_body_mb``, unknown ``unnorm_key``) -> 400 ``{"error": message}``; unknown path -> 404;
  a failure inside the model -> 500 ``{"error": message}`` and the server keeps serving.

Stdlib ``ThreadingHTTPServer``: connections are handled in threads, the model runs one request at a
time under a lock. SIGINT/SIGTERM stop accepting, let in-flight requests finish, then exit 0.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from pipeline.config import MISSING, helpfield
from pipeline.errors import ConfigError, UserError

__all__ = ["ActServer", "BadRequest", "ServeConfig", "decode_image", "make_server", "parse_act_request", "run_serve"]


@dataclass(kw_only=True)
class ServeConfig:
    checkpoint: str = helpfield(MISSING, "an export dir (vla export out=...), local or gs://")
    host: str = helpfield("127.0.0.1", "interface to bind (0.0.0.0 = every interface)")
    port: int = helpfield(8000, "TCP port (0 = pick a free one; the chosen port is printed)")
    quantization: str = helpfield("auto", "fp32 | bf16 | int8 | int4 | auto (bf16 on a GPU, fp32 on CPU); int8/int4 need a CUDA GPU")
    device: str = helpfield("auto", "auto | cpu | cuda | cuda:N")
    max_body_mb: float = helpfield(16.0, "largest accepted request body (MiB)")

    def __post_init__(self) -> None:
        if not 0 <= int(self.port) <= 65535:
            raise ConfigError("port", self.port, "expected 0..65535")
        if float(self.max_body_mb) <= 0:
            raise ConfigError("max_body_mb", self.max_body_mb, "must be > 0")


class BadRequest(Exception):
    """A client mistake: answered with 400 and the message."""


def decode_image(data: str) -> np.ndarray:
    """base64 text (optionally a ``data:image/...;base64,`` URL) of a PNG/JPEG -> uint8 [H, W, 3]."""
    from PIL import Image, UnidentifiedImageError

    if data.startswith("data:") and "," in data:
        data = data.split(",", 1)[1]
    data = "".join(data.split())  # line-wrapped base64 (e.g. the base64 tool's 76 columns) is fine
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(f"image: not valid base64 ({e})") from e
    if not raw:
        raise BadRequest("image: empty")
    try:
        with Image.open(io.BytesIO(raw)) as im:
            if im.format not in ("PNG", "JPEG"):
                raise BadRequest(f"image: {im.format} is not supported; send PNG or JPEG")
            return np.array(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise BadRequest(f"image: cannot decode as PNG or JPEG ({type(e).__name__})") from e


def parse_act_request(body: bytes) -> tuple[np.ndarray, str, str | None]:
    """Validate a /act body -> (image uint8 [H,W,3], instruction, unnorm_key or None)."""
    try:
        req = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"body is not valid JSON ({e})") from e
    if not isinstance(req, dict):
        raise BadRequest(f"body: expected a JSON object, got {type(req).__name__}")
    for key in ("image", "instruction"):
        if key not in req:
            raise BadRequest(f"missing field {key!r}; expected {{\"image\": base64, \"instruction\": str}}")
        if not isinstance(req[key], str):
            raise BadRequest(f"{key}: expected a string, got {type(req[key]).__name__}")
    if not req["instruction"].strip():
        raise BadRequest("instruction: empty")
    key = req.get("unnorm_key")
    if key is not None and not isinstance(key, str):
        raise BadRequest(f"unnorm_key: expected a string or null, got {type(key).__name__}")
    return decode_image(req["image"]), req["instruction"], key


class ActServer(ThreadingHTTPServer):
    """Serves one policy; ``lock`` serializes model calls across request threads."""

    daemon_threads = False  # server_close() waits for in-flight requests (graceful shutdown)
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], policy: Any, *, max_body_bytes: int) -> None:
        super().__init__(address, _Handler)
        self.policy = policy
        self.max_body_bytes = int(max_body_bytes)
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def act(self, image: np.ndarray, instruction: str, unnorm_key: str | None) -> dict[str, Any]:
        try:
            key = self.policy.resolve_unnorm_key(unnorm_key)
        except UserError as e:
            raise BadRequest(str(e)) from e
        with self.lock:
            start = time.perf_counter()
            action = self.policy.predict_action(image, instruction, unnorm_key=key)
            ms = (time.perf_counter() - start) * 1e3
        return {"action": [float(v) for v in action], "unnorm_key": key, "latency_ms": round(ms, 3)}

    def health(self) -> dict[str, Any]:
        p = self.policy
        return {"status": "ok", "checkpoint": getattr(p, "source", ""), "quantization": getattr(p, "quantization", ""),
                "device": str(getattr(p, "device", "")), "unnorm_keys": list(getattr(p, "unnorm_keys", []))}


_DRAIN_LIMIT = 256 * 2**20  # bodies up to this size are read and dropped before a 400, larger: close


class _Handler(BaseHTTPRequestHandler):
    server: ActServer
    timeout = 60  # seconds a silent client may hold a connection (HTTP/1.0: one request each)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return  # quiet: errors are reported in the JSON answers

    def _reply(self, code: int, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if self.path.split("?", 1)[0] == "/health":
            self._reply(200, self.server.health())
        else:
            self._reply(404, {"error": f"no such path {self.path}; use POST /act or GET /health"})

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            raise BadRequest("missing or invalid Content-Length header") from None
        if length > self.server.max_body_bytes:
            self.close_connection = True
            left = length if length <= _DRAIN_LIMIT else 0  # read it: the client sees the answer, not a reset
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 20))
                if not chunk:
                    break
                left -= len(chunk)
            raise BadRequest(f"body is {self.headers['Content-Length']} bytes; the limit is "
                             f"{self.server.max_body_bytes} (serve max_body_mb=)")
        return self.rfile.read(length)

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        try:
            body = self._read_body()
            if self.path.split("?", 1)[0] != "/act":
                self._reply(404, {"error": f"no such path {self.path}; use POST /act or GET /health"})
                return
            self._reply(200, self.server.act(*parse_act_request(body)))
        except BadRequest as e:
            self._reply(400, {"error": str(e)})
        except Exception as e:  # noqa: BLE001 - a model failure must not take the server down
            message = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            print(f"POST {self.path} -> 500 {message}", file=sys.stderr, flush=True)
            self._reply(500, {"error": message})


def make_server(policy: Any, host: str = "127.0.0.1", port: int = 0, *, max_body_mb: float = 16.0) -> ActServer:
    """An :class:`ActServer` bound to (host, port) (port 0: a free one, see ``server.url``)."""
    try:
        return ActServer((host, int(port)), policy, max_body_bytes=int(max_body_mb * 2**20))
    except OSError as e:
        raise UserError(f"host={host} port={port}: cannot listen ({e.strerror or e})") from e


def _install_signal_handlers(server: ActServer) -> dict[int, Any]:
    """SIGINT/SIGTERM -> stop serving (in-flight requests finish); returns the previous handlers."""
    def stop(signum: int, frame: Any) -> None:
        print(f"{signal.Signals(signum).name}: stopping", file=sys.stderr, flush=True)
        threading.Thread(target=server.shutdown, daemon=True).start()  # shutdown() waits for the loop

    return {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}


def run_serve(cfg: ServeConfig) -> int:
    from pipeline.inference import VLAPolicy

    policy = VLAPolicy.from_pretrained(cfg.checkpoint, quantization=cfg.quantization, device=cfg.device)
    server = make_server(policy, cfg.host, cfg.port, max_body_mb=cfg.max_body_mb)
    previous = _install_signal_handlers(server)
    print(f"serving {cfg.checkpoint} on {server.url} (quantization={policy.quantization}, "
          f"device={policy.device}, unnorm_keys={policy.unnorm_keys}); POST /act, GET /health", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()  # waits for in-flight requests
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("stopped", flush=True)
    return 0
