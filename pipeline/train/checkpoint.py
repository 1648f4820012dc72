"""Checkpoints: DCP model + optimizer, small JSON states, and a COMMIT marker written last.

Layout of one checkpoint (any fsspec URL; ``gs://`` goes through a local staging dir)::

    <root>/step_000123/
        .metadata, __<rank>_0.distcp     torch.distributed.checkpoint of {"app": model + optimizer}
        train_state.json                 step, epoch, LR scheduler, stop-rule window, world size
        ranks/rank_00000-of-00002.json   per rank: data-stream state + RNG states
        config.yaml                      the resolved TrainConfig
        model_config.json                the model config (checked on load: same architecture)
        dataset_statistics.json          action/proprio statistics of the training mixture
        COMMIT                           written by rank 0 after every rank finished (barrier)

A directory without ``COMMIT`` is partial (a crash mid-save): ``resume=auto`` ignores it, reports
it, and removes it. Saving at world size W and loading at W' != W reshards the model and optimizer
through DCP; the data stream resumes at the saved global position (rank 0's state: the stream
re-derives each rank's share of the epoch plan), and the RNG states restart from the seed.

A save calls the run's hooks (:mod:`pipeline.train.hooks`): ``after_shards`` once the DCP shards
are written, ``before_commit`` once every file is in place and before ``COMMIT``.
"""

from __future__ import annotations

import base64
import logging
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pipeline import fs
from pipeline.errors import ConfigError, UserError
from pipeline.train.hooks import TrainHooks
from pipeline.train.parallel import barrier, rank_and_world

__all__ = [
    "CheckpointConfig",
    "CheckpointManager",
    "ModelOptimState",
    "find_latest",
    "list_checkpoints",
    "step_dir_name",
    "rng_state",
    "set_rng_state",
    "COMMIT",
    "download_dir",
    "check_shapes",
]

log = logging.getLogger("pipeline.train")

COMMIT = "COMMIT"
_STEP_RE = re.compile(r"^step_(\d{6,})$")


@dataclass(kw_only=True)
class CheckpointConfig:
    enable: bool = field(default=True, metadata={"help": "save checkpoints"})
    dir: str = field(default="", metadata={"help": "checkpoint root URL (empty: <run_dir>/checkpoints); gs:// ok"})
    save_every: int = field(default=500, metadata={"help": "save every N steps (and always on stop)"})
    keep_last: int = field(default=3, metadata={"help": "keep the newest N committed checkpoints (0: all)"})
    async_save: bool = field(default=False, metadata={"help": "dcp.async_save (overlaps the write with training)"})
    staging_dir: str = field(default="", metadata={"help": "local staging dir for remote URLs (empty: temp)"})

    def __post_init__(self) -> None:
        if self.save_every < 1:
            raise ConfigError("save_every", self.save_every, "must be >= 1")
        if self.keep_last < 0:
            raise ConfigError("keep_last", self.keep_last, "must be >= 0")


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def _rank_file(rank: int, world: int) -> str:
    return f"ranks/rank_{rank:05d}-of-{world:05d}.json"


# -- RNG ------------------------------------------------------------------------------------------
def rng_state() -> dict:
    """Python, numpy and torch (CPU + current CUDA device) RNG states, JSON-able."""
    state = {
        "python": _b64(random.getstate()),
        "numpy": _b64(np.random.get_state()),
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = base64.b64encode(torch.cuda.get_rng_state().numpy().tobytes()).decode()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_unb64(state["python"]))
    np.random.set_state(_unb64(state["numpy"]))
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["cuda"])), dtype=torch.uint8))


def _b64(obj: Any) -> str:
    import pickle

    return base64.b64encode(pickle.dumps(obj)).decode()


def _unb64(text: str) -> Any:
    import pickle

    return pickle.loads(base64.b64decode(text))  # our own file, written by rng_state()


