"""Action tokenizer: 256 uniform bins over [-1, 1] mapped onto the last ids of the base vocabulary.

Facts (shared/oxe/datasets.yaml, ``action_tokenizer``):
- edges = linspace(-1, 1, 256); centers = the 255 midpoints between consecutive edges.
- encode: clamp to [-1, 1], k = digitize(x, edges) in 1..256 (x = +1.0 gives 256, -1.0 gives 1),
  token id = base_vocab_size - k. Llama-2 (32000): +1.0 -> 31744, 0.0 -> 31872, -1.0 -> 31999.
- decode: k = base_vocab_size - id, index = clamp(k - 1, 0, 254), value = centers[index].

Both numpy arrays and torch tensors are accepted; the output has the input's array type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ActionTokenizer", "LLAMA2_BASE_VOCAB_SIZE"]

LLAMA2_BASE_VOCAB_SIZE = 32000


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


@dataclass(frozen=True, kw_only=True)
class ActionTokenizer:
    """Maps normalized continuous actions in [-1, 1] to token ids and back (vectorized).

    ``base_vocab_size`` is the text tokenizer's base vocabulary size (``tokenizer.vocab_size``,
    added tokens such as ``<PAD>`` excluded); action ids are the last ``n_bins`` ids of it.
    """

    base_vocab_size: int = LLAMA2_BASE_VOCAB_SIZE
    n_bins: int = 256
    min_action: float = -1.0
    max_action: float = 1.0

    def __post_init__(self) -> None:
        if self.n_bins < 2:
            raise ValueError(f"ActionTokenizer.n_bins={self.n_bins}: need at least 2 bins")
        if self.base_vocab_size <= self.n_bins:
            raise ValueError(
                f"ActionTokenizer.base_vocab_size={self.base_vocab_size}: must exceed n_bins={self.n_bins}")
        if not self.min_action < self.max_action:
            raise ValueError("ActionTokenizer: min_action must be < max_action")

    # -- bins ------------------------------------------------------------------------------------
    @property
    def bin_edges(self) -> np.ndarray:
        """float64 [n_bins] evenly spaced edges from min_action to max_action inclusive."""
        return np.linspace(self.min_action, self.max_action, self.n_bins)

    @property
    def bin_centers(self) -> np.ndarray:
        """float64 [n_bins - 1] midpoints between consecutive edges."""
        e = self.bin_edges
        return (e[:-1] + e[1:]) / 2.0

    @property
    def action_token_begin_idx(self) -> int:
        """Ids strictly greater than this are action tokens (Llama-2: 31743)."""
        return self.base_vocab_size - (self.n_bins + 1)

    @property
    def first_id(self) -> int:
        """Smallest action token id (Llama-2: 31744; the id of +1.0)."""
        return self.base_vocab_size - self.n_bins

    @property
    def last_id(self) -> int:
        """Largest action token id (Llama-2: 31999; the id of -1.0)."""
        return self.base_vocab_size - 1

    # -- encode / decode ---------------------------------------------------------------------------
    def encode(self, actions: Any) -> Any:
        """actions float [..., D] (numpy or torch) -> int64 ids [..., D] of the same array type."""
        if _is_torch(actions):
            import torch

            edges = torch.as_tensor(self.bin_edges, dtype=torch.float64, device=actions.device)
            x = actions.to(torch.float64).clamp(self.min_action, self.max_action)
            # digitize (right=False): k = number of edges <= x
            k = torch.bucketize(x, edges, right=True)
            return (self.base_vocab_size - k).to(torch.int64)
        x = np.clip(np.asarray(actions, dtype=np.float64), self.min_action, self.max_action)
        k = np.digitize(x, self.bin_edges)
        return (self.base_vocab_size - k).astype(np.int64)

    def decode(self, token_ids: Any) -> Any:
        """int ids [..., D] (numpy or torch) -> float32 bin centers [..., D] of the same array type.

        Ids outside the action range are clamped into it (they decode to the nearest end center).
        """
        if _is_torch(token_ids):
            import torch

            centers = torch.as_tensor(self.bin_centers, dtype=torch.float32, device=token_ids.device)
            idx = (self.base_vocab_size - token_ids.to(torch.int64) - 1).clamp(0, self.n_bins - 2)
            return centers[idx]
        ids = np.asarray(token_ids, dtype=np.int64)
        idx = np.clip(self.base_vocab_size - ids - 1, 0, self.n_bins - 2)
        return self.bin_centers[idx].astype(np.float32)

    def is_action(self, token_ids: Any) -> Any:
        """Boolean mask of ids that are action tokens (``id > action_token_begin_idx``, ``< vocab``)."""
        return (token_ids > self.action_token_begin_idx) & (token_ids < self.base_vocab_size)
