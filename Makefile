# scorebridge: `make run` runs the default workflow, `make test` runs the test suite.
# Both create or refresh the local virtual environment (.venv) first; a second call
# skips what is done.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.scorebridge-installed
CORES ?= all
SNAKEMAKE_ARGS ?=
# The config to run: `make run CONFIG=my.yaml` runs your experiments only (the workflow's
# config/config.yaml is replaced, not merged: --replace-workflow-config).
CONFIG ?= config/config.yaml
CONFIG_ARGS = --configfile $(CONFIG) --replace-workflow-config

.PHONY: venv run test lint report dry-run clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# Snakemake reads --configfile before the workflow and does not say where a malformed file
# is wrong; check-config names the file and line first.
CHECK_CONFIG = $(BIN)/scorebridge check-config $(CONFIG)

run: $(STAMP)
	$(CHECK_CONFIG)
	$(BIN)/snakemake --profile profiles/local --cores $(CORES) $(CONFIG_ARGS) $(SNAKEMAKE_ARGS)

report: $(STAMP)
	$(CHECK_CONFIG)
	$(BIN)/snakemake --cores $(CORES) $(CONFIG_ARGS) --report results/report.html

dry-run: $(STAMP)
	$(CHECK_CONFIG)
	$(BIN)/snakemake -n $(CONFIG_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --timeout 900 tests

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/snakemake --lint $(CONFIG_ARGS)
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/python scripts/sync-conda-env.py --check

clean:
	rm -rf results .snakemake
