"""Importing a whole checkpoint: a tiny OpenVLA-layout checkpoint (written from OpenVLA's module tree, not
from our mapping) gives OpenVLA's logits; strict errors name the first tensor that does not fit; round
trips ours -> OpenVLA layout -> ours are exact; predict_action un-normalizes with its norm_stats;
local, gs:// and hub-id locations."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from openvla_helpers import (
    DATASET,
    NORM_STATS,
    Reference,
    hand_unnormalize,
    openvla_config_json,
    small_config,
    write_openvla_checkpoint,
)

from pipeline import fs
from pipeline.errors import UserError
from pipeline.model.export_format import save_model_dir
from pipeline.model.pretrained import load_pretrained_vla, open_model_dir

INSTRUCTION = "pick up the red block"


@pytest.fixture(scope="module")
def tok():
    from pipeline.model.text_tokenizer import build_demo_tokenizer

    return build_demo_tokenizer([INSTRUCTION, "open the drawer"])


@pytest.fixture(scope="module")
def ref(tok):
    cfg = small_config(tok)
    return Reference(cfg, cfg.padded_vocab_size(), seed=0).eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, ref, tok) -> str:
    cfg = small_config(tok)
    path = str(tmp_path_factory.mktemp("openvla") / "ckpt")
    return write_openvla_checkpoint(path, ref.openvla_state(), openvla_config_json(cfg, cfg.padded_vocab_size(),
                                                                                   NORM_STATS), tok)


@pytest.fixture(scope="module")
def inputs(tok):
    from pipeline.model.prompt import ActionPromptBuilder

    torch.manual_seed(1)
    ids = torch.tensor([ActionPromptBuilder(tok).prompt_ids(INSTRUCTION)])
    return torch.rand(1, 3, 224, 224), ids


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(*inputs).logits


def test_openvla_checkpoint_gives_openvla_logits(ckpt, ref, inputs):
    loaded = load_pretrained_vla(ckpt)
    assert loaded.format == "openvla" and loaded.norm_stats == NORM_STATS
    torch.testing.assert_close(_logits(loaded.model, inputs), ref.logits(*inputs))
    r = loaded.report
    n_ref = len(ref.state_dict())
    # dropped: each tower's last block (feature block = second-to-last), final norms, SigLIP's attn_pool head
    dino_block = len([k for k in ref.state_dict() if k.startswith("vision_backbone.featurizer.blocks.1.")])
    sig_block = len([k for k in ref.state_dict() if k.startswith("vision_backbone.fused_featurizer.blocks.1.")])
    heads = len([k for k in ref.state_dict() if k.startswith("vision_backbone.fused_featurizer.attn_pool.")]) + 4
    assert r.dropped == {"vision blocks after the feature block": dino_block + sig_block,
                         "vision final norm / pooling head": heads}
    assert r.loaded + sum(r.dropped.values()) == n_ref and r.missing == [] and r.unexpected == []
    assert r.loaded == len(loaded.model.state_dict())


def test_predict_action_unnormalizes_with_norm_stats(ckpt):
    from pipeline.model.inference import VLAPolicy

    policy = VLAPolicy.from_pretrained(ckpt, quantization="fp32", device="cpu")
    assert policy.unnorm_keys == [DATASET]
    img = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    ids = policy.predict_action_ids([img], [INSTRUCTION])[0]
    # OpenVLA's own decoding: (rows - pad_to_multiple_of) - id, minus one, clipped, bin centers
    meta = fs.read_json(os.path.join(ckpt, "config.json"))
    vocab = meta["text_config"]["vocab_size"] - meta["pad_to_multiple_of"]
    bins = np.linspace(-1, 1, 256)
    centers = (bins[:-1] + bins[1:]) / 2
    normalized = centers[np.clip(vocab - ids - 1, 0, 254)]
    action = policy.predict_action(img, INSTRUCTION, unnorm_key=DATASET)
    np.testing.assert_allclose(action, hand_unnormalize(normalized), atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_round_trip_ours_openvla_ours(ckpt, inputs, tmp_path, dtype):
    first = load_pretrained_vla(ckpt)
    want = first.model
    if dtype == "bfloat16":  # the weights a bf16 export stores (buffers such as RoPE frequencies stay fp32)
        want = load_pretrained_vla(ckpt).model
        with torch.no_grad():
            for t in want.state_dict().values():
                t.copy_(t.to(torch.bfloat16))
    save_model_dir(first.model, str(tmp_path / "openvla"), fmt="openvla", tokenizer=first.text_tokenizer,
                   norm_stats=first.norm_stats, dtype=dtype, max_shard_bytes=4_000_000)
    back = load_pretrained_vla(str(tmp_path / "openvla"))
    assert back.format == "openvla" and back.norm_stats == NORM_STATS
    save_model_dir(back.model, str(tmp_path / "vla"), fmt="vla", tokenizer=back.text_tokenizer,
                   norm_stats=back.norm_stats, dtype=dtype)
    again = load_pretrained_vla(str(tmp_path / "vla"))
    assert again.format == "vla" and again.model.config == first.model.config
    expected = _logits(want, inputs)
    assert torch.equal(_logits(back.model, inputs), expected)
    assert torch.equal(_logits(again.model, inputs), expected)
    index = fs.read_json(str(tmp_path / "openvla" / "model.safetensors.index.json"))
    assert len(set(index["weight_map"].values())) > 1 and all(k.startswith(
        ("vision_backbone.featurizer.", "vision_backbone.fused_featurizer.", "projector.fc", "language_model."))
        for k in index["weight_map"])
    from safetensors import safe_open

    with safe_open(str(tmp_path / "openvla" / sorted(set(index["weight_map"].values()))[0]), "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"F32" if dtype == "float32" else "BF16"}


def _variant(ckpt: str, dst: str, change) -> str:
    """A copy of ``ckpt`` whose tensors went through ``change(state)`` (one file)."""
    from safetensors.torch import save_file

    from pipeline.model.safetensors_io import SafetensorsSource

    with SafetensorsSource(ckpt) as src:
        state = {k: src.get(k).clone() for k in src.keys()}
    change(state)
    os.makedirs(dst)
    save_file(state, os.path.join(dst, "model.safetensors"))
    for name in os.listdir(ckpt):
        if not name.startswith("model"):
            with open(os.path.join(ckpt, name), "rb") as f, open(os.path.join(dst, name), "wb") as g:
                g.write(f.read())
    return dst


@pytest.mark.parametrize("case, change, message", [
    ("extra", lambda s: s.__setitem__("language_model.model.extra.weight", torch.zeros(2)),
     r"unexpected tensor language_model\.model\.extra\.weight"),
    ("shape", lambda s: s.__setitem__("projector.fc3.weight", torch.zeros(64, 63)),
     r"projector\.fc3\.weight has shape \[64, 63\] but the model's projector\.4\.weight is \[64, 64\]"),
    ("missing", lambda s: s.pop("language_model.model.norm.weight"), r"no tensor for llm\.model\.norm\.weight"),
    ("stranger", lambda s: s.__setitem__("vision_backbone.third.weight", torch.zeros(1)),
     r"unexpected tensor vision_backbone\.third\.weight"),
])
def test_strict_import_names_the_first_misfit(ckpt, tmp_path, case, change, message):
    bad = _variant(ckpt, str(tmp_path / case), change)
    with pytest.raises(UserError, match=message) as e:
        load_pretrained_vla(bad)
    assert "\n" not in str(e.value) and bad in str(e.value)


def test_tokenizer_that_does_not_match_is_refused(ckpt, tmp_path):
    from pipeline.model.text_tokenizer import build_demo_tokenizer

    bad = _variant(ckpt, str(tmp_path / "tok"), lambda s: None)
    build_demo_tokenizer(["x"], text_vocab_size=600).save_pretrained(bad)  # 857 tokens -> 896 rows, not 832
    with pytest.raises(UserError, match=r"857 tokens \(padded to 896 rows\) but text_config.vocab_size=832"):
        open_model_dir(bad)


def test_gcs_import_equals_local(gcs_bucket, ckpt, inputs):
    for name in os.listdir(ckpt):
        with open(os.path.join(ckpt, name), "rb") as f:
            fs.write_bytes(f"{gcs_bucket}/openvla/{name}", f.read())
    remote = load_pretrained_vla(f"{gcs_bucket}/openvla")
    assert remote.norm_stats == NORM_STATS
    assert torch.equal(_logits(remote.model, inputs), _logits(load_pretrained_vla(ckpt).model, inputs))


def test_hub_id_without_a_hub_is_one_line(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.chdir(tmp_path)  # no local folder of that name
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    with pytest.raises(UserError, match=r"checkpoint=openvla/openvla-7b: not a local path, and the model hub is "
                                        r"not reachable") as e:
        load_pretrained_vla("openvla/openvla-7b")
    assert "\n" not in str(e.value)


def test_hub_id_from_the_local_cache(monkeypatch, tmp_path, ckpt, inputs):
    """A hub id resolves through huggingface_hub (here: a snapshot already in the local cache)."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    snap = cache / "models--someone--tiny-openvla" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    for name in os.listdir(ckpt):
        (snap / name).write_bytes(open(os.path.join(ckpt, name), "rb").read())
    (cache / "models--someone--tiny-openvla" / "refs").mkdir()
    (cache / "models--someone--tiny-openvla" / "refs" / "main").write_text("0" * 40)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    loaded = load_pretrained_vla("someone/tiny-openvla")
    assert torch.equal(_logits(loaded.model, inputs), _logits(load_pretrained_vla(ckpt).model, inputs))


def test_vla_format_v1_still_loads(tmp_path, tok, inputs):
    """Exports written before format 2 (one fp32 model.safetensors, format_version 1) load unchanged."""
    from safetensors.torch import save_file

    from pipeline.model.vla import build_vla

    torch.manual_seed(3)
    model = build_vla(small_config(tok))
    os.makedirs(tmp_path / "v1")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "v1" / "model.safetensors"))
    tok.save_pretrained(str(tmp_path / "v1"))
    cfg = {k: v for k, v in model.config.to_dict().items() if k != "init"}
    (tmp_path / "v1" / "config.json").write_text(json.dumps({"format_version": 1, "vla_config": cfg}))
    assert torch.equal(_logits(load_pretrained_vla(str(tmp_path / "v1")).model, inputs), _logits(model, inputs))
