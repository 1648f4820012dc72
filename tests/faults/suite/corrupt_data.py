"""Scenario ``corrupt_data``: corrupted TFRecord shards, before curation and after it.

Part 1 (curation). A copy of a fixture dataset (``DATASET``, 3 shards) gets one fault per kind,
each in its own record (``SOURCE_FAULTS``): a flipped payload byte (CRC mismatch), a shard cut in
the middle of its last record, an undecodable JPEG in the camera feature of a valid record, a NaN in
the raw action, and a record without a feature the spec declares. A real ``curate`` runs over it.
Each kind is one trial: ``quarantine.json`` counts it under its reason with an example naming the
shard and the record index, and every other episode is curated (kept = source - faults).

Part 2 (training stream). The curated shards are corrupted afterwards (``STREAM_FAULTS``): a bad
JPEG in a valid record, a flipped byte, a truncated shard. The stream is read for one epoch twice:
with a record index built before the corruption (the faults hit at read time: ``corrupt_episodes``,
``replaced_samples``) and with a fresh index (the scan leaves them out: ``skipped_records``); bad
images are ``bad_images`` both times. Each kind is one trial: nothing raises, the counter moves and
a warning names the shard and the record.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil

import numpy as np

from tests.faults.suite.core import FaultContext, ScenarioResult, WarningLines

__all__ = ["DATASET", "SOURCE_FAULTS", "STREAM_FAULTS", "run", "make_faulty_source", "corrupt_curated"]

DATASET = "fractal20220817_data"
BAD_JPEG = b"\xff\xd8\xff\xe0 not really a jpeg"
DROPPED_FEATURE = "steps/reward"
# kind -> (source shard, record or -1 = last, expected quarantine reason)
SOURCE_FAULTS = {
    "bad_jpeg": (0, 1, "undecodable_image"),
    "nan_action": (0, 2, "nan_inf"),
    "missing_feature": (1, 0, "missing_feature"),
    "flipped_bytes": (1, 2, "corrupt_record"),
    "truncated_shard": (2, -1, "corrupt_record"),
}
# kind -> curated shard (record 0 flipped, last record truncated, record 0's images replaced)
STREAM_FAULTS = {"stream_bad_jpeg": 0, "stream_flipped_bytes": 1, "stream_truncated_shard": 2}


# ------------------------------------------------------------------------------------------ byte surgery
def _split_records(data: bytes) -> list[bytes]:
    from pipeline.data.io.tfrecord import read_records

    return list(read_records(io.BytesIO(data)))


def _flip(framed: bytes, offset: int) -> bytes:
    """Flip one payload byte of the first record of ``framed`` (12-byte header first)."""
    out = bytearray(framed)
    out[12 + offset] ^= 0xFF
    return bytes(out)


def _without(record: bytes, key: str) -> bytes:
    from pipeline.data.io.example import decode_example, encode_example

    ex = decode_example(record)
    del ex[key]
    return encode_example(ex)


def _with_images(record: bytes, key: str, data: bytes) -> bytes:
    from pipeline.data.io.example import decode_example, encode_example

    ex = decode_example(record)
    ex[key] = [data] * len(ex[key])
    return encode_example(ex)


def make_faulty_source(raw: str, root: str) -> dict[str, tuple[str, int]]:
    """Copy ``DATASET`` from ``raw`` to ``root`` as 3 shards with ``SOURCE_FAULTS``; returns kind -> (shard, record)."""
    from pipeline import fs
    from pipeline.data.io.builder import open_builder, shard_filename
    from pipeline.data.io.rlds_reader import read_episodes
    from pipeline.data.io.rlds_writer import encode_episode
    from pipeline.data.io.tfrecord import frame_record

    src = open_builder(fs.join(raw, DATASET))
    eps = [e for s in src.splits["train"] for e in read_episodes(s.url, src.features)]
    shards = [list(part) for part in np.array_split(np.arange(len(eps)), 3)]
    where = {k: (shard, rec if rec >= 0 else len(shards[shard]) - 1) for k, (shard, rec, _) in SOURCE_FAULTS.items()}
    e = eps[shards[where["bad_jpeg"][0]][where["bad_jpeg"][1]]]
    e["steps"]["observation"]["image"][:] = [BAD_JPEG] * len(e["steps"]["observation"]["image"])
    e = eps[shards[where["nan_action"][0]][where["nan_action"][1]]]
    e["steps"]["action"]["world_vector"][min(1, len(e["steps"]["is_first"]) - 1), 0] = np.nan
    out_dir = fs.join(root, DATASET, src.version)
    names = []
    for i, idx in enumerate(shards):
        records = [encode_episode(eps[j], src.features) for j in idx]
        if where["missing_feature"][0] == i:
            records[where["missing_feature"][1]] = _without(records[where["missing_feature"][1]], DROPPED_FEATURE)
        framed = [frame_record(r) for r in records]
        if where["flipped_bytes"][0] == i:
            framed[where["flipped_bytes"][1]] = _flip(framed[where["flipped_bytes"][1]], len(records[0]) // 2)
        if where["truncated_shard"][0] == i:
            framed[-1] = framed[-1][: len(framed[-1]) // 2]
        name = shard_filename(DATASET, "train", i, len(shards))
        fs.write_bytes(fs.join(out_dir, name), b"".join(framed))
        names.append(name)
    info = fs.read_json(fs.join(src.url, "dataset_info.json"))
    info["splits"] = [{**s, "shardLengths": [str(len(x)) for x in shards]} for s in info["splits"] if s["name"] == "train"]
    fs.write_json(fs.join(out_dir, "dataset_info.json"), info)
    fs.write_text(fs.join(out_dir, "features.json"), fs.read_text(fs.join(src.url, "features.json")))
    return {k: (names[s], r) for k, (s, r) in where.items()}


def corrupt_curated(shard_paths: list[str], kinds: tuple[str, ...]) -> dict[str, tuple[str, int]]:
    """Apply ``STREAM_FAULTS`` of ``kinds`` to local curated shards; returns kind -> (shard, record)."""
    from pipeline.data.io.tfrecord import frame_record

    done = {}
    for kind in kinds:
        path = shard_paths[STREAM_FAULTS[kind]]
        with open(path, "rb") as f:
            records = _split_records(f.read())
        framed = [frame_record(r) for r in records]
        if kind == "stream_bad_jpeg":
            framed[0] = frame_record(_with_images(records[0], "steps/observation/image_primary", BAD_JPEG))
            record = 0
        elif kind == "stream_flipped_bytes":
            framed[0] = _flip(framed[0], len(records[0]) // 2)
            record = 0
        else:
            record = len(framed) - 1
            framed[-1] = framed[-1][: len(framed[-1]) // 2]
        with open(path, "wb") as f:
            f.write(b"".join(framed))
        done[kind] = (os.path.basename(path), record)
    return done


# ------------------------------------------------------------------------------------------ part 1
def _curation_trials(ctx: FaultContext, result: ScenarioResult, raw: str) -> str:
    from pipeline.config import load_config
    from pipeline.data.curate.job import CurateConfig, curate
    from pipeline.data.io.builder import open_builder
    from pipeline.data.manifest import CuratedDataset
    from tests.support.ray_session import ray_session

    faulty = ctx.path("faulty")
    injected = make_faulty_source(raw, faulty)
    n_source = open_builder(os.path.join(faulty, DATASET)).num_episodes("train")
    mixture = ctx.path("corrupt_mix.yaml")
    with open(mixture, "w") as f:
        f.write(f"name: corrupt_mix\ndatasets:\n  {DATASET}: 1.0\n")
    out = ctx.path("curated")
    with ray_session():
        [res] = curate(load_config(CurateConfig, [f"mixture={mixture}", f"source={faulty}", f"out={out}",
                                                  "progress=false", "num_shards=3"]))
    ddir = CuratedDataset(out, DATASET).url
    with open(os.path.join(ddir, "quarantine.json")) as fh:
        q = json.load(fh)
    reasons = {k: v["episodes"] for k, v in q["reasons"].items()}
    result.details["quarantine_reasons"] = reasons
    result.details["source_episodes"] = n_source
    result.details["curated_episodes"] = res["manifest"]["total_episodes"]
    kept_ok = res["manifest"]["total_episodes"] == q["episodes_kept"] == n_source - len(SOURCE_FAULTS)
    expected = {}
    for _, _, reason in SOURCE_FAULTS.values():
        expected[reason] = expected.get(reason, 0) + 1
    for kind, (_, _, reason) in SOURCE_FAULTS.items():
        shard, record = injected[kind]
        examples = q["reasons"].get(reason, {}).get("examples", [])
        named = any(os.path.basename(x["source_file"]) == shard and x["source_index"] == record for x in examples)
        failures = []
        if reasons.get(reason) != expected[reason]:
            failures.append(f"{kind}: quarantine counts {reasons.get(reason, 0)} under {reason}, expected {expected[reason]}")
        if not named:
            failures.append(f"{kind}: no {reason} example names {shard} record {record} ({examples})")
        if not kept_ok:
            failures.append(f"{kind}: curated {res['manifest']['total_episodes']} of {n_source} episodes, "
                            f"expected {n_source - len(SOURCE_FAULTS)} (the rest of the dataset)")
        ctx.log(f"{kind}: {shard} record {record} -> {reason} {'ok' if not failures else failures}")
        result.details.setdefault("injected", {})[kind] = f"{shard} record {record} -> {reason}"
        result.trial(not failures, "; ".join(failures))
    return out


# ------------------------------------------------------------------------------------------ part 2
class _Builder:
    """Prompt-builder stand-in (the stream's data path is what is under test)."""

    def __call__(self, sample: dict) -> dict:
        ids = np.concatenate([[1], np.round((np.asarray(sample["action"]) + 1) * 100).astype(np.int64), [2]])
        return {**sample, "input_ids": ids, "labels": ids.copy()}


def _read_epoch(out: str, mixture: str, cache: str) -> tuple[dict, list[str], int]:
    """One epoch of the training stream: (stats, warnings, batches); raises if the stream does."""
    from pipeline.data.mixture.files import load_mixture
    from pipeline.data.stream.training_stream import StreamConfig, TrainingStream

    handler = WarningLines()
    loggers = [logging.getLogger("pipeline.stream"), logging.getLogger("pipeline.data.io")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        cfg = StreamConfig(num_workers=0, buffer_bytes=2**20, index_cache_dir=cache, io_threads=2)
        with TrainingStream(cfg, data_root=out, mixture=load_mixture(mixture), batch_size=2, seed=0, resolution=16,
                            rank=0, world_size=1, prompt_builder=_Builder(), pad_id=0) as stream:
            steps = stream.epoch_length() // stream.batch_size
            for _ in range(steps):
                batch = next(stream)
                assert batch["pixel_values"].shape == (2, 3, 16, 16)
            return dict(stream.stats), handler.lines, steps
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


def _stream_trials(ctx: FaultContext, result: ScenarioResult, out: str) -> None:
    from pipeline.data.manifest import CuratedDataset
    from pipeline.data.stream.source import CuratedSource

    ddir = CuratedDataset(out, DATASET).url
    with open(os.path.join(ddir, "manifest.json")) as fh:
        manifest = json.load(fh)
    paths = [os.path.join(ddir, s["file"]) for s in manifest["shards"]]
    mixture = ctx.path("corrupt_mix.yaml")
    warm = ctx.path("index_before")
    injected = corrupt_curated(paths, ("stream_bad_jpeg",))  # changes record sizes: before the index
    src = CuratedSource(CuratedDataset(out, DATASET), index_cache_dir=warm)  # index built before the other faults
    lengths = {os.path.basename(u): f.tolist() for u, f in zip(src.shard_urls, src.layout.frames)}
    injected.update(corrupt_curated(paths, ("stream_flipped_bytes", "stream_truncated_shard")))
    runs = {}
    for label, cache in (("index_before_fault", warm), ("fresh_index", ctx.path("index_after"))):
        try:
            runs[label] = _read_epoch(out, mixture, cache)
        except Exception as e:  # the stream must not raise on corrupt data
            runs[label] = ({}, [f"CRASH {type(e).__name__}: {str(e).splitlines()[0][:200]}"], 0)
    result.details["stream"] = {label: {k: v for k, v in stats.items() if k != "peak_cache_bytes"} | {"batches": n}
                                for label, (stats, _, n) in runs.items()}
    lost = sum(lengths[shard][rec] for kind, (shard, rec) in injected.items() if kind != "stream_bad_jpeg")
    result.samples_lost = lost
    result.samples_repeated = runs["index_before_fault"][0].get("replaced_samples", 0)
    for kind, (shard, record) in injected.items():
        failures = []
        for label, (stats, lines, _) in runs.items():
            crash = [x for x in lines if x.startswith("CRASH")]
            if crash:
                failures.append(f"{kind} [{label}]: {crash[0]}")
                continue
            named = [x for x in lines if shard in x and f"record {record}" in x]
            if kind == "stream_bad_jpeg":
                counter, need = "bad_images", lengths[shard][record]
            elif label == "index_before_fault":
                counter, need = "corrupt_episodes", 2
            else:
                counter, need = "skipped_records", 2
            if stats.get(counter, 0) < need:
                failures.append(f"{kind} [{label}]: stats[{counter}]={stats.get(counter, 0)}, expected >= {need}")
            if not named:
                failures.append(f"{kind} [{label}]: no warning names {shard} record {record}")
        ctx.log(f"{kind}: {shard} record {record} {'ok' if not failures else failures}")
        result.details.setdefault("injected", {})[kind] = f"{shard} record {record}"
        result.trial(not failures, "; ".join(failures))


def run(ctx: FaultContext) -> ScenarioResult:
    from pipeline.config import load_config
    from pipeline.data.fixtures.datasets import FixtureConfig, run_fixture

    result = ScenarioResult(scenario="corrupt_data")
    raw = ctx.path("raw")
    episodes = 15 if ctx.quick else 30
    with contextlib.redirect_stdout(io.StringIO()):  # its table would mix with the JSON lines
        run_fixture(load_config(FixtureConfig, [f"out={raw}", f"datasets=[{DATASET}]", f"episodes={episodes}", "shards=1",
                                                "steps=4-6", "image_size=16", f"seed={ctx.seed}"]))
    out = _curation_trials(ctx, result, raw)
    _stream_trials(ctx, result, out)
    shutil.rmtree(raw, ignore_errors=True)
    return result
