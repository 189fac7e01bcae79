# Quick start:  make run   (set up .venv, then `dvc repro` the default pipeline on digits)
#               make test  (set up .venv, then ruff + pytest)
VENV := .venv
PYTHON ?= python3
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: run test setup slurm browser
setup: $(VENV)/.installed .dvc/plots.html

# torch/torchvision are pinned in pyproject.toml; pip takes them from the local wheel cache.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $@

# dvc plots show/diff pages with vega inlined (.dvc/config names it): they open offline.
.dvc/plots.html: $(VENV)/.installed
	$(VENV)/bin/python -m s5cl.pipeline.offline_plots $@

# Then the run is saved as the experiment `baseline` that `dvc exp show` compares variants with
# (docs/usage.md#comparing-experiments); DVC needs git's user.name and user.email for it.
run: setup
	dvc repro
	@if git config user.name >/dev/null && git config user.email >/dev/null; then \
	  dvc exp save -f -n baseline; \
	else echo "note: set git's user.name and user.email, then: dvc exp save -f -n baseline"; fi

# tests/test_slurm.py starts a one-node SLURM cluster from Debian's slurm-wlm and munge: as root
# with apt-get (CI), install them if missing; elsewhere that test is skipped, saying why.
slurm:
	@test -x /usr/sbin/slurmctld -a -x /usr/sbin/munged && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing slurm-wlm and munge (apt-get) for tests/test_slurm.py"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge \
	    >/dev/null || echo "note: could not install slurm-wlm and munge; tests/test_slurm.py will skip"; \
	else echo "note: slurm-wlm and munge are not installed; tests/test_slurm.py will skip"; fi

# tests/test_labelling.py drives the labelling page in Debian's chromium with chromium-driver:
# installed the same way (as root with apt-get), else that test is skipped, saying why.
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium and chromium-driver (apt-get) for tests/test_labelling.py"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	    chromium-driver >/dev/null || echo "note: could not install chromium; its test will skip"; \
	else echo "note: chromium and chromium-driver are not installed; tests/test_labelling.py will skip"; fi

test: setup slurm browser
	ruff check src stages tests bench
	lint-imports
	pytest
