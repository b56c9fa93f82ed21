# vpg — `make help` lists the targets. `make test` and `make demo` install first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Use the active virtualenv if there is one, else .venv/ in the repo.
ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
else
VENV := $(CURDIR)/.venv
endif
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vpg-installed-$(shell cat pyproject.toml | md5sum | cut -c1-12)
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export PYTHONUNBUFFERED := 1

.PHONY: help install test test-slow demo bench lint tensorboard pretrain clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The registry's torch (CUDA build) runs on CPU; a CPU-only torch wheel breaks torchvision.
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -c "import torch, torchvision, open_clip, lightning, peft, datasets; torchvision.ops.nms; print('installed: torch', torch.__version__, 'torchvision', torchvision.__version__, 'open_clip', open_clip.__version__)"
	@rm -f $(VENV)/.vpg-installed-*; touch $(STAMP)

install: $(STAMP) ## create .venv (unless a venv is active) and install vpg with its dependencies

test: install ## run the test suite (unit + integration, slow tests excluded)
	$(PY) -m pytest -m "not slow" -q

test-slow: install ## run the slow tests too (pretraining reproduction, ...)
	$(PY) -m pytest -q

demo: install ## run the embedded vpg-shapes demo end to end and print the results table
	$(PY) -m vpg.demo

bench: install ## run the benchmarks (each prints a last line RESULT key=value ...)
	@set -e; for b in tests/benchmarks/*.py; do echo "== $$b"; $(PY) $$b; done

lint: install ## ruff
	$(PY) -m ruff check vpg tests

pretrain: install ## re-train the committed tiny CLIP on vpg-shapes (~12 min on 2 cores)
	$(VENV)/bin/vpg fit --config experiments/shapes/clip_pretrain.yaml

tensorboard: install ## serve the TensorBoard logs in logs/
	$(VENV)/bin/tensorboard --logdir logs

clean: ## remove logs and caches (not .venv)
	rm -rf logs lightning_logs .pytest_cache .ruff_cache
