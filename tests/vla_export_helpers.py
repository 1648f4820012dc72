"""A tiny exported VLA (random weights, demo tokenizer, hand-written statistics) for inference and
serving tests: what ``vla export`` writes, built in about a second."""

from __future__ import annotations

import numpy as np

INSTRUCTIONS = ["pick up the red block", "open the drawer", "put the spoon in the pot"]
# un-normalization by hand: dim0 -> 2(a+1), dim1 -> a, dim2 -> 2a, dims 3-5 -> a, gripper (unmasked) -> a
STATS = {"demo_ds": {"action": {"q01": [0.0, -1.0, -2.0, -1.0, -1.0, -1.0, 0.0],
                                "q99": [4.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0],
                                "mask": [True] * 6 + [False]},
                     "num_transitions": 10, "num_trajectories": 1}}


def hand_unnormalize(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return np.array([2 * (a[0] + 1), a[1], 2 * a[2], a[3], a[4], a[5], a[6]], dtype=np.float32)


def export_tiny(url: str, *, stats: dict | None = None, seed: int = 0) -> str:
    import torch

    from pipeline.model.export_format import save_model_dir
    from pipeline.model.presets import VLAConfig
    from pipeline.model.text_tokenizer import build_demo_tokenizer
    from pipeline.model.vla import build_vla

    tok = build_demo_tokenizer(INSTRUCTIONS)
    torch.manual_seed(seed)
    model = build_vla(VLAConfig(preset="tiny"), vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    save_model_dir(model, url, tokenizer=tok, norm_stats=STATS if stats is None else stats, dtype=None)
    return url


def image(seed: int = 0, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
