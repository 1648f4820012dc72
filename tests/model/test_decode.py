"""Each speed lever of the static-cache decoder picks the reference path's action tokens (HF forward +
DynamicCache, prompts grouped by length) on a tiny model on the CPU: static KV cache with prompts of
mixed lengths in one batch (fp32, bf16, grouped-query attention), an explicit SDPA backend,
torch.compile of the per-layer blocks (tracing checked with dynamo's eager backend), no host sync
inside an action; and the int8 layers are fed fp16. CUDA graph replay needs a GPU:
``pipeline/bench/gpu_infer.sh`` checks it (same tokens as the eager path) and times it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pipeline.model import ActionPromptBuilder, ActionTokenizer, VLAConfig, build_demo_tokenizer, build_vla
from pipeline.model.decode import ActionDecoder, DecodeOptions
from pipeline.model.inference import VLAPolicy
from pipeline.model.quantize import Int8Fp16Linear

INSTRUCTIONS = ["pick up the red block", "open the drawer", "put the spoon in the pot and then close the lid"]
REFERENCE = DecodeOptions(static_cache=False)


def _policy(dtype: torch.dtype = torch.float32, **model_kw) -> VLAPolicy:
    """A random tiny VLA whose greedy tokens depend on image and instruction (init std 0.1)."""
    tok = build_demo_tokenizer(INSTRUCTIONS)
    torch.manual_seed(0)
    model = build_vla(VLAConfig(preset="tiny", initializer_range=0.1, **model_kw), vocab_size=len(tok),
                      pad_token_id=tok.pad_token_id).eval().requires_grad_(False).to(dtype)
    at = ActionTokenizer(base_vocab_size=int(tok.vocab_size))
    return VLAPolicy(model, tok, at, ActionPromptBuilder(tok, at), {})


def _frames(n: int = 6) -> tuple[list[np.ndarray], list[str]]:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(n)]
    return images, [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(n)]


def _reference(policy: VLAPolicy, images, instructions) -> np.ndarray:
    return dataclasses.replace(policy, decode=REFERENCE).predict_action_ids(images, instructions)


@pytest.mark.parametrize(("dtype", "model_kw"), [(torch.float32, {}), (torch.bfloat16, {}),
                                                 (torch.float32, {"llm_num_kv_heads": 2})],
                         ids=["fp32", "bf16", "gqa"])
def test_static_cache_batch_of_mixed_prompts_equals_reference(dtype, model_kw):
    policy = _policy(dtype, **model_kw)
    images, instructions = _frames()
    lengths = {len(policy.prompt_builder.prompt_ids(s)) for s in instructions}
    assert len(lengths) == 3  # one batch, three prompt lengths: rows are padded
    expected = _reference(policy, images, instructions)
    got = policy.predict_action_ids(images, instructions)
    np.testing.assert_array_equal(got, expected)
    assert len({tuple(row) for row in expected}) >= 4  # the tokens depend on the inputs: a real comparison
    same_prompt = policy.predict_action_ids(images, [INSTRUCTIONS[0]] * len(images))
    assert len({tuple(row) for row in same_prompt}) >= 2  # ... on the image too
    for i in (0, 2):  # a padded batch row equals the frame decoded alone
        np.testing.assert_array_equal(policy.predict_action_ids([images[i]], [instructions[i]])[0], expected[i])


@pytest.mark.parametrize("options", [DecodeOptions(sdpa_backend="math"),
                                     DecodeOptions(compile=True, compile_backend="eager")],
                         ids=["sdpa_math", "compile"])
def test_levers_keep_the_tokens(options):
    torch._dynamo.reset()
    policy = _policy()
    images, instructions = _frames(4)
    expected = _reference(policy, images, instructions)
    fast = dataclasses.replace(policy, decode=options)
    np.testing.assert_array_equal(fast.predict_action_ids(images, instructions), expected)
    np.testing.assert_array_equal(fast.predict_action_ids(images[:1], instructions[:1]), expected[:1])


class _NoHostSync(TorchDispatchMode):
    """Fails on any op that reads a tensor value on the host (.item(), bool(tensor), ...)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            raise AssertionError("host sync inside the action")
        return func(*args, **(kwargs or {}))


def test_no_host_sync_inside_an_action_and_reused_buffers():
    policy = _policy()
    images, instructions = _frames(3)
    expected = _reference(policy, images, instructions)
    decoder = policy._decoder(3, max(len(policy.prompt_builder.prompt_ids(s)) for s in instructions) - 1, 7)
    frames = policy.frames(images)
    prompts = [policy.prompt_builder.prompt_ids(s) for s in instructions]
    decoder._load(frames, prompts)
    with torch.no_grad(), _NoHostSync():
        decoder._run()  # what a CUDA graph captures: vision, prefill and every decode step
    np.testing.assert_array_equal(decoder.out.numpy(), expected)
    # the decoder (static cache, buffers) is kept per shape, a later call leaves earlier answers alone
    first = policy.predict_action_ids(images, instructions)
    policy.predict_action_ids(images[::-1], instructions[::-1])
    assert policy._decoder(3, decoder.text_len, 7) is decoder
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(policy.predict_action_ids(images, instructions), expected)
    with pytest.raises(ValueError, match="at most"):
        decoder(frames, [prompts[0] + [5] * 40] * 3)


def test_decode_options_and_decoder_checks():
    with pytest.raises(ValueError, match="sdpa_backend='fast'"):
        DecodeOptions(sdpa_backend="fast")
    policy = _policy()
    decoder = ActionDecoder(policy.model, batch=2, text_len=4, action_dim=7, image_size=112, options=DecodeOptions())
    assert not decoder.use_graph  # CPU: eager
    with pytest.raises(ValueError, match="1 prompts: this decoder takes 2"):
        decoder(np.zeros((1, 112, 112, 3), np.uint8), [[1, 2]])


def test_int8_layers_get_fp16_inputs():
    torch.manual_seed(0)
    inner = torch.nn.Linear(8, 4, bias=False).half()
    seen: list[torch.dtype] = []
    inner.register_forward_pre_hook(lambda mod, args: seen.append(args[0].dtype))
    x = torch.randn(2, 3, 8, dtype=torch.bfloat16)
    out = Int8Fp16Linear(inner)(x)
    assert seen == [torch.float16] and out.dtype == torch.bfloat16
    torch.testing.assert_close(out, inner(x.half()).bfloat16(), rtol=0, atol=0)
