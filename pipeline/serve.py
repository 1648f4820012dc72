"""``vla serve``: a small HTTP endpoint around one loaded :class:`pipeline.inference.VLAPolicy`.

    vla serve checkpoint=gs://bucket/runs/demo/export port=8000 host=127.0.0.1 quantization=bf16

- ``POST /act`` with JSON ``{"image": <base64 PNG/JPEG>, "instruction": str, "unnorm_key": str|null}``
  -> 200 ``{"action": [7 floats], "unnorm_key": str|null, "latency_ms": float}``; OpenVLA's deploy
  client (``json_numpy``-encoded uint8 image) is answered with a json_numpy action (see
  :mod:`pipeline.serve_wire`). Every answer carries the model time in ``X-Model-Latency-Ms``.
- ``GET /health`` -> 200 ``{"status": "ok", "checkpoint", "quantization", "device", "unnorm_keys"}``.
- Client mistakes (bad JSON, missing field, wrong type, bad base64, undecodable image, body over
  ``max_body_mb``, unknown ``unnorm_key``) -> 400 ``{"error": message}``; unknown path -> 404;
  a failure inside the model -> 500 ``{"error": message}`` and the server keeps serving.

Stdlib ``ThreadingHTTPServer`` (:mod:`pipeline.serve_http`): connections are handled in threads, the
model runs one request at a time under a lock. SIGINT/SIGTERM stop accepting, let in-flight requests
finish, then exit 0.
"""

from __future__ import annotations

import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any

from pipeline.config import MISSING, helpfield
from pipeline.errors import ConfigError
from pipeline.serve_http import ActServer, make_server
from pipeline.serve_wire import BadRequest, decode_image, parse_act_request

__all__ = ["ActServer", "BadRequest", "ServeConfig", "decode_image", "make_server", "parse_act_request", "run_serve"]


_CROP = {"auto": None, "true": True, "false": False}


@dataclass(kw_only=True)
class ServeConfig:
    checkpoint: str = helpfield(MISSING, "an export dir (vla export out=...), local or gs://")
    host: str = helpfield("127.0.0.1", "interface to bind (0.0.0.0 = every interface)")
    port: int = helpfield(8000, "TCP port (0 = pick a free one; the chosen port is printed)")
    quantization: str = helpfield("auto", "fp32 | bf16 | int8 | int4 | auto (bf16 on a GPU, fp32 on CPU); int8/int4 need a CUDA GPU")
    device: str = helpfield("auto", "auto | cpu | cuda | cuda:N")
    max_body_mb: float = helpfield(16.0, "largest accepted request body (MiB)")
    center_crop: str = helpfield("auto", "auto (centre crop when the model was trained with crops) | true | false")

    def __post_init__(self) -> None:
        if not 0 <= int(self.port) <= 65535:
            raise ConfigError("port", self.port, "expected 0..65535")
        if str(self.center_crop).lower() not in _CROP:
            raise ConfigError("center_crop", self.center_crop, "expected auto, true or false")
        if float(self.max_body_mb) <= 0:
            raise ConfigError("max_body_mb", self.max_body_mb, "must be > 0")


def _install_signal_handlers(server: ActServer) -> dict[int, Any]:
    """SIGINT/SIGTERM -> stop serving (in-flight requests finish); returns the previous handlers."""
    def stop(signum: int, frame: Any) -> None:
        print(f"{signal.Signals(signum).name}: stopping", file=sys.stderr, flush=True)
        threading.Thread(target=server.shutdown, daemon=True).start()  # shutdown() waits for the loop

    return {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}


def run_serve(cfg: ServeConfig) -> int:
    from pipeline.inference import VLAPolicy

    policy = VLAPolicy.from_pretrained(cfg.checkpoint, quantization=cfg.quantization, device=cfg.device,
                                       center_crop=_CROP[str(cfg.center_crop).lower()])
    server = make_server(policy, cfg.host, cfg.port, max_body_mb=cfg.max_body_mb)
    previous = _install_signal_handlers(server)
    print(f"serving {cfg.checkpoint} on {server.url} (quantization={policy.quantization}, "
          f"device={policy.device}, image {policy.preprocess.size}px center_crop={policy.preprocess.center_crop}, "
          f"unnorm_keys={policy.unnorm_keys}); POST /act, GET /health", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()  # waits for in-flight requests
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("stopped", flush=True)
    return 0
