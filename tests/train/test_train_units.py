"""Unit tests of the training components (single process, no process group)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.errors import UserError
from pipeline.train.config import grad_accum_steps
from pipeline.train.loop import stop_reason
from pipeline.train.metrics import MovingAverage, StepStats, action_stats, read_metrics
from pipeline.train.optim import OptimConfig, build_scheduler, lr_factor, param_groups
from pipeline.train.parallel import ParallelDims


@pytest.mark.parametrize("global_batch,per_device,world,accum", [
    (0, 4, 2, 1), (8, 4, 2, 1), (16, 4, 2, 2), (32, 2, 1, 16), (64, 8, 8, 1), (24, 4, 3, 2),
])
def test_grad_accum_math(global_batch, per_device, world, accum):
    assert grad_accum_steps(global_batch, per_device, world) == accum


@pytest.mark.parametrize("global_batch,per_device,world", [(10, 4, 2), (12, 8, 1), (6, 4, 1)])
def test_grad_accum_not_divisible(global_batch, per_device, world):
    with pytest.raises(UserError, match=f"global_batch={global_batch} is not divisible"):
        grad_accum_steps(global_batch, per_device, world)


def test_moving_average_stop_rule():
    from pipeline.train.config import StopConfig

    avg = MovingAverage(3)
    stop = StopConfig(accuracy=0.9, max_steps=100, max_epochs=0.0)
    for step, acc in enumerate([1.0, 1.0], start=1):  # window not full yet: no stop
        avg.update(acc)
        assert stop_reason(avg, stop, step=step, epoch=0.0) is None
    avg.update(0.7)  # mean 0.9 -> stop
    assert avg.value == pytest.approx(0.9) and stop_reason(avg, stop, step=3, epoch=0.0) == "accuracy"
    avg.update(0.5)  # window slides: (1.0 + 0.7 + 0.5) / 3
    assert avg.value == pytest.approx(2.2 / 3) and stop_reason(avg, stop, step=4, epoch=0.0) is None
    assert stop_reason(avg, stop, step=100, epoch=0.0) == "max_steps"
    assert stop_reason(avg, StopConfig(accuracy=0.9, max_steps=100, max_epochs=2.0), step=5, epoch=2.0) == "max_epochs"
    restored = MovingAverage(3)
    restored.load_state_dict(json.loads(json.dumps(avg.state_dict())))
    assert restored.value == avg.value and restored.full


def test_lr_schedules():
    const = OptimConfig()
    assert lr_factor(0, const, 100) == lr_factor(99, const, 100) == 1.0
    cos = OptimConfig(schedule="warmup_cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, cos, 110) == pytest.approx(0.1)
    assert lr_factor(9, cos, 110) == pytest.approx(1.0)
    assert lr_factor(60, cos, 110) == pytest.approx(0.55)
    assert lr_factor(110, cos, 110) == pytest.approx(0.1)
    wc = OptimConfig(schedule="warmup_constant", warmup_steps=4)
    assert [lr_factor(s, wc, 10) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1.0)
    sched = build_scheduler(opt, cos, 110)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2)
    with pytest.raises(UserError, match="schedule='linear': expected one of"):
        OptimConfig(schedule="linear")


def test_param_groups_no_decay_for_bias_norm_embedding():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = torch.nn.Embedding(10, 4)
            self.proj = torch.nn.Linear(4, 4)
            self.norm = torch.nn.LayerNorm(4)

    m = M()
    decay, no_decay = param_groups(m, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [id(p) for p in decay["params"]] == [id(m.proj.weight)]
    assert {id(p) for p in no_decay["params"]} == {id(m.embed_tokens.weight), id(m.proj.bias),
                                                   id(m.norm.weight), id(m.norm.bias)}


def test_parallel_dims():
    full = ParallelDims(world_size=4, mode="full")
    assert (full.dp_replicate, full.dp_shard, full.hybrid_enabled) == (1, 4, False)
    hybrid = ParallelDims(world_size=4, mode="hybrid", shard_size=2)
    assert (hybrid.dp_replicate, hybrid.dp_shard, hybrid.hybrid_enabled) == (2, 2, True)
    one_per_node = ParallelDims(world_size=2, mode="hybrid", shard_size=1)
    assert (one_per_node.dp_replicate, one_per_node.dp_shard) == (2, 1)
    with pytest.raises(UserError, match="fsdp.shard_size=3"):
        ParallelDims(world_size=4, mode="hybrid", shard_size=3)
    with pytest.raises(UserError, match="fsdp.mode"):
        ParallelDims(world_size=4, mode="zero2")


def test_action_stats_and_reduce():
    from pipeline.model import ActionTokenizer

    tok = ActionTokenizer(base_vocab_size=768)
    # sample 0: 3 supervised targets (2 actions + EOS=2), sample 1: 2 actions
    labels = torch.tensor([[-100, -100, 700, 701, 2], [-100, -100, -100, 710, 711]])
    targets = torch.tensor([700, 701, 2, 710, 711])
    preds = torch.tensor([700, 600, 2, 709, 711])
    correct, count, l1 = action_stats(preds, targets, labels, tok)
    assert correct.tolist() == [1.0, 1.0] and count.tolist() == [2.0, 2.0]
    centers = tok.bin_centers
    expected_l1_1 = abs(centers[768 - 710 - 1 + 1] - centers[768 - 710 - 1])
    assert l1[1].item() == pytest.approx(expected_l1_1, rel=1e-5)
    assert l1[0].item() > 0.5  # 600 is not an action id: decodes to the nearest end
    stats = StepStats(2, torch.device("cpu"))
    stats.add(loss=torch.tensor(2.0), correct=correct, count=count, l1=l1, dataset_index=torch.tensor([0, 1]),
              tokens=10, data_wait_s=0.5, flops=1e6)
    stats.add(loss=torch.tensor(4.0), correct=correct, count=count, l1=l1, dataset_index=torch.tensor([1, 1]),
              tokens=10, data_wait_s=0.5, flops=1e6)
    r = stats.reduce()
    assert r["loss"] == 3.0 and r["action_accuracy"] == 0.5 and r["samples"] == 4 and r["tokens"] == 20
    assert r["dataset_accuracy"] == [0.5, 0.5] and r["data_wait_s"] == 1.0


def test_read_metrics_last_record_wins(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": v}) + "\n" for s, v in [(1, 3.0), (2, 2.0), (2, 1.5)]))
    assert [r["loss"] for r in read_metrics(str(path))] == [3.0, 1.5]


def test_checkpoint_listing_ignores_and_cleans_partial(tmp_path):
    from pipeline import fs
    from pipeline.train.checkpoint import COMMIT, find_latest, list_checkpoints

    root = str(tmp_path / "ckpts")
    for step, committed in [(2, True), (4, True), (6, False)]:
        d = fs.join(root, f"step_{step:06d}")
        fs.write_text(fs.join(d, "train_state.json"), "{}")
        if committed:
            fs.write_text(fs.join(d, COMMIT), "ok")
    assert [(s, ok) for s, _, ok in list_checkpoints(root)] == [(2, True), (4, True), (6, False)]
    assert find_latest(root).endswith("step_000004")
    assert find_latest(root, clean_partial=True).endswith("step_000004")
    assert [s for s, _, _ in list_checkpoints(root)] == [2, 4]


def test_rng_state_round_trip():
    import random

    from pipeline.train.checkpoint import rng_state, set_rng_state

    state = json.loads(json.dumps(rng_state()))
    a = (random.random(), np.random.rand(), torch.rand(3).tolist())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(3).tolist()) == a


def test_synthetic_stream_resumes_identically():
    """The shared stateful check: checkpoint at every step, restore, compare the rest."""
    from pipeline.model import ActionPromptBuilder, build_demo_tokenizer
    from pipeline.train.synthetic import SyntheticStream, synthetic_instructions

    tok = build_demo_tokenizer(synthetic_instructions(4))
    builder = ActionPromptBuilder(tok)

    def make(world=1, rank=0):
        return SyntheticStream(prompt_builder=builder, pad_id=tok.pad_token_id, batch_size=2, rank=rank,
                               world_size=world, seed=3, image_size=8, num_tasks=4)

    ref = make()
    batches = [next(ref) for _ in range(4)]
    for k in range(4):
        s = make()
        for _ in range(k):
            next(s)
        state = json.loads(json.dumps(s.state_dict()))
        t = make()
        t.load_state_dict(state)
        assert t.state_dict() == state
        for b in batches[k:]:
            got = next(t)
            assert torch.equal(got["input_ids"], b["input_ids"]) and torch.equal(got["pixel_values"], b["pixel_values"])
    # world size 2: ranks take the two halves of each global batch of the 1-rank order
    r0, r1 = make(2, 0), make(2, 1)
    one = make()
    for _ in range(2):
        g0, g1, a, b = next(r0), next(r1), next(one), next(one)
        assert torch.equal(g0["pixel_values"], a["pixel_values"]) and torch.equal(g1["pixel_values"], b["pixel_values"])


def test_cli_verbs_and_top_level_keys_are_pinned():
    import dataclasses

    from pipeline.cli import VERBS
    from pipeline.train.config import TrainConfig

    assert VERBS["train"].run == "pipeline.train.main:run_train"
    assert VERBS["export"].run == "pipeline.train.export:run_export"
    assert VERBS["plot"].run == "pipeline.train.plot:run_plot"
    assert [f.name for f in dataclasses.fields(TrainConfig)] == [
        "run_dir", "seed", "resume", "nproc", "device", "per_device_batch", "global_batch", "deterministic",
        "model", "data", "optim", "fsdp", "checkpoint", "stop", "metrics", "eval", "debug"]
