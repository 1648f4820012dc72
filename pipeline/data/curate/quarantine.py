"""Quarantine report: what curation dropped, by reason, with example episodes (``quarantine.json``).

A :class:`Quarantine` is filled by one curation task and merged (in source-shard order) into the
dataset's report. JSON layout::

    {"dataset": "bridge_orig", "episodes_read": 40, "episodes_kept": 37, "frames_kept": 611,
     "episodes_dropped": 3, "frames_dropped": 55,
     "reasons": {"empty_instruction": {"episodes": 2, "frames": 31,
                                       "examples": [{"episode_id": ..., "source_file": ..., "source_index": 3}]}}}

``frames`` of a reason counts the steps lost with the dropped episodes; frame filters (DROID idle)
drop frames of kept episodes and are counted under their own reason with ``episodes: 0``.
``episodes_held_out`` / ``frames_held_out``: episodes of splits that only count in the statistics
(``test``), read and never curated. ``episodes_read`` = kept + dropped + held out (+ records the
reader could not decode, counted as dropped).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Quarantine", "format_quarantine"]


@dataclass
class Quarantine:
    dataset: str
    max_examples: int = 5
    episodes_read: int = 0
    episodes_kept: int = 0
    frames_kept: int = 0
    reasons: dict[str, dict] = field(default_factory=dict)
    episodes_held_out: int = 0
    frames_held_out: int = 0

    def _entry(self, reason: str) -> dict:
        return self.reasons.setdefault(reason, {"episodes": 0, "frames": 0, "examples": []})

    def drop(self, reason: str, *, frames: int, episode_id: str, source_file: str, source_index: int,
             whole_episode: bool = True) -> None:
        entry = self._entry(reason)
        entry["episodes"] += int(whole_episode)
        entry["frames"] += int(frames)
        if len(entry["examples"]) < self.max_examples:
            entry["examples"].append({"episode_id": str(episode_id), "source_file": str(source_file),
                                      "source_index": int(source_index)})

    def keep(self, frames: int) -> None:
        self.episodes_kept += 1
        self.frames_kept += int(frames)

    def hold_out(self, frames: int) -> None:
        """An episode of a statistics-only split (counted in statistics, never curated)."""
        self.episodes_held_out += 1
        self.frames_held_out += int(frames)

    @property
    def episodes_dropped(self) -> int:
        return sum(e["episodes"] for e in self.reasons.values())

    @property
    def frames_dropped(self) -> int:
        return sum(e["frames"] for e in self.reasons.values())

    def merge(self, other: Quarantine) -> Quarantine:
        self.episodes_read += other.episodes_read
        self.episodes_kept += other.episodes_kept
        self.frames_kept += other.frames_kept
        self.episodes_held_out += other.episodes_held_out
        self.frames_held_out += other.frames_held_out
        for reason, e in other.reasons.items():
            mine = self._entry(reason)
            mine["episodes"] += e["episodes"]
            mine["frames"] += e["frames"]
            mine["examples"] += e["examples"][: max(0, self.max_examples - len(mine["examples"]))]
        return self

    def to_json(self) -> dict:
        return {"dataset": self.dataset, "episodes_read": self.episodes_read, "episodes_kept": self.episodes_kept,
                "frames_kept": self.frames_kept, "episodes_dropped": self.episodes_dropped,
                "frames_dropped": self.frames_dropped, "episodes_held_out": self.episodes_held_out,
                "frames_held_out": self.frames_held_out,
                "reasons": {k: self.reasons[k] for k in sorted(self.reasons)}}

    @classmethod
    def from_json(cls, obj: dict, max_examples: int = 5) -> Quarantine:
        q = cls(obj["dataset"], max_examples, obj["episodes_read"], obj["episodes_kept"], obj["frames_kept"],
                episodes_held_out=obj.get("episodes_held_out", 0), frames_held_out=obj.get("frames_held_out", 0))
        q.reasons = {k: {"episodes": v["episodes"], "frames": v["frames"], "examples": list(v["examples"])}
                     for k, v in obj["reasons"].items()}
        return q


def format_quarantine(reports: list[Quarantine]) -> str:
    """Plain-text table: one row per (dataset, reason) with counts and the first example."""
    rows = [("dataset", "reason", "episodes", "frames", "example (episode_id @ file#index)")]
    for q in reports:
        if not q.reasons:
            rows.append((q.dataset, "-", "0", "0", ""))
        for reason, e in sorted(q.reasons.items()):
            ex = e["examples"][0] if e["examples"] else None
            where = f"{ex['episode_id']} @ {ex['source_file'].rsplit('/', 1)[-1]}#{ex['source_index']}" if ex else ""
            rows.append((q.dataset, reason, str(e["episodes"]), str(e["frames"]), where))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
