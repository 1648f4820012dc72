"""One-call inference from a ``VLA.save_pretrained`` export: image + instruction -> 7-D action.

    policy = load_policy("gs://bucket/run/export")
    action = policy.predict_action(image_uint8_hwc, "pick up the block", unnorm_key="bridge_orig")

Un-normalization (shared/oxe/datasets.yaml, ``normalization.un_normalization_at_inference``):
masked dims ``0.5 * (a + 1) * (q99 - q01) + q01``; unmasked dims (gripper) are returned as decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import fs
from pipeline.errors import UserError
from pipeline.model.prompt import ActionPromptBuilder
from pipeline.model.text_tokenizer import load_text_tokenizer
from pipeline.model.tokenizer import ActionTokenizer
from pipeline.model.vla import VLA

__all__ = ["VLAPolicy", "load_policy", "unnormalize_action"]

STATS_FILE = "dataset_statistics.json"
TRAIN_IMAGE_SIZE = 224  # the stream's pixel_values size (contract: "Training batch")


def unnormalize_action(action: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    """Map a normalized action in [-1, 1] back with one dataset's ``action`` stats (BOUNDS_Q99)."""
    q01 = np.asarray(stats["q01"], dtype=np.float64)
    q99 = np.asarray(stats["q99"], dtype=np.float64)
    mask = np.asarray(stats.get("mask", np.ones_like(q01, dtype=bool)), dtype=bool)
    a = np.asarray(action, dtype=np.float64)
    return np.where(mask, 0.5 * (a + 1.0) * (q99 - q01) + q01, a).astype(np.float32)


def _to_pixel_values(image: Any) -> torch.Tensor:
    """uint8 HWC (or float CHW in [0,1]) -> float32 [1, 3, 224, 224] in [0, 1]."""
    x = torch.as_tensor(np.asarray(image))
    if x.dtype == torch.uint8:
        x = x.permute(2, 0, 1).float() / 255.0
    x = x.float()
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"image shape {tuple(x.shape)}: expected uint8 [H,W,3] or float [3,H,W]")
    x = x[None]
    if x.shape[-2:] != (TRAIN_IMAGE_SIZE, TRAIN_IMAGE_SIZE):
        x = F.interpolate(x, size=(TRAIN_IMAGE_SIZE, TRAIN_IMAGE_SIZE), mode="bilinear",
                          align_corners=False, antialias=True)
    return x.clamp(0.0, 1.0)


@dataclass
class VLAPolicy:
    """A loaded export: model, tokenizers, prompt builder and (optional) dataset statistics."""

    model: VLA
    text_tokenizer: Any
    action_tokenizer: ActionTokenizer
    prompt_builder: ActionPromptBuilder
    norm_stats: dict[str, Any]

    @torch.no_grad()
    def predict_action(self, image: Any, instruction: str, *, unnorm_key: str | None = None,
                       action_dim: int = 7) -> np.ndarray:
        """Greedy action for one frame: float32 [action_dim]; normalized unless ``unnorm_key``
        names a dataset in ``norm_stats`` (one dataset in the stats is used automatically)."""
        device = next(self.model.parameters()).device
        pixels = _to_pixel_values(image).to(device)
        prompt = torch.tensor([self.prompt_builder.prompt_ids(instruction)], device=device)
        ids = self.model.predict_action_ids(pixels, prompt, action_dim=action_dim)[0].cpu().numpy()
        action = self.action_tokenizer.decode(ids)
        key = unnorm_key
        if key is None and len(self.norm_stats) == 1:
            key = next(iter(self.norm_stats))
        if key is None:
            return action
        if key not in self.norm_stats:
            raise UserError(f"unnorm_key={key!r}: not in {STATS_FILE}; expected one of {sorted(self.norm_stats)}")
        return unnormalize_action(action, self.norm_stats[key]["action"])


def load_policy(url: str, *, device: str | torch.device = "cpu") -> VLAPolicy:
    """Load model + tokenizer (+ ``dataset_statistics.json`` when present) from one export dir."""
    model = VLA.from_pretrained(url, device=device).eval()
    tok = load_text_tokenizer(url)
    at = ActionTokenizer(base_vocab_size=int(tok.vocab_size))
    stats_url = fs.join(url, STATS_FILE)
    stats = fs.read_json(stats_url) if fs.exists(stats_url) else {}
    return VLAPolicy(model, tok, at, ActionPromptBuilder(tok, at), stats)
