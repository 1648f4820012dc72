"""The HTTP side of ``vla serve``: :class:`ActServer` answers ``POST /act`` and ``GET /health`` for
one policy (wire formats: :mod:`pipeline.serve_wire`). Importable without the CLI's config stack, so
``pipeline.bench.infer`` can time a real server around a policy.

Every ``/act`` answer carries the model time in the ``X-Model-Latency-Ms`` header (also for
json_numpy answers, whose body is the bare action), so a client can tell server overhead from
model time.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pipeline.errors import UserError
from pipeline.serve_wire import ActRequest, BadRequest, parse_act_request

__all__ = ["MODEL_LATENCY_HEADER", "ActServer", "make_server"]

MODEL_LATENCY_HEADER = "X-Model-Latency-Ms"
_DRAIN_LIMIT = 256 * 2**20  # bodies up to this size are read and dropped before a 400, larger: close


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

    def act(self, request: ActRequest) -> tuple[Any, float]:
        """(JSON answer, model milliseconds) for a parsed request."""
        try:
            key = self.policy.resolve_unnorm_key(request.unnorm_key)
        except UserError as e:
            raise BadRequest(str(e)) from e
        with self.lock:
            start = time.perf_counter()
            action = self.policy.predict_action(request.image, request.instruction, unnorm_key=key)
            ms = (time.perf_counter() - start) * 1e3
        return request.answer(action, key, ms), ms

    def health(self) -> dict[str, Any]:
        p = self.policy
        return {"status": "ok", "checkpoint": getattr(p, "source", ""), "quantization": getattr(p, "quantization", ""),
                "device": str(getattr(p, "device", "")), "unnorm_keys": list(getattr(p, "unnorm_keys", []))}


class _Handler(BaseHTTPRequestHandler):
    server: ActServer
    timeout = 60  # seconds a silent client may hold a connection (HTTP/1.0: one request each)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return  # quiet: errors are reported in the JSON answers

    def _reply(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
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
            answer, ms = self.server.act(parse_act_request(body))
            self._reply(200, answer, {MODEL_LATENCY_HEADER: f"{ms:.3f}"})
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
