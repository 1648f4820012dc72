"""vla serve: /act answers equal predict_action (base64 PNG/JPEG, and OpenVLA's json_numpy client
answered in kind), every malformed request gets a 400 with a message, 404 / 500 paths, concurrent
clients, and a real `vla serve` process stopped by SIGTERM."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import signal
import threading

import numpy as np
import pytest
import torch
from vla_export_helpers import INSTRUCTIONS, export_tiny, image

from pipeline.inference import VLAPolicy
from pipeline.serve import make_server


def _encode(arr: np.ndarray, fmt: str = "PNG") -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def export_url(tmp_path_factory) -> str:
    return export_tiny(str(tmp_path_factory.mktemp("serve") / "export"))


@pytest.fixture(scope="module")
def server(export_url):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    policy = VLAPolicy.from_pretrained(export_url, quantization="fp32", device="cpu")
    srv = make_server(policy, "127.0.0.1", 0, max_body_mb=0.25)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)
    torch.set_num_threads(threads)


def _json_numpy(array: np.ndarray) -> dict:
    """An ndarray as the json_numpy package encodes it (what OpenVLA's deploy client posts after
    `json_numpy.patch()`): base64 of the C-order bytes, numpy's dtype descr, the shape."""
    array = np.ascontiguousarray(array)
    return {"__numpy__": base64.b64encode(array.tobytes()).decode("ascii"), "dtype": array.dtype.str,
            "shape": list(array.shape)}


def _json_numpy_hook(obj: dict):
    """json_numpy's decoding (its object_hook), as that client's `response.json()` applies it."""
    if "__numpy__" in obj:
        return np.frombuffer(base64.b64decode(obj["__numpy__"]), np.dtype(obj["dtype"])).reshape(obj["shape"])
    return obj


def _request(srv, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
             *, with_headers: bool = False):
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        out = resp.status, json.loads(resp.read(), object_hook=_json_numpy_hook)
        return (*out, dict(resp.getheaders())) if with_headers else out
    finally:
        conn.close()


def _act(srv, payload) -> tuple[int, dict]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return _request(srv, "POST", "/act", body, {"Content-Type": "application/json"})


def test_health(server):
    code, out = _request(server, "GET", "/health")
    assert code == 200
    assert out["status"] == "ok" and out["quantization"] == "fp32" and out["unnorm_keys"] == ["demo_ds"]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_act_equals_predict_action(server, fmt):
    from pipeline.serve import decode_image

    img = image(5)
    b64 = _encode(img, fmt)
    code, out = _act(server, {"image": b64, "instruction": INSTRUCTIONS[0]})
    assert code == 200, out
    assert len(out["action"]) == 7 and all(isinstance(v, float) for v in out["action"])
    assert out["unnorm_key"] == "demo_ds" and out["latency_ms"] > 0
    expected = server.policy.predict_action(decode_image(b64), INSTRUCTIONS[0], unnorm_key="demo_ds")
    np.testing.assert_array_equal(np.asarray(out["action"], np.float32), expected)
    if fmt == "PNG":  # lossless: the same pixels as the array
        np.testing.assert_array_equal(expected, server.policy.predict_action(img, INSTRUCTIONS[0]))
    wrapped = "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))  # `base64` tool output
    code, again = _act(server, {"image": "data:image/png;base64," + wrapped, "instruction": INSTRUCTIONS[0],
                                "unnorm_key": "demo_ds"})
    assert code == 200 and again["action"] == out["action"]


def test_openvla_json_numpy_client(server):
    """A body built as OpenVLA's deploy client builds it (requests + json_numpy.patch()), answered
    with a json_numpy action equal to predict_action; also its `encoded` variant and __ndarray__."""
    img = image(6, (60, 80))
    expected = server.policy.predict_action(img, INSTRUCTIONS[2], unnorm_key="demo_ds")
    body = json.dumps({"image": _json_numpy(img), "instruction": INSTRUCTIONS[2], "unnorm_key": "demo_ds"})
    code, action, headers = _request(server, "POST", "/act", body.encode(), {"Content-Type": "application/json"},
                                     with_headers=True)
    assert code == 200
    assert isinstance(action, np.ndarray) and action.dtype == np.float32 and action.shape == (7,)
    np.testing.assert_array_equal(action, expected)
    assert float(headers["X-Model-Latency-Ms"]) > 0
    code, text = _act(server, {"encoded": body})  # OpenVLA's double-encoded request: a JSON string back
    assert code == 200 and isinstance(text, str)
    np.testing.assert_array_equal(json.loads(text, object_hook=_json_numpy_hook), expected)
    named = {"__ndarray__": _json_numpy(img)["__numpy__"], "dtype": "uint8", "shape": [60, 80, 3]}
    code, again = _act(server, {"image": named, "instruction": INSTRUCTIONS[2]})
    assert code == 200
    np.testing.assert_array_equal(again, expected)


