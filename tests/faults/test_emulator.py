"""The GCS emulator the tests use stores uploads byte-exactly (the stock one drops a final 0x0d)."""

from __future__ import annotations

import pytest

from pipeline import fs
from tests.support.gcs_emulator_main import parse_related


@pytest.mark.parametrize("data", [b"abc\r", b"\r", b"x\r\n", b"\n", b"", bytes(range(256)) * 20 + b"\r"])
def test_uploads_round_trip_byte_exact(gcs_bucket, data):
    url = fs.join(gcs_bucket, "obj")
    fs.write_bytes(url, data)
    assert fs.read_bytes(url) == data


def test_parse_related_keeps_a_trailing_carriage_return():
    body = b'--==0==\nContent-Type: application/json\n\n{"name": "a"}\n--==0==\nContent-Type: app/x\n\nab\r\n--==0==--'
    got = parse_related(body, 'multipart/related; boundary="==0=="')
    assert got == {"meta": {"name": "a"}, "content": b"ab\r", "content-type": "app/x"}
    crlf = body.replace(b"\n", b"\r\n")
    assert parse_related(crlf, 'multipart/related; boundary="==0=="')["content"] == b"ab\r"
    assert parse_related(b"not multipart", 'multipart/related; boundary="==0=="') is None
