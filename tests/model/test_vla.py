"""Tiny VLA on CPU: forward/backward, fast-path loss == full-logits loss, metrics, accounting."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pipeline.model.presets import VLAConfig
from pipeline.model.tokenizer import ActionTokenizer
from pipeline.model.vla import VLA, action_metrics, build_vla


def _run(model, batch, **kw):
    return model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], batch["labels"], **kw)


def test_tiny_shapes(tiny_model, demo_tokenizer):
    m = tiny_model
    assert m.vocab_size == 832  # 769 rounded up to a multiple of 64
    assert m.num_visual_tokens == 64 and m.config.image_size == 112
    assert m.llm.config.pad_token_id == demo_tokenizer.pad_token_id
    assert m.num_params() < 4_000_000
    assert all(p.requires_grad for p in m.parameters())


def test_forward_backward_and_fast_path_equality(tiny_model, tiny_batch):
    torch.manual_seed(0)
    fast = _run(tiny_model, tiny_batch)
    full = _run(tiny_model, tiny_batch, full_logits=True)
    n_sup = int((tiny_batch["labels"] != -100).sum())
    assert n_sup == 4 * 8
    assert fast.logits.shape == (n_sup, 832) and fast.targets.shape == (n_sup,)
    b, seq = tiny_batch["input_ids"].shape
    assert full.logits.shape == (b, seq + 64, 832)
    torch.testing.assert_close(fast.loss, full.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast.predictions, full.predictions)
    # reference: HF-style loss over full logits with shifted labels
    ign = torch.full((b, 64), -100)
    lab = torch.cat([tiny_batch["labels"][:, :1], ign, tiny_batch["labels"][:, 1:]], 1)
    ref = torch.nn.functional.cross_entropy(full.logits[:, :-1].reshape(-1, 832), lab[:, 1:].reshape(-1))
    torch.testing.assert_close(fast.loss, ref, rtol=1e-5, atol=1e-6)
    fast.loss.backward()
    for name, mod in (("vision", tiny_model.vision), ("projector", tiny_model.projector),
                      ("llm", tiny_model.llm.model.layers)):
        grads = [p.grad for p in mod.parameters()]
        assert all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name


def test_fast_path_grads_equal_full_logits_grads(tiny_model, tiny_batch):
    """The LM head at the supervised positions only (the training path) gives the gradients of
    the head over every position."""
    grads = []
    for full in (False, True):
        tiny_model.zero_grad(set_to_none=True)
        _run(tiny_model, tiny_batch, full_logits=full).loss.backward()
        grads.append([p.grad.clone() for p in tiny_model.parameters()])
    tiny_model.zero_grad(set_to_none=True)
    for fast, full in zip(*grads):
        torch.testing.assert_close(fast, full, rtol=1e-4, atol=1e-6)


def test_output_is_a_pytree_node_with_named_fields(tiny_model, tiny_batch):
    """FSDP2 (torch 2.11) finds the loss with pytree's tree_flatten: the output must expose it."""
    from torch.utils._pytree import tree_flatten

    out = _run(tiny_model, tiny_batch)
    leaves = tree_flatten(out)[0]
    assert any(leaf is out.loss for leaf in leaves) and any(leaf is out.logits for leaf in leaves)
    assert out.num_visual_tokens == 64 and out._fields == ("loss", "logits", "predictions", "targets",
                                                           "num_visual_tokens")


def test_padding_does_not_change_loss(tiny_model, tiny_batch):
    """Extra right padding must not change the loss (attention mask + ignored labels)."""
    b = dict(tiny_batch)
    extra = 5
    b["input_ids"] = torch.nn.functional.pad(b["input_ids"], (0, extra), value=768)
    b["labels"] = torch.nn.functional.pad(b["labels"], (0, extra), value=-100)
    b["attention_mask"] = torch.nn.functional.pad(b["attention_mask"], (0, extra), value=False)
    with torch.no_grad():
        torch.testing.assert_close(_run(tiny_model, b).loss, _run(tiny_model, tiny_batch).loss)


def test_no_supervised_tokens(tiny_model, tiny_batch):
    b = dict(tiny_batch, labels=torch.full_like(tiny_batch["labels"], -100))
    out = _run(tiny_model, b)
    assert out.loss.item() == 0.0 and out.targets.numel() == 0
    out.loss.backward()


def test_resize_224_input(tiny_model, tiny_batch):
    b = dict(tiny_batch)
    b["pixel_values"] = torch.nn.functional.interpolate(b["pixel_values"], size=(224, 224))
    with torch.no_grad():
        out = _run(tiny_model, b)
    assert torch.isfinite(out.loss)


def test_eager_matches_sdpa(demo_tokenizer, tiny_batch, tiny_model):
    eager = build_vla(VLAConfig(preset="tiny", attn_implementation="eager"), vocab_size=len(demo_tokenizer))
    eager.load_state_dict(tiny_model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(_run(eager, tiny_batch).loss, _run(tiny_model, tiny_batch).loss,
                                   rtol=1e-4, atol=1e-5)


def test_metrics():
    at = ActionTokenizer(base_vocab_size=768)
    targets = torch.tensor([512, 640, 767, 2])
    preds = torch.tensor([512, 641, 767, 5])
    m = action_metrics(preds, targets, at)
    assert float(m["num_action_tokens"]) == 3 and float(m["action_correct"]) == 2
    assert float(m["action_accuracy"]) == pytest.approx(2 / 3)
    assert float(m["action_l1"]) == pytest.approx((2 / 255) / 3, rel=1e-5)
    assert VLA.compute_metrics is action_metrics


def test_predict_action_ids(tiny_model, tiny_batch):
    ids = tiny_batch["input_ids"][:1, :-8]
    out = tiny_model.predict_action_ids(tiny_batch["pixel_values"][:1], ids, action_dim=7)
    assert out.shape == (1, 7) and out.dtype == torch.int64


def test_fsdp_units_and_flops(tiny_model):
    units = tiny_model.fsdp_units()
    assert len(units) == 2 * 2 + 1 + 3
    assert units[4] is tiny_model.projector and units[-1] is tiny_model.llm.model.layers[-1]
    n = tiny_model.num_params()
    flops = tiny_model.flops_per_sample(30)
    assert 6 * n * 30 < flops < 6 * n * (30 + 64 + 10) * 3
    assert tiny_model.num_params(exclude_embeddings=True) == n - 832 * 192


@pytest.mark.parametrize(("key", "value"), [("preset", "huge"), ("attn_implementation", "flash"),
                                            ("image_size", 0)])
def test_bad_config(key, value):
    with pytest.raises(ValueError, match=key):
        VLAConfig(**{key: value})


def test_config_resolution_and_round_trip():
    cfg = VLAConfig(preset="tiny", llm_num_layers=4).resolved()
    assert cfg.llm_num_layers == 4 and cfg.llm_hidden_size == 192 and cfg.image_size == 112
    assert VLAConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="vocab_size"):
        build_vla(VLAConfig(preset="tiny"))
    assert dataclasses.replace(cfg, vocab_size=769).padded_vocab_size() == 832
    with pytest.raises(ValueError, match="unknown keys"):
        VLAConfig.from_dict({"presett": "tiny"})