# -- model + optimizer as one DCP Stateful --------------------------------------------------------
class ModelOptimState:
    """``Stateful`` for DCP: FQN-keyed model + optimizer state (sharded DTensors under FSDP2)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
        self.model = model
        self.optimizer = optimizer

    def state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

        if self.optimizer is None:
            return {"model": get_model_state_dict(self.model)}
        msd, osd = get_state_dict(self.model, self.optimizer)
        return {"model": msd, "optim": osd}

    def load_state_dict(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

        if self.optimizer is None:
            set_model_state_dict(self.model, state["model"])
            return
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])


# -- listing --------------------------------------------------------------------------------------
def list_checkpoints(root: str) -> list[tuple[int, str, bool]]:
    """``(step, url, committed)`` of every ``step_*`` dir under ``root``, by step."""
    out = []
    for url in fs.listdir(root):
        m = _STEP_RE.match(fs.basename(url))
        if m:
            out.append((int(m.group(1)), url, fs.exists(fs.join(url, COMMIT))))
    return sorted(out)


def find_latest(root: str, *, clean_partial: bool = False) -> str | None:
    """URL of the newest committed checkpoint under ``root``; partial ones are reported (and removed)."""
    latest = None
    for _step, url, committed in list_checkpoints(root):
        if committed:
            latest = url
            continue
        log.warning("ignoring partial checkpoint %s (no %s marker)%s", url, COMMIT,
                    "; removing it" if clean_partial else "")
        if clean_partial:
            fs.remove(url, recursive=True)
    return latest


class CheckpointManager:
    """Saves and restores a run. ``states`` holds the Stateful objects by key:

    - ``"app"``: :class:`ModelOptimState` (DCP, sharded)
    - ``"train"``: JSON-able state shared by all ranks (written by rank 0)
    - ``"data"``: per-rank JSON-able data-stream state
    ``files`` maps extra file names (config.yaml, model_config.json, ...) to their text.
    """

    def __init__(self, cfg: CheckpointConfig, *, root: str, states: dict[str, Any], files: dict[str, str],
                 hooks: TrainHooks | None = None) -> None:
        self.cfg = cfg
        self.root = root
        self.states = states
        self.files = files
        self.hooks = hooks or TrainHooks()
        self.rank, self.world = rank_and_world()
        self._pending: tuple[Any, int, str, str | None] | None = None
        self._async_pg = None
        self.last_saved: str | None = None
        if fs.is_remote(root):
            _sweep_stale_staging(self._staging_base())

    # public API: each checks `enable` once, then calls a hook
    def should_save(self, step: int, *, force: bool = False) -> bool:
        return self.cfg.enable and (force or step % self.cfg.save_every == 0)

    def save(self, step: int, *, force: bool = False) -> str | None:
        if not self.should_save(step, force=force):
            return None
        if self.last_saved and fs.basename(self.last_saved) == step_dir_name(step):
            return self.last_saved
        self.wait()
        return self._save(step)

    def wait(self) -> None:
        """Finish an in-flight async save (upload, barrier, COMMIT)."""
        if self._pending is not None:
            future, step, url, staging = self._pending
            self._pending = None
            future.result()
            self._finalize(step, url, staging)

    def load(self, url: str) -> dict:
        """Restore every state from checkpoint ``url``; returns its train_state dict."""
        return self._load(url)

    def close(self) -> None:
        self.wait()
        if self._async_pg is not None:
            dist.destroy_process_group(self._async_pg)
            self._async_pg = None
        shutil.rmtree(os.path.join(self._staging_base(), f"vla-ckpt-staging-{os.getpid()}"), ignore_errors=True)

    # -- save -------------------------------------------------------------------------------------
    def _save(self, step: int) -> str:
        import torch.distributed.checkpoint as dcp

        url = fs.join(self.root, step_dir_name(step))
        if self.rank == 0 and fs.exists(url):
            fs.remove(url, recursive=True)  # an old partial dir of the same step
        barrier()
        staging = self._staging_dir(step) if fs.is_remote(url) else None
        target = staging or url
        if self.rank == 0:
            fs.makedirs(target)
        barrier()
        writer = dcp.FileSystemWriter(target)
        app = {"app": self.states["app"]}
        if self.cfg.async_save:
            future = dcp.async_save(app, storage_writer=writer, process_group=self._async_group())
            self._pending = (future, step, url, staging)
            self.hooks.after_shards(step)
            self._write_small(step, target)
            return url
        dcp.save(app, storage_writer=writer)
        self.hooks.after_shards(step)
        self._write_small(step, target)
        self._finalize(step, url, staging)
        return url

    def _write_small(self, step: int, target: str) -> None:
        data = {"data": self.states["data"].state_dict(), "rng": rng_state(), "rank": self.rank,
                "world_size": self.world}
        fs.write_json(fs.join(target, _rank_file(self.rank, self.world)), data)
        if self.rank == 0:
            train = dict(self.states["train"].state_dict(), world_size=self.world, step=step)
            fs.write_json(fs.join(target, "train_state.json"), train)
            for name, text in self.files.items():
                fs.write_text(fs.join(target, name), text)

    def _finalize(self, step: int, url: str, staging: str | None) -> None:
        if staging is not None:
            fs.copy_dir(staging, url)
        self.hooks.before_commit(step)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        barrier()  # every rank's files are in place
        if self.rank == 0:
            fs.write_text(fs.join(url, COMMIT), f"step {step}\n")
            self._prune()
        barrier()
        self.last_saved = url
        log.info("saved checkpoint %s", url)

    def _prune(self) -> None:
        if not self.cfg.keep_last:
            return
        committed = [u for _, u, ok in list_checkpoints(self.root) if ok]
        for url in committed[: -self.cfg.keep_last]:
            fs.remove(fs.join(url, COMMIT))  # uncommit first: a crash mid-delete leaves a partial dir
            fs.remove(url, recursive=True)

    def _staging_base(self) -> str:
        return self.cfg.staging_dir or tempfile.gettempdir()

    def _staging_dir(self, step: int) -> str:
        base = self._staging_base()
        path = os.path.join(base, f"vla-ckpt-staging-{os.getpid()}", f"rank{self.rank}", step_dir_name(step))
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path, exist_ok=True)
        return path

    def _async_group(self):
        if self._async_pg is None and dist.is_initialized():
            self._async_pg = dist.new_group(backend="gloo")
        return self._async_pg

    # -- load -------------------------------------------------------------------------------------
    def _load(self, url: str) -> dict:
        import torch.distributed.checkpoint as dcp

        if not fs.exists(fs.join(url, COMMIT)):
            raise UserError(f"checkpoint {url}: no {COMMIT} marker (missing or partial checkpoint)")
        local, tmp = (download_dir(url), True) if fs.is_remote(url) else (url, False)
        try:
            train = fs.read_json(os.path.join(local, "train_state.json"))
            saved_world = int(train.get("world_size", self.world))
            check_shapes(local, self.states["app"].model, url)
            self._load_rank_state(local, saved_world)
            dcp.load({"app": self.states["app"]}, storage_reader=dcp.FileSystemReader(local))
            self.states["train"].load_state_dict(train)
        finally:
            if tmp:
                shutil.rmtree(local, ignore_errors=True)
        log.info("resumed from %s (step %s, saved at world size %d)", url, train.get("step"), saved_world)
        return train

    def _load_rank_state(self, local: str, saved_world: int) -> None:
        """Data stream first (so it can start prefetching), then RNG."""
        if saved_world == self.world:
            state = fs.read_json(os.path.join(local, _rank_file(self.rank, self.world)))
            self.states["data"].load_state_dict(state["data"])
            set_rng_state(state["rng"])
            return
        log.warning("checkpoint was saved at world size %d, now %d: model and optimizer are resharded; "
                    "the data stream resumes at the saved global position, RNG restarts from the seed",
                    saved_world, self.world)
        state = fs.read_json(os.path.join(local, _rank_file(0, saved_world)))
        self.states["data"].load_state_dict(state["data"])


def _sweep_stale_staging(base: str) -> None:
    """Remove staging dirs of processes that no longer run (a save killed before its upload)."""
    try:
        names = [n for n in os.listdir(base) if n.startswith("vla-ckpt-staging-")]
    except OSError:
        return
    for name in names:
        pid = name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            log.info("removing staging dir %s of a finished process", os.path.join(base, name))
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
        except OSError:
            pass  # alive under another user


def check_shapes(local: str, model: torch.nn.Module, url: str) -> None:
    """UserError when the checkpoint's model tensors do not fit ``model`` (another architecture)."""
    import torch.distributed.checkpoint as dcp

    saved = dcp.FileSystemReader(local).read_metadata().state_dict_metadata
    prefix = "app.model."
    saved_shapes = {k[len(prefix):]: tuple(v.size) for k, v in saved.items()
                    if k.startswith(prefix) and hasattr(v, "size")}
    ours = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    missing = sorted(set(ours) - set(saved_shapes))
    wrong = [f"{k} {list(saved_shapes[k])} vs {list(ours[k])}" for k in sorted(ours)
             if k in saved_shapes and saved_shapes[k] != ours[k]]
    if missing or wrong:
        what = f"{len(wrong)} tensors differ in shape (e.g. {wrong[0]})" if wrong else \
            f"{len(missing)} tensors missing (e.g. {missing[0]})"
        raise UserError(f"checkpoint {url} does not fit this model: {what}; it was saved from another "
                        "model preset or code version")


def download_dir(url: str) -> str:
    """A local temp copy of checkpoint ``url`` (the caller removes it)."""
    local = tempfile.mkdtemp(prefix="vla-ckpt-load-")
    try:
        fs.copy_dir(url, local)
    except BaseException:
        shutil.rmtree(local, ignore_errors=True)
        raise
    return local
