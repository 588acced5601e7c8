# unmirage: the two set-up commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Real VLGuard text files, when this checkout sits next to the workplace's shared/ folder.
VLGUARD_DIR := $(abspath ../shared/data/vlguard)
ifneq ($(wildcard $(VLGUARD_DIR)/train.json),)
export UNMIRAGE_VLGUARD_DIR ?= $(VLGUARD_DIR)
endif
# Real benchmark data (xstest/, figstep/, mossbench/, vlguard/), likewise.
DATA_DIR := $(abspath ../shared/data)
ifneq ($(wildcard $(DATA_DIR)/xstest),)
export UNMIRAGE_DATA_DIR ?= $(DATA_DIR)
endif
# Long CPU jobs: spinning OpenMP threads slow everything down when the other core is busy.
export OMP_WAIT_POLICY ?= PASSIVE
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
export PYTHONUNBUFFERED ?= 1

.PHONY: demo test bench lint install install-dev clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -e '.[dev]'
	# DeepSpeed (ZeRO-3 tests) builds against the installed torch, not a fresh one in an isolated build env
	$(PIP) install -q --no-build-isolation 'deepspeed>=0.16'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(VENV)/bin/unmirage lab run --out lab-out

test: $(VENV)/.installed-dev
	$(PY) -m pytest -n 2 --timeout 600 --durations=15

bench: $(VENV)/.installed-dev
	$(PY) bench/run_all.py

lint: $(VENV)/.installed-dev
	$(PY) -m ruff check src tests bench
	$(PY) -m ruff format --check src tests bench

clean:
	rm -rf $(VENV) lab-out .pytest_cache .ruff_cache
