"""load_policy + predict_action: an overfit tiny model reproduces its training action end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.errors import UserError
from pipeline.model.export_format import save_model_dir
from pipeline.model.inference import load_policy, unnormalize_action
from pipeline.model.prompt import ActionPromptBuilder, collate

STATS = {"demo_ds": {"action": {"q01": [-2.0] * 6 + [0.0], "q99": [2.0] * 6 + [1.0],
                                "mask": [True] * 6 + [False]}}}


def test_unnormalize():
    a = np.array([-1.0, 0.0, 1.0, 0.5, -0.5, 0.25, 0.9])
    out = unnormalize_action(a, STATS["demo_ds"]["action"])
    np.testing.assert_allclose(out, [-2.0, 0.0, 2.0, 1.0, -1.0, 0.5, 0.9], atol=1e-6)


def test_overfit_and_predict(tmp_path, tiny_model, demo_tokenizer):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    action = np.array([0.9, -0.9, 0.0, 0.3, -0.3, 0.6, 1.0], dtype=np.float32)
    pixels = torch.nn.functional.interpolate(
        torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, size=(224, 224), mode="bilinear",
        antialias=True)[0]
    pb = ActionPromptBuilder(demo_tokenizer)
    batch = collate([pb({"language_instruction": "Open the drawer.", "action": action,
                         "pixel_values": pixels})], demo_tokenizer.pad_token_id)
    opt = torch.optim.AdamW(tiny_model.parameters(), lr=3e-3)
    for _ in range(60):
        out = tiny_model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], batch["labels"])
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    assert out.loss.item() < 0.05
    url = str(tmp_path / "export")
    save_model_dir(tiny_model, url, tokenizer=demo_tokenizer, norm_stats=STATS, dtype=None)
    policy = load_policy(url)
    normalized = policy.predict_action(image, "Open the drawer.", unnorm_key=None)
    expected_norm = policy.action_tokenizer.decode(policy.action_tokenizer.encode(action))
    # one dataset in the stats -> used automatically
    np.testing.assert_allclose(normalized, unnormalize_action(expected_norm, STATS["demo_ds"]["action"]),
                               atol=1e-5)
    with pytest.raises(UserError, match="unnorm_key"):
        policy.predict_action(image, "Open the drawer.", unnorm_key="other")
