#!/usr/bin/env bash
# Run by Snakemake inside the freshly created envs/mdiff.yaml environment, from the
# workflow's working directory (the mdiff checkout). Mirrors scripts/setup.sh:
# torch-harmonics 0.9.3 declares torch>=2.14 but runs on the pinned 2.13, so it is
# installed without its dependencies (with them pip would replace torch, or pick 0.9.1,
# which fails at import); then mdiff itself, editable, with its own dependencies.
set -euo pipefail
if ! grep -qs '^name = "mdiff"' pyproject.toml; then
  echo "mdiff.post-deploy.sh: $PWD/pyproject.toml is not mdiff's: run snakemake from the" \
    "mdiff checkout (where the Snakefile is)" >&2
  exit 1
fi
python -m pip install --no-deps "torch-harmonics==0.9.3"
python -m pip install -e .
python -c "import torch, torch_harmonics, mdiff; print('mdiff env: torch', torch.__version__)"
