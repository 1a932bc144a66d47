# The two commands of the README. Each sets everything up first (idempotent, seconds
# when already done): Debian packages, .venv (torch 2.13.0 CPU pinned), .venv-cmor.
SHELL := /bin/bash
export PATH := $(CURDIR)/.venv/bin:$(PATH)
PYTEST_ARGS ?=
SNAKEMAKE_ARGS ?=
# `make faults`: the fault tests with many kills (docs/reliability.md); `make test` runs a few.
FAULT_ROLLOUT_KILLS ?= 50
FAULT_TRAIN_KILLS ?= 10
FAULT_SUBMIT_KILLS ?= 10
FAULT_SEED ?= 12

.PHONY: setup run test faults lint bench science clean

setup:
	@bash scripts/setup.sh

run: setup
	snakemake all $(SNAKEMAKE_ARGS)

test: setup
	python -m pytest $(PYTEST_ARGS)

faults: setup
	@mkdir -p results/faults
	@start=$$(date +%s); \
	MDIFF_FAULT_ROLLOUT_KILLS=$(FAULT_ROLLOUT_KILLS) MDIFF_FAULT_TRAIN_KILLS=$(FAULT_TRAIN_KILLS) \
	MDIFF_FAULT_SUBMIT_KILLS=$(FAULT_SUBMIT_KILLS) MDIFF_FAULT_SEED=$(FAULT_SEED) \
	MDIFF_FAULT_SUMMARY=results/faults/summary.json \
	python -m pytest -m faults -q -p no:cacheprovider $(PYTEST_ARGS); rc=$$?; \
	echo "make faults: $$(( $$(date +%s) - start )) s (summary: results/faults/summary.json)"; exit $$rc

lint: setup
	ruff check .
	snakefmt --check .
	snakemake --lint

# The benchmarks of docs/benchmarks.md (each prints `<metric>=<number>` last).
bench: setup
	mdiff bench world
	mdiff bench regrid
	mdiff bench train --model config/model/md15.yaml
	for n in 1 5 10 50; do mdiff bench rollout --model config/model/md15.yaml --members $$n --months 4 --threads 2; done

# The perfect-model benchmark of docs/science.md: world, training, control/+2K/+4K ensembles,
# scores against the known truth (last line: JSON). `make science SETTING=long SEED=1`.
SETTING ?= default
SEED ?= 0
science: setup
	mdiff bench science --setting $(SETTING) --seed $(SEED)

clean:
	rm -rf results .snakemake
