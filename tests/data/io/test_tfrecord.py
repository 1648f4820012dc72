"""TFRecord framing: CRCs, round trip, truncated and corrupt records named by file and index."""

from __future__ import annotations

import io

import pytest

from pipeline.data.io import tfrecord as tr
from pipeline.data.io.errors import CorruptRecordError
from pipeline.errors import UserError


def test_masked_crc_known_value():
    # crc32c("123456789") = 0xE3069283 (standard check value), masked per the TFRecord spec
    crc = 0xE3069283
    assert tr.masked_crc32c(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_framing_roundtrip_in_memory():
    records = [b"", b"a", bytes(range(256)) * 50]
    buf = io.BytesIO()
    assert tr.write_records(buf, records) == 3
    buf.seek(0)
    assert list(tr.read_records(buf)) == records


def _write_file(path, records):
    with open(path, "wb") as f:
        tr.write_records(f, records)


def test_truncated_file_names_file_and_record(tmp_path):
    path = str(tmp_path / "x.tfrecord")
    _write_file(path, [b"a" * 10, b"b" * 10, b"c" * 10])
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-5])
    with pytest.raises(CorruptRecordError) as ei:
        list(tr.read_records(path))
    assert isinstance(ei.value, UserError)
    assert ei.value.index == 2 and "x.tfrecord" in str(ei.value) and "record 2" in str(ei.value)


def test_flipped_byte_and_skip(tmp_path):
    path = str(tmp_path / "y.tfrecord")
    _write_file(path, [b"a" * 10, b"b" * 10, b"c" * 10])
    data = bytearray(open(path, "rb").read())
    data[26 + 12 + 3] ^= 0x01  # inside the payload of record 1 (each record = 12 + 10 + 4 bytes)
    open(path, "wb").write(bytes(data))
    with pytest.raises(CorruptRecordError, match="record 1 .*data crc"):
        list(tr.read_records(path))
    errors = []
    assert list(tr.read_records(path, on_error=errors.append)) == [b"a" * 10, b"c" * 10]
    assert [e.index for e in errors] == [1]
    # a broken length header loses the framing: stop after reporting it
    data[26 + 2] ^= 0x01
    open(path, "wb").write(bytes(data))
    errors.clear()
    assert list(tr.read_records(path, on_error=errors.append)) == [b"a" * 10]
    assert errors[0].index == 1 and "length" in str(errors[0])


def test_scan_records_byte_ranges_and_corrupt_records(tmp_path):
    path = str(tmp_path / "s.tfrecord")
    _write_file(path, [b"a" * 10, b"b" * 20, b"c" * 5])
    spans = list(tr.scan_records(path))
    assert [(s.index, s.offset, s.size, s.data) for s in spans] == [
        (0, 0, 26, b"a" * 10), (1, 26, 36, b"b" * 20), (2, 62, 21, b"c" * 5)]
    data = bytearray(open(path, "rb").read())
    data[26 + 12 + 3] ^= 0x01  # payload of record 1: its span stays (framing intact), without data
    open(path, "wb").write(bytes(data[:-4]))  # and record 2 is cut short: left out, the scan stops
    errors = []
    spans = list(tr.scan_records(path, on_error=errors.append))
    assert [(s.index, s.offset, s.size, s.data) for s in spans] == [(0, 0, 26, b"a" * 10), (1, 26, 36, None)]
    assert [(e.index, e.reason.split(":")[0]) for e in errors] == [(1, "data crc mismatch"), (2, "truncated data")]
    with pytest.raises(CorruptRecordError, match="record 1"):
        list(tr.scan_records(path))
