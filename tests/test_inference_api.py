"""pipeline.inference: VLAPolicy.from_pretrained (local, gs://), predict_action(s), un-normalization,
unnorm_key errors, precision modes on CPU (bf16 works, int8/int4 refuse), which layers get quantized."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vla_export_helpers import INSTRUCTIONS, STATS, export_tiny, hand_unnormalize, image

from pipeline.errors import UserError
from pipeline.inference import VLAPolicy, greedy_action_ids, load_policy


@pytest.fixture(scope="module")
def export_url(tmp_path_factory) -> str:
    return export_tiny(str(tmp_path_factory.mktemp("inference") / "export"))


@pytest.fixture(scope="module")
def policy(export_url) -> VLAPolicy:
    return VLAPolicy.from_pretrained(export_url, quantization="fp32", device="cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_predict_action_unnormalized_by_hand(policy):
    img = image(0)
    ids = policy.predict_action_ids([img], [INSTRUCTIONS[0]])[0]
    normalized = policy.action_tokenizer.decode(ids)
    action = policy.predict_action(img, INSTRUCTIONS[0])  # one dataset in the stats -> used by default
    assert action.shape == (7,) and action.dtype == np.float32
    np.testing.assert_allclose(action, hand_unnormalize(normalized), atol=1e-6)
    np.testing.assert_array_equal(policy.predict_action(img, INSTRUCTIONS[0], unnorm_key="demo_ds"), action)
    assert policy.quantization == "fp32" and policy.unnorm_keys == ["demo_ds"]


def test_kv_cache_decode_matches_full_recompute(policy):
    pixels = policy.pixel_values([image(1), image(2)])
    prompt = torch.tensor([policy.prompt_builder.prompt_ids(INSTRUCTIONS[1])] * 2)
    torch.testing.assert_close(greedy_action_ids(policy.model, pixels, prompt),
                               policy.model.predict_action_ids(pixels, prompt), rtol=0, atol=0)


def test_predict_actions_batch_equals_single(policy):
    imgs = [image(i) for i in range(4)]
    instr = [INSTRUCTIONS[0], INSTRUCTIONS[1], INSTRUCTIONS[0], INSTRUCTIONS[2]]  # mixed prompt lengths
    batch = policy.predict_actions(imgs, instr)
    assert batch.shape == (4, 7) and batch.dtype == np.float32
    for i in range(4):
        np.testing.assert_allclose(batch[i], policy.predict_action(imgs[i], instr[i]), atol=1e-6)
    assert policy.predict_actions(imgs[:2], INSTRUCTIONS[0]).shape == (2, 7)
    with pytest.raises(ValueError, match="2 images but 1 instructions"):
        policy.predict_actions(imgs[:2], [INSTRUCTIONS[0]])


def test_unnorm_key_errors(policy):
    with pytest.raises(UserError, match=r"unnorm_key='bridge_orig'.*\['demo_ds'\]"):
        policy.predict_action(image(0), INSTRUCTIONS[0], unnorm_key="bridge_orig")
    two = VLAPolicy(policy.model, policy.text_tokenizer, policy.action_tokenizer, policy.prompt_builder,
                    {**STATS, "other_ds": STATS["demo_ds"]})
    with pytest.raises(UserError, match=r"2 datasets; pass one of \['demo_ds', 'other_ds'\]"):
        two.predict_action(image(0), INSTRUCTIONS[0])
    none = VLAPolicy(policy.model, policy.text_tokenizer, policy.action_tokenizer, policy.prompt_builder, {})
    ids = policy.predict_action_ids([image(0)], [INSTRUCTIONS[0]])[0]
    np.testing.assert_array_equal(none.predict_action(image(0), INSTRUCTIONS[0]),
                                  policy.action_tokenizer.decode(ids))  # no stats: normalized


def test_image_inputs(policy):
    from PIL import Image

    img = image(3)
    a = policy.predict_action(img, INSTRUCTIONS[0])
    np.testing.assert_array_equal(policy.predict_action(Image.fromarray(img).convert("RGBA"), INSTRUCTIONS[0]), a)
    with pytest.raises(ValueError, match="expected uint8"):
        policy.predict_action(img[..., 0], INSTRUCTIONS[0])


def test_from_pretrained_gcs_equals_local(gcs_bucket, policy, export_url):
    from pipeline import fs

    url = f"{gcs_bucket}/export"
    fsys, _ = fs.get_fs(url)
    fsys.put(export_url + "/", fs.get_fs(url)[1] + "/", recursive=True)
    remote = VLAPolicy.from_pretrained(url, quantization="fp32", device="cpu")
    assert remote.source == url and remote.norm_stats == STATS
    np.testing.assert_array_equal(remote.predict_action(image(4), INSTRUCTIONS[2]),
                                  policy.predict_action(image(4), INSTRUCTIONS[2]))


def test_load_policy_is_fp32_cpu(export_url):
    p = load_policy(export_url)
    assert p.quantization == "fp32" and p.device.type == "cpu"
    assert next(p.model.parameters()).dtype == torch.float32


def test_bf16_on_cpu(export_url):
    p = VLAPolicy.from_pretrained(export_url, quantization="bf16", device="cpu")
    assert p.quantization == "bf16"
    assert {t.dtype for t in p.model.parameters()} == {torch.bfloat16}
    a = p.predict_action(image(0), INSTRUCTIONS[0])
    assert a.shape == (7,) and a.dtype == np.float32 and np.isfinite(a).all()
    lo, hi = np.array(STATS["demo_ds"]["action"]["q01"]), np.array(STATS["demo_ds"]["action"]["q99"])
    assert ((a[:6] >= lo[:6] - 1e-6) & (a[:6] <= hi[:6] + 1e-6)).all()


def test_auto_is_fp32_on_cpu(export_url):
    if torch.cuda.is_available():
        pytest.skip("auto picks bf16 on a GPU")
    assert VLAPolicy.from_pretrained(export_url).quantization == "fp32"


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_gpu_modes_refuse_on_cpu(export_url, mode):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError) as e:
        VLAPolicy.from_pretrained(export_url, quantization=mode)
    assert str(e.value) == (f"quantization={mode} needs a CUDA GPU (bitsandbytes); this machine has none "
                            "- use bf16 or fp32")


def test_bad_mode_device_and_dir(export_url, tmp_path):
    with pytest.raises(UserError, match="quantization='fp8': expected one of fp32, bf16, int8, int4"):
        VLAPolicy.from_pretrained(export_url, quantization="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="device=cuda: this machine has no CUDA GPU"):
            VLAPolicy.from_pretrained(export_url, device="cuda")
    with pytest.raises(UserError, match="no config.json"):
        VLAPolicy.from_pretrained(str(tmp_path))


def test_quantized_layers_are_llm_decoder_linears(monkeypatch, policy):
    """Which layers int8/int4 replace (bitsandbytes stubbed: the selection, not the kernels)."""
    import copy

    from pipeline.model import quantize

    class Marker(torch.nn.Module):
        def __init__(self, lin):
            super().__init__()
            self.shape = tuple(lin.weight.shape)

    monkeypatch.setattr(quantize, "_bitsandbytes", lambda mode: object())
    monkeypatch.setattr(quantize, "_quantized_linear", lambda bnb, lin, mode, device: Marker(lin))
    model = copy.deepcopy(policy.model)
    n = quantize.quantize_llm_linears_(model, "int4", torch.device("cpu"))
    assert n == 7 * model.config.llm_num_layers  # q, k, v, o, gate, up, down per decoder layer
    layer = model.llm.model.layers[0]
    assert isinstance(layer.self_attn.q_proj, Marker) and isinstance(layer.mlp.down_proj, Marker)
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    assert model.llm.lm_head in linears  # the LM head (action rows) stays full precision
    assert any(m in linears for m in model.vision.modules()) and model.projector[0] in linears
    with pytest.raises(ValueError, match="mode='bf16'"):
        quantize.quantize_llm_linears_(model, "bf16", torch.device("cpu"))
