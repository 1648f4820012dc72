"""Scenario "secrets": planted credentials never show up in any output, log or saved file.

Fake credentials (random, fresh per run) are planted in the environment (GOOGLE_OAUTH_ACCESS_TOKEN,
HF_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY), in a fake service-account file
(GOOGLE_APPLICATION_CREDENTIALS -> JSON with a "private_key"), and in config values: a URL with
userinfo (``gs://svc:TOKEN@bucket/...``), a wrong-typed value, an unknown ``*_token`` key, a config
file with a ``wandb_api_key`` key. Then real commands run:

- ``vla train`` (tiny model, synthetic data, checkpoint uploaded to gs:// on a local GCS emulator,
  TensorBoard and an offline W&B run on) as a subprocess;
- error paths: unreachable storage, wrong-typed value (a ``ya29.`` token typed only on the command line), unknown key, bad config file, malformed YAML
  (in-process through ``pipeline.cli.main`` in quick mode, as subprocesses in full mode);
- full mode also: ``vla curate`` on a tiny fixture with the token-bearing environment (its output and
  the Ray session logs are searched too), and a
  checkpoint on gs:// without the emulator (the fake credentials file is really loaded).

Every output is searched for every planted secret: stdout/stderr, every file of the run dir
(metrics.jsonl, TensorBoard events, the W&B run under run_dir/wandb, config.yaml, summary.json,
checkpoint files), the gs:// checkpoint (config.yaml etc.), and the curated output
(manifest.json, quarantine.json, ...).
A trial also fails when redaction over-reaches (the saved config lost its non-secret values).
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import secrets as _rand
import subprocess
import sys
import time
from typing import Any

from tests.faults.suite.core import REPO_ROOT, FaultContext, ScenarioResult, patched_env

_TRAIN = ["data.source=synthetic", "per_device_batch=2", "metrics.progress=false", "metrics.tensorboard=true",
          "metrics.wandb=true", "metrics.wandb_mode=offline",
          "stop.accuracy=2.0", "model.llm_num_layers=1", "model.vision_depth=1", "stop.max_steps=1",
          "checkpoint.save_every=1"]


def plant(workdir: str) -> tuple[dict[str, str], dict[str, str]]:
    """(environment to add, {label: secret needle}) with fresh random fake credentials."""
    core = _rand.token_hex(12)
    oauth = f"ya29.FAKE{core}"
    hf = f"hf_FAKE{_rand.token_hex(14)}"
    wandb = _rand.token_hex(20)
    aws = _rand.token_urlsafe(30)
    pem_body = _rand.token_urlsafe(48)
    key = f"-----BEGIN PRIVATE KEY-----\nMIIE{pem_body}\n-----END PRIVATE KEY-----\n"
    url_token = f"ya29.URL{_rand.token_hex(12)}"
    cfg_token = f"cfgtok{_rand.token_hex(12)}"
    cli_token = f"ya29.CLI{_rand.token_hex(12)}"  # typed on the command line only (not in the environment)
    creds = os.path.join(workdir, "fake-sa.json")
    with open(creds, "w") as f:
        json.dump({"type": "service_account", "project_id": "fake-project", "private_key_id": _rand.token_hex(20),
                   "private_key": key, "client_email": "fake@fake-project.iam.gserviceaccount.com",
                   "client_id": "1234567890", "token_uri": "https://oauth2.googleapis.com/token"}, f)
    env = {"GOOGLE_OAUTH_ACCESS_TOKEN": oauth, "HF_TOKEN": hf, "WANDB_API_KEY": wandb,
           "AWS_SECRET_ACCESS_KEY": aws, "GOOGLE_APPLICATION_CREDENTIALS": creds, "VLA_FAKE_CONFIG_TOKEN": cfg_token}
    needles = {"oauth": core, "hf": hf[3:], "wandb": wandb, "aws": aws, "private_key": pem_body,
               "url_token": url_token[4:], "config_token": cfg_token, "cli_token": cli_token[4:]}
    return env, needles


def _leaks(text: str, needles: dict[str, str], where: str) -> list[str]:
    return [f"{label} in {where}" for label, n in needles.items() if n in text]


def _scan_tree(root: str, needles: dict[str, str]) -> tuple[list[str], int]:
    """Leaks in every file under a local dir (bytes search: binary TensorBoard files included)."""
    leaks, files = [], 0
    for d, _, names in os.walk(root):
        for name in names:
            path = os.path.join(d, name)
            if name == "fake-sa.json":
                continue  # the planted file itself
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            files += 1
            leaks += [f"{label} in {os.path.relpath(path, root)}" for label, n in needles.items()
                      if n.encode() in data]
    return leaks, files


def _scan_remote(url: str, needles: dict[str, str]) -> tuple[list[str], int]:
    from pipeline import fs

    fsys, path = fs.get_fs(url)
    leaks, files = [], 0
    for remote in fsys.find(path):
        files += 1
        data = fsys.cat_file(remote)
        leaks += [f"{label} in {remote}" for label, n in needles.items() if n.encode() in data]
    return leaks, files


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT", "TORCHELASTIC_RUN_ID")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="3", **extra)
    return env


def _vla(args: list[str], env: dict[str, str], timeout: int = 240) -> tuple[int, str]:
    p = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], env=_child_env(env), cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def _vla_inprocess(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """``pipeline.cli.main(args)`` with stdout/stderr and every log record captured."""
    import logging

    from pipeline.cli import main

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with patched_env(env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = main(args)
    finally:
        root.removeHandler(handler)
    return code, out.getvalue()


def _error_paths(workdir: str, env: dict[str, str], needles: dict[str, str], url_token: str) -> list[tuple]:
    """(name, args, config file text or None) of commands that must fail with exit 2 and one line."""
    bad_yaml = f"stop:\n  max_steps: 2\nwandb_api_key: {env['WANDB_API_KEY']}\n"
    malformed = f"stop: [unclosed\nhf_token: {env['HF_TOKEN']}\n"
    return [
        ("unreachable_storage", ["train", *_TRAIN, f"run_dir={workdir}/err_run",
                                 f"checkpoint.dir=gs://svc:{url_token}@test-bucket/ckpt"], None),
        ("wrong_type", ["train", f"stop.max_steps=ya29.{needles['cli_token']}"], None),
        ("unknown_token_key", ["train", f"hf_token={env['HF_TOKEN']}", f"data.api_token={needles['config_token']}"],
         None),
        ("unknown_key_in_file", ["train"], bad_yaml),
        ("malformed_yaml", ["train"], malformed),
    ]


def run(ctx: FaultContext) -> ScenarioResult:
    from pipeline import fs
    from tests.support.gcs_emulator import GcsEmulator

    result = ScenarioResult(scenario="secrets")
    env, needles = plant(ctx.workdir)
    url_token = "ya29.URL" + needles["url_token"]
    emu = GcsEmulator()
    emu.start()
    env_emu = dict(env, STORAGE_EMULATOR_HOST=emu.host)
    checked: dict[str, Any] = {}
    try:
        # 1. a real training run, checkpoint uploaded to gs://
        run_dir = ctx.path("train_run", "x")[:-2]
        ckpt = "gs://test-bucket/secrets/ckpt"
        t0 = time.time()
        code, out = _vla(["train", *_TRAIN, f"run_dir={run_dir}", f"checkpoint.dir={ckpt}",
                          f"data.data_root=gs://svc:{url_token}@test-bucket/curated"], env_emu)
        leaks = _leaks(out, needles, "train output")
        tree_leaks, n_local = _scan_tree(run_dir, needles)
        with patched_env({"STORAGE_EMULATOR_HOST": emu.host}):
            remote_leaks, n_remote = _scan_remote(ckpt, needles)
            saved = fs.read_text(fs.join(ckpt, "step_000001", "config.yaml")) if code == 0 else ""
        problems = leaks + tree_leaks + remote_leaks
        wandb_runs = glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb"))
        if code == 0 and len(wandb_runs) != 1:
            problems.append(f"expected one offline W&B run under {run_dir}/wandb, found {len(wandb_runs)}")
        if code != 0:
            problems.append(f"train failed (exit {code}): {out.strip().splitlines()[-1:] if out.strip() else ''}")
        elif "gs://svc:[REDACTED]@test-bucket/curated" not in saved or f"run_dir: {run_dir}" not in saved:
            problems.append("saved config.yaml lost its non-secret values (over-redaction) or kept the URL token")
        checked["train"] = {"exit": code, "local_files": n_local, "remote_files": n_remote,
                            "wandb_runs": len(wandb_runs), "s": round(time.time() - t0, 1)}
        result.trial(not problems, "train: " + "; ".join(problems[:5]))

        # 2. error paths: exit 2, one error line, nothing secret in it
        runner = _vla_inprocess if ctx.quick else _vla
        dead = {"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9", "VLA_STORAGE_RETRY_MAX_S": "1"}
        for name, args, file_text in _error_paths(ctx.workdir, env, needles, url_token):
            if file_text is not None:
                path = ctx.path(f"{name}.yaml")
                with open(path, "w") as f:
                    f.write(file_text)
                args = [*args, "--config", path]
            code, out = runner(args, dict(env, **dead))
            errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
            problems = _leaks(out, needles, f"{name} output")
            if code != 2 or len(errors) != 1:
                problems.append(f"expected exit 2 and one error line, got exit {code}: {out.strip()[-300:]!r}")
            checked[name] = {"exit": code, "error": errors[0][:240] if errors else ""}
            result.trial(not problems, f"{name}: " + "; ".join(problems[:5]))

        if not ctx.quick:
            _full_only(ctx, result, env, env_emu, needles, checked)
    finally:
        emu.close()
    result.details["checked"] = checked
    result.details["planted"] = sorted(env) + ["data.data_root userinfo", "config values/keys"]
    return result


def _full_only(ctx: FaultContext, result: ScenarioResult, env: dict, env_emu: dict, needles: dict,
               checked: dict) -> None:
    # curate a tiny fixture with the secret-bearing environment
    fixture = ctx.path("fixture", "x")[:-2]
    out_dir = ctx.path("curated", "x")[:-2]
    t0 = time.time()
    mixture = ctx.path("bridge_only.yaml")
    with open(mixture, "w") as f:
        f.write("name: bridge_only\ndescription: secrets scenario\ndatasets:\n  bridge_orig: 1.0\n")
    code, out = _vla(["fixture", f"out={fixture}", "datasets=[bridge_orig]", "episodes=3", "steps=4-6",
                      "image_size=16"], env)
    if code == 0:
        code, out2 = _vla(["curate", f"mixture={mixture}", f"source={fixture}", f"out={out_dir}", "workers=1",
                           "ray.num_cpus=1", "progress=false"], env, timeout=300)
        out += out2
    problems = _leaks(out, needles, "curate output")
    tree, n = _scan_tree(out_dir, needles)
    problems += tree
    ray_files = 0
    ray_root = "/tmp/ray"  # the local Ray cluster's session logs (workers run with the planted environment)
    sessions = [os.path.join(ray_root, d) for d in (os.listdir(ray_root) if os.path.isdir(ray_root) else [])
                if d.startswith("session_2") and os.path.getmtime(os.path.join(ray_root, d)) >= t0 - 1]
    for session in sessions:
        leaks, k = _scan_tree(os.path.join(session, "logs"), needles)
        problems += [f"{leak} (Ray session {os.path.basename(session)})" for leak in leaks]
        ray_files += k
    if code != 0:
        problems.append(f"fixture/curate failed (exit {code}): {out.strip()[-300:]!r}")
    checked["curate"] = {"exit": code, "files": n, "ray_log_files": ray_files, "s": round(time.time() - t0, 1)}
    result.trial(not problems, "curate: " + "; ".join(problems[:5]))

    # gs:// without the emulator: the fake service-account file is really loaded (and fails)
    t0 = time.time()
    env_real = {k: v for k, v in env.items()}
    env_real["VLA_STORAGE_RETRY_MAX_S"] = "1"
    env_real["STORAGE_EMULATOR_HOST"] = ""
    code, out = _vla(["train", *_TRAIN, f"run_dir={ctx.workdir}/real_gcs_run",
                      "checkpoint.dir=gs://vla-fake-bucket-no-such/ckpt"], env_real, timeout=180)
    problems = _leaks(out, needles, "real-gcs output")
    if code == 0:
        problems.append("training with a fake service account on real gs:// succeeded?")
    checked["real_gcs_fake_credentials"] = {"exit": code, "last_line": out.strip().splitlines()[-1][:240] if out.strip() else "",
                                            "s": round(time.time() - t0, 1)}
    result.trial(not problems, "real gcs: " + "; ".join(problems[:5]))
