# Two entry points for a fresh machine:  `make demo`  and  `make test`.
# Both set everything up first (idempotent: a second run only checks the stamp).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0
APT_PACKAGES ?= dataset-fashion-mnist chromium fonts-dejavu-core ffmpeg bible-kjv bible-kjv-text
OUT ?= ncollapse-demo
# The tests use the real integration packages (on CPU) and the lm tokenizer, so setup installs
# every extra.
EXTRAS ?= dev,lightning,transformers,tensorboard,lm

.PHONY: setup system-packages demo test lint bench clean

setup: $(VENV)/.setup-stamp

# Debian packages: the Fashion-MNIST IDX files, Chromium for the report's browser test, the
# King James Bible (the corpus of `ncollapse lm`),
# ffmpeg for MP4 animations. Skipped (with a note) where apt-get is missing or we are not root.
system-packages:
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "setup: apt-get install$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  fi; \
	else echo "setup: no root apt-get here; skipping Debian packages ($(APT_PACKAGES))"; fi

$(VENV)/.setup-stamp: pyproject.toml Makefile
	@$(MAKE) --no-print-directory system-packages
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# The pinned CPU build first: an unpinned torch would pull a multi-GB CUDA build.
	@if ! $(PY) -c "import torch" >/dev/null 2>&1; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch; \
	  else $(PY) -m pip install -q $(TORCH_PIN); fi; fi
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	@touch $@

demo: setup
	$(VENV)/bin/ncollapse demo --out $(OUT)

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks examples

bench: setup
	$(PY) benchmarks/measure.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
