# Quick start:  make run   (set up .venv, then `dvc repro` the default pipeline on digits)
#               make test  (set up .venv, then ruff + pytest)
VENV := .venv
PYTHON ?= python3
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: run test setup
setup: $(VENV)/.installed

# torch/torchvision are pinned in pyproject.toml; pip takes them from the local wheel cache.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $@

run: setup
	dvc repro

test: setup
	ruff check src stages tests bench
	pytest
