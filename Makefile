# Set-up is two commands on a fresh machine: `make demo` and `make test`. Both install first.
# `make test-fast` skips the tests marked `slow` (for iterating; CI runs the full `make test`).
#
# Install notes (measured, see README "Installation"):
# - torch==2.14.1 + torchvision==0.29.1 are installed first and pinned: they are the pair that load
#   together on a CPU-only machine, and an unpinned torch pulls multi-GB CUDA wheels.
# - triton is uninstalled afterwards. It ships with the CUDA torch build, is useless without a GPU,
#   and importing tensorflow before torchvision with triton present segfaults (triton/knobs.py).
#   Without the wheel every import order works and torch.compile on CPU still works. This is a
#   property of the environment, so it holds for every entry point and test, not just ours.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint faults bench-curate bench-stream bench-train bench-infer clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	-$(BIN)/pip uninstall -y -q triton
	$(BIN)/python -c "import pipeline, torch, torchvision, timm, tensorflow, ray, transformers" 
	rm -f $(VENV)/.installed-*
	touch $@

demo: install
	$(BIN)/python -m pipeline.demo

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# the suite without the `slow` end-to-end tests (multi-process runs, the fault scenarios): CI runs `test`
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check pipeline launch tests

faults: install
	$(BIN)/python -m tests.faults.suite $(FAULTS_ARGS)

bench-curate: install
	$(BIN)/python -m pipeline.bench.curate

bench-stream: install
	$(BIN)/python -m pipeline.bench.stream

bench-train: install
	$(BIN)/python -m pipeline.bench.train

bench-infer: install
	$(BIN)/python -m pipeline.bench.infer

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache runs
