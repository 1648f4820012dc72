"""Data errors: bytes that cannot be what they claim to be.

Readers and decoders raise these (and only these) for bad data — a record failing its CRC or cut
short, a malformed ``tf.train.Example``, a value that does not fit its declared shape, an image that
does not decode — so a caller such as the training stream can count and skip corrupt data while any
other exception (a bug) still fails loudly. They are :class:`~pipeline.errors.UserError`s: one line
naming the file and the record.
"""

from __future__ import annotations

from pipeline.errors import UserError

__all__ = ["CorruptDataError", "CorruptRecordError", "MalformedExampleError", "CorruptImageError"]


class CorruptDataError(UserError):
    """Bytes of a data file that cannot be decoded as what they claim to be."""


class CorruptRecordError(CorruptDataError):
    """A TFRecord record is truncated, fails its CRC check, or does not hold what its file declares."""

    def __init__(self, file: str, index: int, reason: str) -> None:
        super().__init__(f"{file}: record {index} is corrupt ({reason}); re-copy or regenerate the file")
        self.file = file
        self.index = index
        self.reason = reason


class MalformedExampleError(CorruptDataError, ValueError):
    """Bytes that are not a serialized ``tf.train.Example`` (also a ValueError, as protobuf parsers raise)."""


class CorruptImageError(CorruptDataError):
    """Encoded image bytes that do not decode."""
