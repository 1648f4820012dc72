"""The hook points of a run (pipeline.train.hooks): where a real checkpoint save calls them, what is on
disk at each, and how the ``debug`` section builds a run's hooks."""

from __future__ import annotations

import os

import pytest
import torch

from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.train.checkpoint import (
    COMMIT,
    CheckpointConfig,
    CheckpointManager,
    ModelOptimState,
    step_dir_name,
)
from pipeline.train.config import DebugConfig, TrainConfig
from pipeline.train.hooks import CrashHooks, HookList, RunInfo, TrainHooks, build_hooks


class _JsonState:
    def __init__(self, value: dict) -> None:
        self.value = value

    def state_dict(self) -> dict:
        return dict(self.value)

    def load_state_dict(self, state: dict) -> None:
        self.value = dict(state)


class _Recorder(TrainHooks):
    """Records each save point with the files of the step dir at that moment."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.events: list[tuple[str, int, list[str]]] = []

    def _files(self, step: int) -> list[str]:
        base = os.path.join(self.root, step_dir_name(step))
        return sorted(os.path.relpath(os.path.join(d, n), base) for d, _, ns in os.walk(base) for n in ns)

    def after_shards(self, step: int) -> None:
        self.events.append(("after_shards", step, self._files(step)))

    def before_commit(self, step: int) -> None:
        self.events.append(("before_commit", step, self._files(step)))


def test_save_calls_after_shards_then_before_commit(tmp_path):
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    root = str(tmp_path / "ckpts")
    hooks = _Recorder(root)
    states = {"app": ModelOptimState(model, opt), "train": _JsonState({"step": 0}), "data": _JsonState({"pos": 1})}
    ckpt = CheckpointManager(CheckpointConfig(save_every=2), root=root, states=states,
                             files={"config.yaml": "x: 1\n"}, hooks=hooks)
    assert ckpt.save(1) is None  # not a save step: no hook call
    ckpt.save(2)
    ckpt.close()
    (shards_name, shards_step, at_shards), (commit_name, commit_step, at_commit) = hooks.events
    assert (shards_name, shards_step, commit_name, commit_step) == ("after_shards", 2, "before_commit", 2)
    assert ".metadata" in at_shards and "train_state.json" not in at_shards and COMMIT not in at_shards
    assert {"train_state.json", "config.yaml", "ranks/rank_00000-of-00001.json"} <= set(at_commit)
    assert COMMIT not in at_commit
    assert os.path.exists(os.path.join(root, step_dir_name(2), COMMIT))  # written after the hook


def test_debug_section_builds_the_hooks():
    assert type(build_hooks(DebugConfig())) is HookList and not build_hooks(DebugConfig()).hooks
    crash = build_hooks(DebugConfig(crash_at_step=3, crash_rank=1))
    assert isinstance(crash, CrashHooks) and (crash.crash_at_step, crash.crash_rank) == (3, 1)
    cfg = load_config(TrainConfig, ["debug.term_at_step=2", "debug.hooks=tests.faults.suite.hooks:SaveFault",
                                    "debug.hook_args.step=4", "debug.hook_args.fault=pause"])
    both = build_hooks(cfg.debug)
    assert [type(h).__name__ for h in both.hooks] == ["CrashHooks", "SaveFault"]
    assert (both.hooks[1].step, both.hooks[1].fault) == (4, "pause")


@pytest.mark.parametrize("args, fragment", [
    (["debug.hooks=nocolon"], "debug.hooks='nocolon': expected an import string"),
    (["debug.hook_args.step=1"], "debug.hook_args={'step': 1}: set debug.hooks"),
])
def test_bad_hook_config_is_refused_at_parse_time(args, fragment):
    with pytest.raises(UserError, match=fragment):
        load_config(TrainConfig, args)


@pytest.mark.parametrize("args, fragment", [
    (["debug.hooks=no_such_module_xyz:Hooks"], "debug.hooks='no_such_module_xyz:Hooks': cannot import"),
    (["debug.hooks=tests.faults.suite.hooks:SaveFault", "debug.hook_args.steps=4"], "debug.hook_args="),
    (["debug.hooks=tests.faults.suite.hooks:marker_path", "debug.hook_args.run_dir=x", "debug.hook_args.step=1"],
     "not TrainHooks"),
])
def test_bad_hooks_are_one_line_user_errors(args, fragment):
    with pytest.raises(UserError, match=fragment):
        build_hooks(load_config(TrainConfig, args).debug)


def test_crash_hooks_only_on_their_rank_and_once(tmp_path):
    hooks = CrashHooks(crash_at_step=2, crash_rank=1)
    hooks.start(RunInfo(rank=0, world_size=2, run_dir=str(tmp_path)))
    hooks.after_step(2)  # rank 0: nothing happens (rank 1 would exit)
    (tmp_path / ".crashed_2").write_text("rank 1\n")
    again = CrashHooks(crash_at_step=2, crash_rank=0)
    again.start(RunInfo(rank=0, world_size=1, run_dir=str(tmp_path)))
    again.after_step(2)  # marker from an earlier crash: the relaunch goes on
    assert sorted(p.name for p in tmp_path.iterdir()) == [".crashed_2"]
