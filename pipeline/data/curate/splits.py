"""Which source episodes train, validate or only count in statistics: OpenVLA's split rule.

OpenVLA (``make_dataset_from_rlds``) reads, per dataset:

- statistics: split ``"all"`` (every split of the builder, test and val included);
- training: ``"train"`` when the builder has a split named ``"val"``, else ``"train[:95%]"``;
- validation: ``"val"``, else ``"train[95%:]"``.

``train[:95%]`` is tfds percent slicing with its default ``"closest"`` rounding: the boundary is
``int(round(95 * n / 100.0))`` episodes in the split's own order (shard files in order, records in
file order), with Python's round-half-to-even: 10 episodes -> 10 train and an empty validation
(9.5 rounds to 10), 30 -> 28 + 2 (28.5 -> 28), 50 -> 48 + 2 (47.5 -> 48). Splits other than the
training split and ``val`` (``test``, ...) are never trained on; they only count in statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TRAIN", "VAL", "STATS_ONLY", "SplitRole", "train_boundary", "has_val_split", "split_roles"]

TRAIN, VAL, STATS_ONLY = "train", "val", "stats"


def train_boundary(num_episodes: int, percent: int = 95) -> int:
    """Episodes in ``train[:95%]`` of a split of ``num_episodes`` (tfds "closest" rounding)."""
    return int(round(percent * int(num_episodes) / 100.0))


def has_val_split(splits, train_split: str = "train") -> bool:
    """True when the builder's ``splits`` (names) has a ``val`` split to validate on: training then
    takes all of ``train_split``, else its first 95%."""
    return VAL in splits and train_split != VAL


@dataclass(frozen=True)
class SplitRole:
    """What one source shard's episodes become. ``role`` is TRAIN, VAL or STATS_ONLY, or None when
    the shard straddles the 95% boundary: episode ``offset + record`` of the split trains below
    ``boundary`` and validates from it on."""

    split: str
    role: str | None
    offset: int = 0  # index of the shard's first record within its split
    boundary: int = 0

    def of(self, record: int) -> str:
        if self.role is not None:
            return self.role
        return TRAIN if self.offset + int(record) < self.boundary else VAL


def split_roles(shard_counts: dict[str, list[int]], train_split: str = "train") -> dict[str, list[SplitRole]]:
    """``{split: [SplitRole per shard]}`` for a builder's ``{split: [episodes per shard]}``."""
    has_val = has_val_split(shard_counts, train_split)
    boundary = train_boundary(sum(shard_counts.get(train_split, [])))
    out: dict[str, list[SplitRole]] = {}
    for split, counts in shard_counts.items():
        offsets = [sum(counts[:i]) for i in range(len(counts))]
        if split == train_split:
            role = TRAIN if has_val else None
        elif split == VAL and has_val:
            role = VAL
        else:
            role = STATS_ONLY
        out[split] = [SplitRole(split, _settle(role, off, n, boundary), off, boundary)
                      for off, n in zip(offsets, counts)]
    return out


def _settle(role: str | None, offset: int, count: int, boundary: int) -> str | None:
    """A boundary shard lying wholly on one side gets that side's fixed role."""
    if role is not None:
        return role
    if offset + count <= boundary:
        return TRAIN
    if offset >= boundary:
        return VAL
    return None
