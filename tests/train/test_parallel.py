"""``parallelize`` (the training step's shape) on CPU with real FSDP2 over a 1-rank gloo group:

- the root resharded after forward still gets its backward all-gather when FSDP2 walks module
  outputs the way torch 2.11 does (pytree ``tree_flatten`` only: a dataclass output hid the loss,
  and backward crashed with "setStorage ... storage of size 0" on the GPU);
- every lever (activation checkpointing modes, larger FSDP units, reshard choices, attention
  kernels, per-block compile) gives the loss and gradients of the plain unsharded model;
- activation checkpointing recomputes what each mode says it does.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.distributed as dist
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode
from train_helpers import pytree_grad_tensors, use_torch_2_11_output_walk

from pipeline.errors import UserError
from pipeline.model import ActionPromptBuilder, VLAConfig, build_demo_tokenizer, build_vla
from pipeline.train.parallel import FSDPConfig, ParallelDims, group_blocks, init_distributed, parallelize
from pipeline.train.synthetic import SyntheticStream, synthetic_instructions


# -- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mesh():
    created = init_distributed(torch.device("cpu"))
    yield ParallelDims(world_size=1).mesh
    if created:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def tokenizer():
    return build_demo_tokenizer(synthetic_instructions(4))


@pytest.fixture(scope="module")
def batch(tokenizer):
    stream = SyntheticStream(prompt_builder=ActionPromptBuilder(tokenizer), pad_id=tokenizer.pad_token_id,
                             batch_size=2, rank=0, world_size=1, seed=0, image_size=64, num_tasks=4)
    return next(stream)


def _model(tokenizer):
    torch.manual_seed(0)
    cfg = VLAConfig(preset="tiny", llm_num_layers=2, vision_depth=2)
    return build_vla(cfg, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)


def _forward(model, batch):
    return model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], batch["labels"])


@pytest.fixture(scope="module")
def reference(tokenizer, batch):
    """Loss and gradients of the plain (unsharded, no AC) model."""
    model = _model(tokenizer)
    out = _forward(model, batch)
    out.loss.backward()
    return out.loss.item(), [p.grad.clone() for p in model.parameters()]


def _sharded(tokenizer, mesh, **fsdp):
    return parallelize(_model(tokenizer), mesh, FSDPConfig(**fsdp), param_dtype=torch.float32,
                       reduce_dtype=torch.float32)


def _assert_matches_reference(model, batch, reference, steps=2):
    """``steps`` forward + backward passes (grads cleared between) each give the reference."""
    ref_loss, ref_grads = reference
    for _ in range(steps):
        out = _forward(model, batch)
        out.loss.backward()
        assert out.loss.item() == pytest.approx(ref_loss, abs=1e-5)
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None for g in grads)
        err = max((g.full_tensor() - r).abs().max().item() for g, r in zip(grads, ref_grads))
        assert err < 1e-5
        model.zero_grad(set_to_none=True)


# -- torch 2.11's output walk -------------------------------------------------------------------------
@pytest.fixture()
def torch_2_11_output_walk(monkeypatch):
    use_torch_2_11_output_walk(monkeypatch)


def test_pytree_walk_hides_dataclass_tensors():
    """What made the bug: the 2.11 walk sees no tensor inside an unregistered dataclass."""

    @dataclasses.dataclass
    class Out:
        loss: torch.Tensor

    loss = torch.ones((), requires_grad=True) * 2
    assert pytree_grad_tensors(Out(loss)) == ()
    assert pytree_grad_tensors((loss,)) == (loss,)


def test_root_resharded_backward_under_torch_2_11_walk(tokenizer, batch, mesh, reference, torch_2_11_output_walk):
    model = _sharded(tokenizer, mesh, reshard_root=True)
    out = _forward(model, batch)
    out.loss.backward()  # needs the root's (LM head, embeddings) pre-backward all-gather
    assert any(leaf is out.loss for leaf in tree_flatten(out)[0])  # the walk sees the loss
    model.zero_grad(set_to_none=True)
    _assert_matches_reference(model, batch, reference)


# -- levers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fsdp", [
    {},
    {"reshard_root": True},
    {"activation_checkpointing": "selective"},
    {"activation_checkpointing": "op"},
    {"activation_checkpointing": "full", "blocks_per_unit": 2},
    {"blocks_per_unit": 4, "reshard_after_forward": False},
    {"sdpa_backend": "math"},
    {"sdpa_backend": "flash", "activation_checkpointing": "op"},
    {"compile": "aot_eager", "sdpa_backend": "flash", "activation_checkpointing": "op"},
], ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()) or "defaults")
def test_lever_gives_the_plain_loss_and_grads(tokenizer, batch, mesh, reference, fsdp):
    _assert_matches_reference(_sharded(tokenizer, mesh, **fsdp), batch, reference)


@pytest.mark.parametrize(("mode", "activation_calls", "recomputes_matmuls"), [
    ("none", 1, False), ("selective", 2, True), ("op", 2, False), ("full", 2, True)])
def test_activation_checkpointing_recomputes_what_it_says(tokenizer, batch, mesh, mode, activation_calls,
                                                          recomputes_matmuls):
    """Calls of the last LLM layer's MLP activation per step (2 = recomputed in backward: it is
    checkpointed under selective too), and whether backward runs more matmul FLOPs than the
    plain 2x forward."""
    model = _sharded(tokenizer, mesh, activation_checkpointing=mode)
    calls = []
    model.llm.model.layers[-1].mlp.act_fn.register_forward_hook(lambda *a: calls.append(1))
    with FlopCounterMode(display=False) as fwd:
        out = _forward(model, batch)
    with FlopCounterMode(display=False) as bwd:
        out.loss.backward()
    assert len(calls) == activation_calls
    ratio = bwd.get_total_flops() / fwd.get_total_flops()
    assert (ratio > 2.05) == recomputes_matmuls and ratio > 1.5


def test_group_blocks_stays_within_segments():
    a, b, c, p, x, y, z = (torch.nn.Linear(1, 1) for _ in range(7))
    assert group_blocks([[a, b, c], [p], [x, y, z]], 2) == [[a, b], [c], [p], [x, y], [z]]
    assert group_blocks([[a, b, c]], 1) == [[a], [b], [c]]


def test_grouped_units_share_one_fsdp_state(tokenizer, mesh):
    model = _sharded(tokenizer, mesh, blocks_per_unit=2)
    layers = model.llm.model.layers
    assert layers[0]._get_fsdp_state() is layers[1]._get_fsdp_state()
    assert model.vision[0].blocks[1]._get_fsdp_state() is not model.vision[1].blocks[0]._get_fsdp_state()


@pytest.mark.parametrize(("key", "value"), [("activation_checkpointing", "some"), ("compile", "yes"),
                                            ("sdpa_backend", "fast"), ("blocks_per_unit", 0), ("ac_every", 0)])
def test_bad_fsdp_values_name_the_key(key, value):
    from pipeline.config import load_config
    from pipeline.train.config import TrainConfig

    with pytest.raises(UserError, match=f"^{key}="):  # the section alone names its own key
        FSDPConfig(**{key: value})
    with pytest.raises(UserError, match=f"^fsdp.{key}="):  # the loader names the full key
        load_config(TrainConfig, [f"fsdp.{key}={value}"])


def test_vla_train_with_levers_gives_the_plain_losses(tmp_path):
    """The levers reach `vla train` as fsdp.* keys and leave the (deterministic CPU) run unchanged."""
    from train_helpers import BASE, check, losses, run_train

    levers = ["fsdp.activation_checkpointing=op", "fsdp.blocks_per_unit=2", "fsdp.reshard_root=true",
              "fsdp.sdpa_backend=math", "fsdp.reshard_after_forward=false"]
    runs = {}
    for name, extra in (("plain", []), ("levers", levers)):
        run_dir = str(tmp_path / name)
        check(run_train([*BASE, f"run_dir={run_dir}", "stop.max_steps=3",
                         "model.llm_num_layers=2", "model.vision_depth=2", *extra], nproc=1))
        runs[name] = losses(run_dir)
    assert list(runs["plain"]) == [1, 2, 3]
    for step, loss in runs["plain"].items():
        assert runs["levers"][step] == pytest.approx(loss, rel=1e-4)
