# Quick start: `make demo` (sets up .venv and runs the CPU PPO demo), `make test` (sets up and runs the tests).
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo pipeline test test-fast docs clean

setup:
	@bash scripts/bootstrap.sh

demo: setup
	$(BIN)/rlhf-dist train configs/demo_cpu.yaml

pipeline: setup
	$(BIN)/rlhf-dist pipeline configs/pipeline_cpu

test: setup
	$(BIN)/python -m pytest -q -ra

test-fast: setup
	$(BIN)/python -m pytest -q -ra -m "not slow"

# docs/config.md is generated from the config models; tests/test_docs.py fails when it is stale.
docs: setup
	$(BIN)/python -m rlhf_dist.config.reference docs/config.md

clean:
	rm -rf $(VENV) .cache runs .pytest_cache
