"""A deterministic synthetic batch source shaped like the training stream (tests, benchmarks).

``num_tasks`` fixed tasks, each an (instruction, image colour, normalized 7-D action) triple; a
sample is a task drawn from ``(seed, global sample index)`` plus a little image noise. The model can
learn it perfectly, so action accuracy climbs to 1.0. Batches follow the stream contract
(``pixel_values``, ``input_ids``, ``attention_mask``, ``labels``, ``dataset_index``, ``meta``).

Like the training stream, its state is the global sample position (Stateful); rank r of W takes
positions [p + r*B, p + (r+1)*B) of each global batch, so a state restores at any world size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["SyntheticStream", "synthetic_instructions"]

_WORDS = ("pick up the", "open the", "close the", "push the", "move the", "place the", "stack the", "wipe the")
_OBJECTS = ("red block", "drawer", "blue cup", "sponge", "lid", "green bowl", "towel", "can")
VERSION = 1


def synthetic_instructions(num_tasks: int) -> list[str]:
    return [f"{_WORDS[k % len(_WORDS)]} {_OBJECTS[(k * 3 + k // len(_WORDS)) % len(_OBJECTS)]}"
            for k in range(num_tasks)]


class SyntheticStream:
    """Iterable of batches for ``rank`` of ``world_size`` (disjoint sample indices per rank)."""

    dataset_names = ("synthetic_a", "synthetic_b")

    def __init__(self, *, prompt_builder: Any, pad_id: int, batch_size: int, rank: int, world_size: int,
                 seed: int, image_size: int, num_tasks: int = 8, epoch_size: int = 4096) -> None:
        from pipeline.model.prompt import collate

        self._collate = collate
        self.prompt_builder = prompt_builder
        self.pad_id = pad_id
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.image_size = image_size
        self.epoch_size = epoch_size
        rng = np.random.default_rng([seed, 7])
        self.instructions = synthetic_instructions(num_tasks)
        self.actions = rng.uniform(-0.9, 0.9, size=(num_tasks, 7)).astype(np.float32)
        self.colors = rng.uniform(0.1, 0.9, size=(num_tasks, 3)).astype(np.float32)
        self.position = 0

    @property
    def epoch(self) -> int:
        return self.position // self.epoch_size

    def _sample(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, index])
        task = int(rng.integers(len(self.instructions)))
        noise = rng.normal(0.0, 0.02, size=(3, self.image_size, self.image_size)).astype(np.float32)
        pixels = np.clip(self.colors[task][:, None, None] + noise, 0.0, 1.0)
        sample = self.prompt_builder({"language_instruction": self.instructions[task],
                                      "action": self.actions[task], "pixel_values": pixels})
        sample["dataset_index"] = task % len(self.dataset_names)
        sample["meta"] = (self.dataset_names[task % 2], f"task{task}", index)
        return sample

    def next(self) -> dict:
        """The next batch of this rank."""
        first = self.position + self.rank * self.batch_size
        self.position += self.world_size * self.batch_size
        return self._collate([self._sample(first + i) for i in range(self.batch_size)], self.pad_id)

    def epoch_length(self) -> int:
        return self.epoch_size

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return self.next()

    def state_dict(self) -> dict:
        return {"version": VERSION, "kind": "synthetic", "seed": self.seed, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        for key, value in (("version", VERSION), ("kind", "synthetic"), ("seed", self.seed)):
            if state.get(key) != value:
                raise ValueError(f"synthetic stream state: {key}={state.get(key)!r}, this run has {value!r}")
        self.position = int(state["position"])

    def close(self) -> None:
        return None
