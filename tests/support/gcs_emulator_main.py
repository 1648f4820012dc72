"""``python tests/support/gcs_emulator_main.py ARGS``: gcp-storage-emulator with byte-exact uploads.

The emulator parses gcsfs's ``multipart/related`` uploads with the stdlib email parser, which
treats a ``\\r`` at the end of the file as part of the line break before the closing boundary and
drops it: any object whose last byte is 0x0d came back one byte short (about 1 upload in 256).
gcsfs delimits parts with ``\\n``; this parser strips exactly the delimiter the client used.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from gcp_storage_emulator import server
from gcp_storage_emulator.__main__ import main

_original_read_data = server._read_data


def _boundary(content_type: str) -> bytes | None:
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            return value.strip().strip('"').encode()
    return None


def parse_related(raw: bytes, content_type: str) -> dict[str, Any] | None:
    """``{"meta", "content", "content-type"}`` of a 2-part upload body; None when it is not one."""
    boundary = _boundary(content_type)
    if not boundary or not raw.startswith(b"--" + boundary):
        return None
    rest = raw[len(boundary) + 2:]
    nl = b"\r\n" if rest.startswith(b"\r\n") else b"\n"
    parts = rest.split(nl + b"--" + boundary)
    if len(parts) != 3 or not parts[2].startswith(b"--"):
        return None
    out: list[tuple[dict[str, str], bytes]] = []
    for part in parts[:2]:
        head, sep, body = part[len(nl):].partition(nl + nl)
        if not sep:
            return None
        headers = {}
        for line in head.decode("latin-1").split(nl.decode()):
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        if "content-transfer-encoding" in headers:
            return None  # encoded parts: the emulator's own parser handles them
        out.append((headers, body))
    return {"meta": json.loads(out[0][1]), "content": out[1][1],
            "content-type": out[1][0].get("content-type", "application/octet-stream").split(";")[0].strip()}


def _read_data(request_handler, query):
    content_type = request_handler.headers.get("Content-Type") or ""
    if not content_type.startswith("multipart/related"):
        return _original_read_data(request_handler, query)
    raw = server._decode_raw_data(server._read_raw_data(request_handler), request_handler)
    if not raw:
        return None
    parsed = parse_related(raw, content_type)
    if parsed is None:
        from email.parser import BytesParser

        msg = BytesParser().parsebytes(f"Content-Type:{content_type}\r\n".encode() + raw)
        payload = msg.get_payload()
        parsed = {"meta": json.loads(payload[0].get_payload()), "content": payload[1].get_payload(decode=True),
                  "content-type": payload[1].get_content_type()}
    return parsed


server._read_data = _read_data

if __name__ == "__main__":
    sys.exit(main())