GOOD = _encode(image(0, (16, 16)))
ARRAY = _json_numpy(image(0, (4, 5)))
BAD_REQUESTS = {
    "bad_json": (b'{"image": ', "not valid JSON"),
    "not_object": (b"[1, 2]", "expected a JSON object, got list"),
    "missing_image": ({"instruction": "go"}, "missing field 'image'"),
    "missing_instruction": ({"image": GOOD}, "missing field 'instruction'"),
    "image_type": ({"image": 123, "instruction": "go"}, "image: expected a base64 string or a json_numpy array, got int"),
    "array_dtype": ({"image": {**ARRAY, "dtype": "<f4"}, "instruction": "go"}, "image: dtype '<f4', expected uint8"),
    "array_shape": ({"image": {**ARRAY, "shape": [4, 5]}, "instruction": "go"}, "image: shape [4, 5], expected [H, W, 3]"),
    "array_bytes": ({"image": {**ARRAY, "shape": [5, 5, 3]}, "instruction": "go"}, "60 bytes of data for shape [5, 5, 3]"),
    "array_base64": ({"image": {**ARRAY, "__numpy__": "%%"}, "instruction": "go"}, "image: not valid base64"),
    "array_keys": ({"image": {"__numpy__": ARRAY["__numpy__"]}, "instruction": "go"}, "needs '__numpy__'"),
    "encoded_type": ({"encoded": 3}, "encoded: expected a JSON string"),
    "encoded_json": ({"encoded": "{nope"}, "encoded is not valid JSON"),
    "instruction_type": ({"image": GOOD, "instruction": ["go"]}, "instruction: expected a string, got list"),
    "empty_instruction": ({"image": GOOD, "instruction": "  "}, "instruction: empty"),
    "unnorm_key_type": ({"image": GOOD, "instruction": "go", "unnorm_key": 3}, "unnorm_key: expected a string"),
    "unknown_unnorm_key": ({"image": GOOD, "instruction": "go", "unnorm_key": "bridge_orig"},
                           "unnorm_key='bridge_orig': not in dataset_statistics.json; expected one of ['demo_ds']"),
    "bad_base64": ({"image": "not base64!", "instruction": "go"}, "image: not valid base64"),
    "not_an_image": ({"image": base64.b64encode(b"hello world").decode(), "instruction": "go"},
                     "image: cannot decode as PNG or JPEG"),
    "gif": ({"image": _encode(image(0, (8, 8)), "GIF"), "instruction": "go"}, "GIF is not supported"),
    "too_large": ({"image": "A" * 400_000, "instruction": "go"}, "the limit is 262144"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request(server, case):
    payload, message = BAD_REQUESTS[case]
    code, out = _act(server, payload)
    assert code == 400
    assert message in out["error"]


def test_missing_content_length(server):
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    conn.putrequest("POST", "/act")
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 400 and "Content-Length" in json.loads(resp.read())["error"]
    conn.close()


def test_not_found(server):
    assert _request(server, "GET", "/nope")[0] == 404
    code, out = _request(server, "POST", "/predict", b"{}")
    assert code == 404 and "POST /act" in out["error"]


def test_model_error_is_500_and_server_survives(server, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(server.policy, "predict_action", boom)
    code, out = _act(server, {"image": GOOD, "instruction": "go"})
    assert code == 500 and out["error"] == "RuntimeError: CUDA out of memory"
    monkeypatch.undo()
    assert _act(server, {"image": GOOD, "instruction": "go"})[0] == 200


def test_concurrent_clients(server):
    payload = {"image": _encode(image(7)), "instruction": INSTRUCTIONS[1]}
    results: list = []

    def client() -> None:
        results.append(_act(server, payload))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r[0] for r in results] == [200] * 4
    assert all(r[1]["action"] == results[0][1]["action"] for r in results)


def test_cli_gpu_mode_on_cpu_is_one_line(export_url, capsys):
    from pipeline.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["serve", f"checkpoint={export_url}", "quantization=int4", "port=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: quantization=int4 needs a CUDA GPU (bitsandbytes); this machine has none - use bf16 or fp32"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_vla_serve_stops_gracefully_on_signal(export_url, monkeypatch, capsys, sig):
    """`vla serve` (in this process, main thread) serves /health, then a signal stops it: exit 0."""
    from pipeline import serve
    from pipeline.cli import main

    servers: list = []
    real = serve.make_server
    monkeypatch.setattr(serve, "make_server", lambda *a, **k: servers.append(real(*a, **k)) or servers[-1])
    seen: dict = {}

    def client() -> None:
        for _ in range(600):
            if servers:
                break
            threading.Event().wait(0.05)
        seen["health"] = _request(servers[0], "GET", "/health")[0]
        os.kill(os.getpid(), sig)

    before = signal.getsignal(sig)
    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    assert main(["serve", f"checkpoint={export_url}", "port=0", "device=cpu"]) == 0
    thread.join(10)
    out, err = capsys.readouterr()
    assert seen["health"] == 200
    assert "serving" in out and out.strip().endswith("stopped") and f"{sig.name}: stopping" in err
    assert signal.getsignal(sig) is before  # handlers restored
