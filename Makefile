# The two commands of the README. Each sets everything up first (idempotent, seconds
# when already done): Debian packages, .venv (torch 2.13.0 CPU pinned), .venv-cmor.
SHELL := /bin/bash
export PATH := $(CURDIR)/.venv/bin:$(PATH)
PYTEST_ARGS ?=
SNAKEMAKE_ARGS ?=

.PHONY: setup run test lint bench clean

setup:
	@bash scripts/setup.sh

run: setup
	snakemake all $(SNAKEMAKE_ARGS)

test: setup
	python -m pytest $(PYTEST_ARGS)

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

clean:
	rm -rf results .snakemake
