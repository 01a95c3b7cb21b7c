# lesion-ml: `make run` runs the demo pipeline, `make test` runs the whole test suite.
# Both create (or reuse) the virtual environment .venv with the pinned dependencies.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export NO_ALBUMENTATIONS_UPDATE := 1
export PREFECT_LOGGING_EXTRA_LOGGERS := lesion_ml
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: run test test-fast bench install clean-venv server-start server-stop lock data

install: $(STAMP)

# pip installs one package after another: one `pip install -r requirements.lock` takes about 110 s
# on 2 cores (looking up 237 pins in the package indexes, then unpacking 3 GB of wheels). The lock is
# the whole resolved set, so INSTALL_JOBS pip processes each install every INSTALL_JOBS-th pin
# (--no-deps) side by side (about 50 s); then the plain `pip install -r requirements.lock` finds
# every pin installed, checks the lock's dependencies against it and adds what pip freeze leaves out
# of the lock (setuptools, which torch requires): about 8 s. The environment is the one the plain
# install alone gives (`pip freeze --all` identical).
# --no-compile, then compileall on every core: pip byte-compiles module by module on one core (about
# 45 s of the install on 2 cores); compileall -j 0 does the same files in parallel (about 30 s), less
# the packages' own test suites and pip and setuptools, which nothing here imports (a quarter of the
# files). Without the byte code every process would compile what it imports (PYTHONDONTWRITEBYTECODE
# keeps it from being saved), 8 s more per stage.
INSTALL_JOBS ?= 3
PIP_INSTALL := $(BIN)/python -m pip install --quiet --no-compile --disable-pip-version-check
$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@parts=$$(mktemp -d) && grep -E '^[A-Za-z0-9]' requirements.lock | awk -v n=$(INSTALL_JOBS) -v d="$$parts" '{print > (d "/part" NR % n)}' && \
	  echo "installing requirements.lock with $(INSTALL_JOBS) pip processes side by side (--no-deps)" && pids=() && \
	  for part in "$$parts"/part*; do $(PIP_INSTALL) --no-deps -r "$$part" > "$$part.log" 2>&1 & pids+=($$!); done; \
	  failed=0; for pid in "$${pids[@]}"; do wait "$$pid" || failed=1; done; \
	  grep -hv "^WARNING: Location" "$$parts"/*.log; rm -rf "$$parts"; exit $$failed
	$(PIP_INSTALL) -r requirements.lock 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -m compileall -q -j 0 -x '/site-packages/([^/]+/)*tests/|/site-packages/(pip|setuptools)/' $(VENV)/lib > /dev/null || true
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import torch, torchvision, lightgbm, prefect, dvc, albumentations, lesion_ml"
	@touch $@

# The stage flows of `dvc repro` share one Prefect server (the running one of `make server-start`,
# else a temporary one for the whole run) instead of starting one each; their runs stay in
# .prefect's database, so the UI of a later `make server-start` shows them.
run: $(STAMP)
	@test -d .git || (git init -q && echo "initialised a git repository (DVC needs one)")
	$(if $(PARAMS),$(BIN)/lesion params --merge $(PARAMS))
	$(BIN)/lesion server run -- $(BIN)/dvc repro
	@echo "out-of-fold metrics (reports/metrics.json; all figures: dvc metrics show):"; $(BIN)/lesion metrics

# Two pytest-xdist workers, each taking whole test files (a module's pipeline fixture runs once):
# the long tests mostly wait on subprocesses (dvc, stage flows, Prefect), so two run side by side
# on 2 cores in about half the time. Files go out in collection order, the longest first
# (tests/conftest.py LONGEST_FIRST), so that no long file starts last. TEST_WORKERS=0 runs
# everything in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not flow"

# requirements.lock from pyproject.toml's dependencies and its test and dask extras: installs
# `.[test,dask]` (torch and torchvision held at the project's versions) into a throwaway venv in a
# temporary folder and writes its `pip freeze`, keeping the pins already there where they still
# fit. A changed pin retrains every stage (the lock is part of every cache key): preview with
# `make lock LOCK_ARGS="--resolve-only --output /tmp/requirements.lock"`; `--upgrade` re-resolves
# everything. tests/test_packaging.py checks that pyproject.toml, the lock and the imports agree.
LOCK_ARGS ?=
lock:
	$(PYTHON) scripts/lock.py $(LOCK_ARGS)

# A real data set into the repository, under DVC: `make data SET=ham10000-400` copies
# $(SHARED)/ham10000-400 to data/raw/ham10000-400 and `dvc add`s it, so that DVC sees a change to the
# data and `dvc push` / `dvc pull` carry it (commit data/raw/<set>.dvc, never the images). Several
# sets at once: SET="ham10000-400 isic-uda1-555". The images keep their licence (SOURCE.txt in each).
SHARED ?= ../shared/data
SET ?=
data: $(STAMP)
	@test -n "$(SET)" || { echo "usage: make data SET=<folder of $(SHARED)> (e.g. SET=\"ham10000-400 isic-uda1-555\")"; exit 2; }
	@test -d .git || (git init -q && echo "initialised a git repository (DVC needs one)")
	@for s in $(SET); do \
	  test -d "$(SHARED)/$$s" || { echo "no data set $(SHARED)/$$s"; exit 2; }; \
	  mkdir -p data/raw && rm -rf "data/raw/$$s" && cp -R "$(SHARED)/$$s" "data/raw/$$s" && \
	  $(BIN)/dvc add -q "data/raw/$$s" && echo "data/raw/$$s: tracked by DVC (git add data/raw/$$s.dvc data/raw/.gitignore)"; \
	done

bench: $(STAMP)
	$(BIN)/lesion bench all --json reports/bench.json

clean-venv:
	rm -rf $(VENV)

server-start: $(STAMP)
	$(BIN)/lesion server start

server-stop: $(STAMP)
	$(BIN)/lesion server stop
