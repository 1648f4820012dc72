"""TFRecord framing without TensorFlow.

API (stable; other modules code against it)::

    CorruptRecordError(UserError)          # .file, .index; message names both
    masked_crc32c(data: bytes) -> int
    frame_record(data: bytes) -> bytes     # one framed record (length, crcs, data)
    read_records(source: str | BinaryIO, *, name: str | None = None, verify_crc: bool = True,
                 on_error: Callable[[CorruptRecordError], None] | None = None) -> Iterator[bytes]
    read_indexed_records(...same...) -> Iterator[tuple[int, bytes]]   # (record index, payload)
    TFRecordWriter(fileobj: BinaryIO)      # .write(data) -> int (bytes written), .close()
    write_records(fileobj: BinaryIO, records: Iterable[bytes]) -> int

The record format: ``uint64 length | uint32 masked_crc32c(length) | data | uint32
masked_crc32c(data)`` (little endian). The payload is usually a ``tf.train.Example``
(:mod:`pipeline.data.io.example`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

import google_crc32c

from pipeline import fs
from pipeline.errors import UserError

__all__ = [
    "CorruptRecordError",
    "masked_crc32c",
    "frame_record",
    "read_records",
    "read_indexed_records",
    "TFRecordWriter",
    "write_records",
]

_MASK_DELTA = 0xA282EAD8
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")

class CorruptRecordError(UserError):
    """A TFRecord is truncated or fails its CRC check."""

    def __init__(self, file: str, index: int, reason: str) -> None:
        super().__init__(f"{file}: record {index} is corrupt ({reason}); re-copy or regenerate the file")
        self.file = file
        self.index = index
        self.reason = reason


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


def _iter_framed(
    f: BinaryIO, name: str, verify_crc: bool, on_error: Callable[[CorruptRecordError], None] | None
) -> Iterator[tuple[int, bytes]]:
    index = 0
    while True:
        header = _read_exact(f, 12)
        if not header:
            return
        if len(header) < 12:
            error = CorruptRecordError(name, index, "truncated length header")
        elif verify_crc and _U32.unpack_from(header, 8)[0] != masked_crc32c(header[:8]):
            error = CorruptRecordError(name, index, "length crc mismatch")
        else:
            (length,) = _U64.unpack_from(header, 0)
            body = _read_exact(f, length + 4)
            if len(body) < length + 4:
                error = CorruptRecordError(name, index, f"truncated data: {len(body)} of {length + 4} bytes")
            elif verify_crc and _U32.unpack_from(body, length)[0] != masked_crc32c(body[:length]):
                # The framing is intact: the next record can still be read.
                if on_error is None:
                    raise CorruptRecordError(name, index, "data crc mismatch")
                on_error(CorruptRecordError(name, index, "data crc mismatch"))
                index += 1
                continue
            else:
                yield index, body[:length]
                index += 1
                continue
        if on_error is None:
            raise error
        on_error(error)  # framing lost: the rest of the file cannot be read
        return


def read_indexed_records(
    source: str | BinaryIO,
    *,
    name: str | None = None,
    verify_crc: bool = True,
    on_error: Callable[[CorruptRecordError], None] | None = None,
) -> Iterator[tuple[int, bytes]]:
    """Like ``read_records`` but yields ``(record_index, payload)`` (indices skip corrupt records)."""
    if isinstance(source, str):
        with fs.open_url(source, "rb", retrying=True) as f:  # gs://: reads resume at the offset
            yield from _iter_framed(f, name or source, verify_crc, on_error)
    else:
        label = name or getattr(source, "path", None) or getattr(source, "name", None) or "<stream>"
        yield from _iter_framed(source, str(label), verify_crc, on_error)


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
