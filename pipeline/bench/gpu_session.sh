#!/usr/bin/env bash
# ONE script for a session with a GPU (one H200: torch 2.11, Python 3.12, transformers 5.17,
# timm 1.0.29; no omegaconf, ray, tensorflow, gcsfs, pytest, and no package registry there).
# Every check of the GPU training issue, each under its own `timeout`, JSON lines under $OUT.
#
# 1. On the CPU machine (registry, project venv), from the repository root:
#      bash pipeline/bench/gpu_prepare.sh        # -> build/gpu_bundle/{wheels,curated}
#    The wheels are omegaconf + its antlr4 runtime (`pip wheel --no-deps omegaconf
#    antlr4-python3-runtime -w wheels/`) and pytest with its dependencies; all pure Python,
#    so this script unzips them onto PYTHONPATH (no pip, no registry needed on the GPU machine).
# 2. On the device machine, through the device tool (build/ is git-ignored, so carry it):
#      run(command="bash pipeline/bench/gpu_session.sh", carry=["build/gpu_bundle"], timeout_s=600)
#    A call may run 600 s at most: the steps share BUDGET_S (default 570 s) and each gets
#    min(its cap, what is left); a step that no longer fits is logged as skipped. To split the work
#    over two calls: STEPS="probe bench" first, then STEPS="train_smoke tests".
#
# Steps (STEPS, default in priority order "probe bench train_smoke tests"):
#   probe        python -m pipeline.bench.torch_api: the torch APIs the step uses, and FSDP2's
#                output walk on this torch (probe.json)
#   bench        python -m pipeline.bench.train: one JSON line per variant, then the summary
#                (bench.jsonl; BENCH_VARIANTS=all or a comma list; BENCH_ARGS adds flags;
#                profile_default.txt: the top kernels of the default variant)
#   train_smoke  `vla train model.preset=small` (TRAIN_PRESET) on the curated fixture data: 4 steps
#                with checkpoints, then resume=auto to step 6 (train_smoke.json, train_metrics.jsonl)
#   tests        the model/train unit tests on this torch/Python with CUDA hidden (they are CPU
#                tests: gloo FSDP2, exact loss comparisons); gs:// and Ray tests deselected
#                (TEST_PATHS; pytest.txt, pytest.xml, and a summary line)
# Every step also appends {"step", "rc", "seconds"} to session.jsonl.
set -uo pipefail

OUT=${OUT:-runs/gpu_session}
BUNDLE=${BUNDLE:-build/gpu_bundle}
PY=${PY:-python3}
STEPS=${STEPS:-probe bench train_smoke tests}
BUDGET_S=${BUDGET_S:-570}
BENCH_VARIANTS=${BENCH_VARIANTS:-all}
BENCH_ARGS=${BENCH_ARGS:-}
TRAIN_PRESET=${TRAIN_PRESET:-small}
TEST_PATHS=${TEST_PATHS:-tests/model tests/train}
mkdir -p "$OUT"
start=$(date +%s)

site=$(mktemp -d)
for wheel in "$BUNDLE"/wheels/*.whl; do
    [ -e "$wheel" ] && "$PY" -m zipfile -e "$wheel" "$site"
done
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

log() { echo "$1" | tee -a "$OUT/session.jsonl"; }

# run_step NAME CAP_S COMMAND...: the command under `timeout min(CAP_S, budget left)`
run_step() {
    local name=$1 cap=$2; shift 2
    local left=$(( BUDGET_S - ($(date +%s) - start) ))
    local limit=$(( cap < left ? cap : left ))
    if (( limit < 30 )); then
        log "{\"step\": \"$name\", \"skipped\": \"budget: ${left}s left\"}"
        return
    fi
    local t0=$(date +%s)
    timeout --signal=TERM --kill-after=10 "$limit" "$@"
    local rc=$?
    log "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - t0 )), \"limit_s\": $limit}"
}

step_probe() {
    "$PY" -m pipeline.bench.torch_api | tee "$OUT/probe.json"
}

step_bench() {
    # shellcheck disable=SC2086
    "$PY" -m pipeline.bench.train --variants "$BENCH_VARIANTS" --profile default --profile-dir "$OUT" \
        $BENCH_ARGS | tee "$OUT/bench.jsonl"
}

step_train_smoke() {
    local run
    run=$(mktemp -d)/small  # checkpoints stay on the machine; metrics come back
    local common=("model.preset=$TRAIN_PRESET" "data.data_root=$BUNDLE/curated" "run_dir=$run" per_device_batch=8
                  checkpoint.save_every=2 stop.accuracy=2.0 metrics.progress=false metrics.tensorboard=false)
    "$PY" -m pipeline.cli train "${common[@]}" stop.max_steps=4 > "$OUT/train_first.out" || return 1
    "$PY" -m pipeline.cli train "${common[@]}" stop.max_steps=6 > "$OUT/train_resumed.out" || return 1
    cp "$run/metrics.jsonl" "$OUT/train_metrics.jsonl"
    rm -rf "$(dirname "$run")"
    "$PY" - "$OUT" <<'EOF' | tee "$OUT/train_smoke.json"
import json, sys
out = sys.argv[1]
first = json.loads(open(f"{out}/train_first.out").read().strip().splitlines()[-1])
resumed = json.loads(open(f"{out}/train_resumed.out").read().strip().splitlines()[-1])
records = [json.loads(line) for line in open(f"{out}/train_metrics.jsonl")]
ok = (first["steps"] == 4 and first["last_checkpoint"].endswith("step_000004") and resumed["steps"] == 6
      and str(resumed["resumed_from"]).endswith("step_000004") and records[-1]["step"] == 6)
last = records[-1]
print(json.dumps({"step": "train_smoke", "ok": ok, "first": first, "resumed": resumed,
                  "last_record": {k: last.get(k) for k in ("step", "loss", "samples_per_s", "mfu", "step_time_s")}}))
sys.exit(0 if ok else 1)
EOF
}

step_tests() {
    # shellcheck disable=SC2086
    CUDA_VISIBLE_DEVICES="" "$PY" -m pytest -q -p no:cacheprovider -rfE --junitxml="$OUT/pytest.xml" \
        -k "not gcs and not unreachable_storage" --ignore=tests/train/test_train_e2e.py \
        $TEST_PATHS > "$OUT/pytest.txt" 2>&1
    local rc=$?
    tail -n 30 "$OUT/pytest.txt"
    "$PY" - "$OUT/pytest.xml" <<'EOF' | tee -a "$OUT/session.jsonl"
import json, sys, xml.etree.ElementTree as ET
suite = ET.parse(sys.argv[1]).getroot().find("testsuite")
failed = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
          if c.find("failure") is not None or c.find("error") is not None]
print(json.dumps({"step": "tests_summary", **{k: int(suite.get(k)) for k in ("tests", "failures", "errors", "skipped")},
                  "failed": failed}))
EOF
    return $rc
}

export OUT BUNDLE PY BENCH_VARIANTS BENCH_ARGS TRAIN_PRESET TEST_PATHS
export -f step_probe step_bench step_train_smoke step_tests
log "{\"step\": \"start\", \"steps\": \"$STEPS\", \"budget_s\": $BUDGET_S}"
for step in $STEPS; do
    case $step in
        probe) run_step probe 90 bash -c step_probe ;;
        bench) run_step bench 330 bash -c step_bench ;;
        train_smoke) run_step train_smoke 150 bash -c step_train_smoke ;;
        tests) run_step tests 300 bash -c step_tests ;;
        *) log "{\"step\": \"$step\", \"skipped\": \"unknown step\"}" ;;
    esac
done
rm -rf "$site"
