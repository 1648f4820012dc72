#!/usr/bin/env bash
# Prepare what the GPU session (pipeline/bench/gpu_session.sh) brings along, on a CPU machine with
# the project's venv and registry access. Run from the repository root:
#
#   bash pipeline/bench/gpu_prepare.sh          # -> build/gpu_bundle/ (~3 MB; build/ is git-ignored)
#
# - wheels/: the pure-Python packages the GPU machine lacks (it has no registry): omegaconf
#   (`vla train` reads its config with it; omegaconf 2.3 also needs its antlr4 runtime, 2.4 does
#   not: whichever this venv has goes along), pytest and its dependencies (the unit tests). Same
#   versions as this venv (`pip wheel --no-deps omegaconf ... -w wheels/`). PyYAML and packaging
#   are there already (transformers needs them).
# - curated/: fixture episodes of the demo mixture, curated (`vla fixture` + `vla curate`; needs
#   Ray and TensorFlow, so it is made here). The curated output is self-contained.
set -euo pipefail

BUNDLE=${BUNDLE:-build/gpu_bundle}
PY=${PY:-.venv/bin/python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null; }

rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/wheels"
pkgs=()
for name in omegaconf antlr4-python3-runtime pytest pluggy iniconfig pygments; do
    if v=$(version "$name"); then
        pkgs+=("$name==$v")
    elif [ "$name" != antlr4-python3-runtime ]; then
        echo "gpu_prepare: $name is not installed in $PY" >&2
        exit 2
    fi
done
"$PY" -m pip wheel -q --no-deps -w "$BUNDLE/wheels" "${pkgs[@]}"

raw=$(mktemp -d)
trap 'rm -rf "$raw"' EXIT
"$PY" -m pipeline.cli fixture out="$raw/raw" 'datasets=[bridge_orig,fractal20220817_data,taco_play]' \
    episodes=4 steps=8-10 image_size=64 >/dev/null
"$PY" -m pipeline.cli curate mixture=demo source="$raw/raw" out="$BUNDLE/curated" progress=false \
    ray.num_cpus=2 >/dev/null
du -sh "$BUNDLE"
ls "$BUNDLE/wheels"
