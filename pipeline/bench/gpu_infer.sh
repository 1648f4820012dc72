#!/usr/bin/env bash
# Issue 15 on one GPU: `python -m pipeline.bench.infer` once per mode, each in its own process under
# its own timeout, most important first, within a total budget. Writes to $OUT (3 files):
#   bench_infer.jsonl  one JSON line per run: {"run", "rc", "timed_out", "seconds", ...bench JSON}
#   runs.log           stderr of every run (a header per run); gpu.txt: nvidia-smi's view
#
# Runs from the repo root with PYTHONPATH=. on the GPU machine's own software (torch 2.11,
# transformers 5.17; no omegaconf/ray/tensorflow/gcsfs there, and the bench needs none of them).
# bitsandbytes (int8/int4) is not there either: bring its wheel (43 MB; the wheel is py3-none with
# its CUDA kernels inside, so it is unzipped onto PYTHONPATH, no pip needed there). Put it in
# `.whl/` (git-ignored) or beside gpu_prepare.sh's wheels in $BUNDLE/wheels, and carry that folder:
#   here, once: python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#                 --implementation cp --platform manylinux_2_24_x86_64 -d .whl bitsandbytes==0.50.2
#   device run: command="bash pipeline/bench/gpu_infer.sh", carry=[".whl"], timeout_s=600
# Without it the int8/int4 runs record "quantization=... needs the bitsandbytes package" and the
# bf16 runs still measure. BUDGET_S (default 540) caps the whole script: a run whose timeout would
# overshoot it is skipped (recorded with "skipped": true).
set -u
OUT=${OUT:-runs/gpu_infer}
BUNDLE=${BUNDLE:-build/gpu_bundle}
BUDGET=${BUDGET_S:-540}
PY=${PY:-python3}
mkdir -p "$OUT"
site=$(mktemp -d)
for wheel in .whl/bitsandbytes-*.whl "$BUNDLE"/wheels/bitsandbytes-*.whl; do
  [ -e "$wheel" ] && "$PY" -m zipfile -e "$wheel" "$site"
done
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1

record() {  # name rc seconds skipped json-line -> one line of bench_infer.jsonl
  "$PY" - "$@" >> "$OUT/bench_infer.jsonl" <<'EOF'
import json, sys
name, rc, seconds, skipped, line = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
try:
    result = json.loads(line) if line else {}
except ValueError:
    result = {"unparsed_output": line[-500:]}
print(json.dumps({"run": name, "rc": rc, "timed_out": rc in (124, 137), "seconds": seconds, "skipped": skipped,
                  **result}))
EOF
}

run() {  # name timeout_s bench-args...
  local name=$1 limit=$2 start=$SECONDS rc line
  shift 2
  if (( SECONDS + limit > BUDGET )); then
    record "$name" 0 0 1 ""
    echo "$name: skipped (${SECONDS}s used of ${BUDGET}s)"
    return
  fi
  echo "=== $name: python -m pipeline.bench.infer $* (timeout ${limit}s)" >> "$OUT/runs.log"
  timeout --kill-after=10 "$limit" "$PY" -m pipeline.bench.infer "$@" > /tmp/gpu_infer_run.json 2>> "$OUT/runs.log"
  rc=$?
  line=$(tail -n 1 /tmp/gpu_infer_run.json 2>/dev/null)
  record "$name" "$rc" "$((SECONDS - start))" 0 "$line"
  echo "$name: rc=$rc $((SECONDS - start))s"
}

SPEED=(--no-agreement --plain-modes "" --serve-mode "")
# bf16 first: speed (fast decoder, CUDA graph), the plain decoder beside it, server overhead
run bf16 170 --modes bf16 --plain-modes bf16 --serve-mode bf16 --no-agreement
run int4 130 --modes int4 "${SPEED[@]}"
# token agreement with the plain bf16 decoder on the trained demo model (fast bf16, eager bf16, int4, int8)
run agreement 150 --modes "" --compare int4,int8
run int8 150 --modes int8 "${SPEED[@]}" --actions 20 --warmup 2
# levers beside the default: torch.compile of the layer blocks, an explicit SDPA backend
run bf16_compile 170 --modes bf16 "${SPEED[@]}" --compile
run bf16_sdpa_efficient 110 --modes bf16 "${SPEED[@]}" --sdpa efficient
echo "done in ${SECONDS}s; results: $OUT/bench_infer.jsonl"
