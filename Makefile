# scorebridge: `make run` runs the default workflow, `make test` runs the test suite.
# Both create or refresh the local virtual environment (.venv) first; a second call
# skips what is done.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.scorebridge-installed
CORES ?= all
SNAKEMAKE_ARGS ?=

.PHONY: venv run test lint report dry-run clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

run: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --profile profiles/local --cores $(CORES) --configfile config/config.yaml $(SNAKEMAKE_ARGS)

report: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --cores $(CORES) --configfile config/config.yaml --report results/report.html

dry-run: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake -n --configfile config/config.yaml

test: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -n 2 --timeout 900 tests

lint: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --lint --configfile config/config.yaml
	$(BIN)/snakefmt --check Snakefile workflow/rules

clean:
	rm -rf results .snakemake
