# Quick start: `make demo` (sets up .venv and runs the CPU PPO demo), `make test` (sets up and runs the tests).
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup browser demo pipeline collect collect-train test test-fast docs clean
SESSION ?= runs/collect

setup:
	@bash scripts/bootstrap.sh

demo: setup
	$(BIN)/rlhf-dist train configs/demo_cpu.yaml

pipeline: setup
	$(BIN)/rlhf-dist pipeline configs/pipeline_cpu

# Human preferences: SFT, candidates from it, the labelling app (Ctrl-C when done); then pairs -> RM -> PPO.
collect: setup
	$(BIN)/rlhf-dist collect start configs/collect_cpu --session $(SESSION)

collect-train: setup
	$(BIN)/rlhf-dist collect train $(SESSION)

# chromium for the labelling app's browser test (installed as root when missing, else named)
browser:
	@bash scripts/browser.sh

test: setup browser
	$(BIN)/python -m pytest -q -ra

test-fast: setup
	$(BIN)/python -m pytest -q -ra -m "not slow"

# docs/config.md is generated from the config models; tests/test_docs.py fails when it is stale.
docs: setup
	$(BIN)/python -m rlhf_dist.config.reference docs/config.md

clean:
	rm -rf $(VENV) .cache runs .pytest_cache
