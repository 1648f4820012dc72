"""TFRecord framing without TensorFlow.

API (stable; other modules code against it)::

    masked_crc32c(data: bytes) -> int
    frame_record(data: bytes) -> bytes     # one framed record (length, crcs, data)
    scan_records(source, *, name=None, on_error=None) -> Iterator[RecordSpan]
        # (index, offset, size, data | None) of every record whose framing is intact (for byte-range indexes)
    read_records(source: str | BinaryIO, *, name: str | None = None, verify_crc: bool = True,
                 on_error: Callable[[CorruptRecordError], None] | None = None) -> Iterator[bytes]
    read_indexed_records(...same...) -> Iterator[tuple[int, bytes]]   # (record index, payload)
    TFRecordWriter(fileobj: BinaryIO)      # .write(data) -> int (bytes written), .close()
    write_records(fileobj: BinaryIO, records: Iterable[bytes]) -> int

The record format: ``uint64 length | uint32 masked_crc32c(length) | data | uint32
masked_crc32c(data)`` (little endian). The payload is usually a ``tf.train.Example``
(:mod:`pipeline.data.io.example`). A corrupt record is a
:class:`~pipeline.data.io.errors.CorruptRecordError` (``.file``, ``.index``; the message names both).
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO, NamedTuple

import google_crc32c

from pipeline import fs
from pipeline.data.io.errors import CorruptRecordError

__all__ = [
    "RecordSpan",
    "masked_crc32c",
    "frame_record",
    "scan_records",
    "read_records",
    "read_indexed_records",
    "TFRecordWriter",
    "write_records",
]

_MASK_DELTA = 0xA282EAD8
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


def masked_crc32c(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    header = _U64.pack(len(data))
    return b"".join((header, _U32.pack(masked_crc32c(header)), data, _U32.pack(masked_crc32c(data))))


def _read_exact(f: BinaryIO, n: int) -> bytes:
    buf = f.read(n)
    if len(buf) == n or not buf:
        return buf
    parts = [buf]
    got = len(buf)
    while got < n:
        more = f.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class RecordSpan(NamedTuple):
    """One framed record: its index, its byte range in the file, its payload (None if its CRC fails)."""

    index: int
    offset: int  # of the 12-byte length header
    size: int  # framed bytes: 12 + len(payload) + 4
    data: bytes | None


def _frames(f: BinaryIO, name: str, verify_crc: bool) -> Iterator[tuple[RecordSpan | None, CorruptRecordError | None]]:
    """The one framing parser: ``(span, None)`` per record in file order; ``(span with data None, error)``
    for a record whose data CRC fails (the framing is intact: parsing goes on); ``(None, error)`` for a
    broken length header or a record cut short, and then nothing more (the framing is lost)."""
    index = offset = 0
    while True:
        header = _read_exact(f, 12)
        if not header:
            return
        if len(header) < 12:
            yield None, CorruptRecordError(name, index, "truncated length header")
            return
        if verify_crc and _U32.unpack_from(header, 8)[0] != masked_crc32c(header[:8]):
            yield None, CorruptRecordError(name, index, "length crc mismatch")
            return
        (length,) = _U64.unpack_from(header, 0)
        body = _read_exact(f, length + 4)
        if len(body) < length + 4:
            yield None, CorruptRecordError(name, index, f"truncated data: {len(body)} of {length + 4} bytes")
            return
        span = RecordSpan(index, offset, 16 + length, body[:length])
        if verify_crc and _U32.unpack_from(body, length)[0] != masked_crc32c(span.data):
            yield span._replace(data=None), CorruptRecordError(name, index, "data crc mismatch")
        else:
            yield span, None
        index += 1
        offset += span.size


@contextlib.contextmanager
def _opened(source: str | BinaryIO, name: str | None) -> Iterator[tuple[BinaryIO, str]]:
    if isinstance(source, str):
        with fs.open_url(source, "rb", retrying=True) as f:  # gs://: reads resume at the offset
            yield f, name or source
    else:
        yield source, str(name or getattr(source, "path", None) or getattr(source, "name", None) or "<stream>")


def scan_records(
    source: str | BinaryIO,
    *,
    name: str | None = None,
    on_error: Callable[[CorruptRecordError], None] | None = None,
) -> Iterator[RecordSpan]:
    """Yield a :class:`RecordSpan` for every record whose framing is intact (``data`` None when its CRC
    fails), e.g. to index a file's records by byte range. Each corrupt record goes to ``on_error``
    (raised without one); after a broken length header or a truncated record the scan stops."""
    with _opened(source, name) as (f, label):
        for span, error in _frames(f, label, True):
            if error is not None:
                if on_error is None:
                    raise error
                on_error(error)
            if span is not None:
                yield span


def read_indexed_records(
    source: str | BinaryIO,
    *,
    name: str | None = None,
    verify_crc: bool = True,
    on_error: Callable[[CorruptRecordError], None] | None = None,
) -> Iterator[tuple[int, bytes]]:
    """Like ``read_records`` but yields ``(record_index, payload)`` (indices skip corrupt records)."""
    with _opened(source, name) as (f, label):
        for span, error in _frames(f, label, verify_crc):
            if error is None:
                yield span.index, span.data
            elif on_error is None:
                raise error
            else:
                on_error(error)  # after a framing loss _frames ends: the rest cannot be read


def read_records(
    source: str | BinaryIO,
    *,
    name: str | None = None,
    verify_crc: bool = True,
    on_error: Callable[[CorruptRecordError], None] | None = None,
) -> Iterator[bytes]:
    """Yield the payload of each record of a TFRecord file (a URL or an open binary file object).

    A truncated or CRC-failing record raises ``CorruptRecordError`` (naming the file and record
    index), or, when ``on_error`` is given, is passed to it and skipped: after a data-CRC mismatch
    reading goes on with the next record; after a broken length header or truncation it stops.
    """
    for _, data in read_indexed_records(source, name=name, verify_crc=verify_crc, on_error=on_error):
        yield data


class TFRecordWriter:
    """Append framed records to an open binary file object (the caller owns the file)."""

    def __init__(self, fileobj: BinaryIO) -> None:
        self._f = fileobj
        self.num_records = 0

    def write(self, data: bytes) -> int:
        framed = frame_record(data)
        self._f.write(framed)
        self.num_records += 1
        return len(framed)

    def close(self) -> None:
        self._f.flush()


def write_records(fileobj: BinaryIO, records: Iterable[bytes]) -> int:
    """Write all ``records``; return the number written."""
    w = TFRecordWriter(fileobj)
    for r in records:
        w.write(r)
    return w.num_records
