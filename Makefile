# Set-up is two commands on a fresh machine: `make demo` and `make test`. Both install first.
# `make test-fast` skips the tests marked `slow` (for iterating; CI runs the full `make test`).
#
# Install notes (measured, see README "Install"):
# - pyproject.toml declares the supported ranges and the extras; constraints.txt pins the tested set
#   that `make install` puts here (and CI tests). `make test-compat` runs the torch-facing unit tests
#   under the lowest supported torch (COMPAT_TORCH) in .venv-compat.
# - torch==2.14.1 + torchvision==0.29.1 are installed first and pinned: they are the pair that load
#   together on a CPU-only machine, and an unpinned torch pulls multi-GB CUDA wheels.
# - triton is uninstalled afterwards. It ships with the CUDA torch build, is useless without a GPU,
#   and importing tensorflow before torchvision with triton present segfaults (triton/knobs.py).
#   Without the wheel every import order works and torch.compile on CPU still works. This is a
#   property of the environment, so it holds for every entry point and test, not just ours.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: install demo test test-fast test-compat lint faults bench-curate bench-stream bench-train bench-infer clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	-$(BIN)/pip uninstall -y -q triton
	$(BIN)/python -c "import pipeline, torch, torchvision, timm, tensorflow, ray, transformers, wandb"
	rm -f $(VENV)/.installed-*
	touch $@

demo: install
	$(BIN)/python -m pipeline.demo

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# the suite without the `slow` end-to-end tests (multi-process runs, the fault scenarios): CI runs `test`
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# The lowest supported torch (pyproject.toml: torch>=2.11) under the unit tests that touch torch APIs.
# .venv-compat holds only torch + torchvision of that release (PyPI's CUDA 13 builds, ~540 MB
# download; no CPU build of 2.11 is on the registry); every other package, and the CUDA libraries
# they load, come from .venv through a .pth file, so nothing but torch differs from `make test`.
COMPAT_VENV  ?= .venv-compat
COMPAT_TORCH ?= torch==2.11.0 torchvision==0.26.0
COMPAT_TESTS ?= tests/model tests/train/test_train_units.py tests/train/test_torch_api.py \
                tests/train/test_parallel.py tests/train/test_train_fsdp.py tests/train/test_train_accum.py \
                tests/train/test_train_resume.py tests/train/test_finetune.py
COMPAT_BIN   := $(COMPAT_VENV)/bin
COMPAT_STAMP := $(COMPAT_VENV)/.installed-$(shell echo $(COMPAT_TORCH) | sha1sum | cut -c1-12)

$(COMPAT_STAMP): $(STAMP)
	rm -rf $(COMPAT_VENV)
	$(PY) -m venv $(COMPAT_VENV)
	$(BIN)/python -c "import sysconfig; print('import site; site.addsitedir(%r)' % sysconfig.get_paths()['purelib'])" \
	  > "$$($(COMPAT_BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/zz_pinned_venv.pth"
	$(COMPAT_BIN)/python -m pip install -q --no-deps --ignore-installed $(COMPAT_TORCH)
	touch $@

test-compat: $(COMPAT_STAMP)
	PYTHONPATH=$(CURDIR) $(COMPAT_BIN)/python -c "import sys, torch, torchvision, transformers; \
	  print('test-compat: python', sys.version.split()[0], 'torch', torch.__version__, 'torchvision', \
	  torchvision.__version__, 'transformers', transformers.__version__); \
	  assert torch.__version__.split('+')[0] == '$(patsubst torch==%,%,$(firstword $(COMPAT_TORCH)))'"
	PYTHONPATH=$(CURDIR) $(COMPAT_BIN)/python -m pytest -q -p no:cacheprovider $(COMPAT_TESTS) $(PYTEST_ARGS)

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
	rm -rf $(VENV) $(COMPAT_VENV) build *.egg-info .pytest_cache runs
