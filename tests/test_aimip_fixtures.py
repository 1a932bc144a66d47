"""Rollout-shaped files and helpers shared by the tests/test_aimip_*.py modules (no tests here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from mdiff import config as C
from mdiff import protocol
from mdiff import variables as V
from mdiff.data import prepared as P
from mdiff.grid import LatLonGrid

ROOT = Path(__file__).resolve().parents[1]
CMOR_MDIFF = ROOT / ".venv-cmor" / "bin" / "mdiff"
CMOR_PYTHON = ROOT / ".venv-cmor" / "bin" / "python"

# Plausible values per state variable (mean, spread) so the CF checkers see sane data.
_TYPICAL = {"ta": (250.0, 20.0), "hus": (3e-3, 1e-3), "ua": (5.0, 8.0), "va": (0.0, 4.0),
            "z500": (5.5e4, 1e3), "ps": (9.8e4, 2e3), "ts": (288.0, 10.0), "tas": (287.0, 10.0),
            "tdas": (280.0, 5.0), "uas": (1.0, 4.0), "vas": (0.0, 3.0), "pr": (3e-5, 1e-5),
            "psl": (1.012e5, 1e3)}


def make_config(tmp: Path, nlat: int = 9, run: tuple[str, str] = ("1978-10", "1979-03"),
                experiments=("aimip",), members: int = 2, member_batch: int = 2, **aimip) -> C.Config:
    data = {
        "results": str(tmp / "results"),
        "grid": {"nlat": nlat, "nlon": 2 * (nlat - 1)},
        "periods": {"run_start": run[0], "run_end": run[1], "stats": ["1979-01", "1979-01"],
                    "train": ["1979-01", "1979-01"], "validate": ["1979-01", "1979-01"]},
        "rollout": {"experiments": list(experiments), "members": members, "member_batch": member_batch},
        "aimip": aimip,
    }
    return C.from_dict(C.Config, data, source="test")


def settings_json(cfg: C.Config) -> str:
    import json

    return json.dumps({k: C.to_dict(getattr(cfg, k)) for k in ("grid", "periods", "rollout", "aimip", "submit")})


def write_rollout(cfg: C.Config, experiment: str, first: int, last: int, path: Path, seed: int = 0) -> Path:
    """A rollout batch file as the rollout stage writes it (docs/data-contracts.md)."""
    grid = LatLonGrid(cfg.grid.nlat, cfg.grid.nlon)
    months = P.month_range(cfg.periods.run_start, cfg.periods.run_end)
    rng = np.random.default_rng(seed)
    members = np.arange(first, last + 1)
    shape = (members.size, months.size, len(V.STATE), *grid.shape)
    data = np.empty(shape, dtype=np.float32)
    for i, ch in enumerate(V.STATE):
        mean, spread = _TYPICAL[ch.variable]
        data[:, :, i] = mean + spread * rng.standard_normal(shape[:2] + grid.shape)
    for i, ch in enumerate(V.STATE):  # positive quantities stay positive
        if ch.variable in ("hus", "pr"):
            data[:, :, i] = np.abs(data[:, :, i])
    ds = P.skeleton(grid, months, attrs={"experiment_id": experiment, "sst_offset_K": protocol.SST_OFFSET_K[experiment],
                                         "checkpoint_sha256": "0" * 64, "mdiff_version": "0.1.0"})
    ds = ds.assign_coords(member=("member", members))
    ds = P.channels_to_dataset(data, V.STATE, ds, leading=("member", "time"))
    ds["member_seed"] = ("member", (1000 + members).astype(np.int64))
    P.write(ds, path)
    return path


def run_mdiff(args: list[str], cmor: bool = False, env: dict | None = None, check: bool = True):
    """Run `mdiff ...` in a subprocess (the CMOR environment for cmorize)."""
    exe = [str(CMOR_MDIFF)] if cmor else [sys.executable, "-m", "mdiff.cli"]
    proc = subprocess.run(exe + args, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"mdiff {args[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def copy_netcdf(src: Path, dst: Path, dtype: dict | None = None, drop_time: int | None = None) -> None:
    """Copy a NetCDF file, optionally changing a variable's dtype or dropping one time step."""
    import netCDF4

    dtype = dtype or {}
    with netCDF4.Dataset(src) as a, netCDF4.Dataset(dst, "w", format=a.data_model) as b:
        a.set_auto_mask(False)
        b.setncatts({k: a.getncattr(k) for k in a.ncattrs()})
        for name, dim in a.dimensions.items():
            b.createDimension(name, None if dim.isunlimited() else len(dim))
        for name, var in a.variables.items():
            attrs = {k: var.getncattr(k) for k in var.ncattrs()}
            fill = attrs.pop("_FillValue", None)
            out = b.createVariable(name, dtype.get(name, var.dtype), var.dimensions, fill_value=fill)
            out.setncatts(attrs)
            data = var[:]
            if drop_time is not None and var.dimensions and var.dimensions[0] == "time":
                data = np.delete(data, drop_time, axis=0)
            out[:] = data


CHUNK_MB = 5  # the S3 minimum part size: files >= 10 MiB go multipart


def make_tree(tmp: Path, sizes=(100, 2048, 70_000, 11 * 2**20 + 123)) -> Path:
    """A small tree to upload (random bytes; the last default size is multipart-sized) and a
    passed validation report for it (tmp/report.json)."""
    import json

    root = tmp / "aimip"
    rng = np.random.default_rng(0)
    for i, size in enumerate(sizes):
        p = root / "mdiff" / "mdiff-MD15" / "aimip" / f"r{i + 1}i1p1f1" / "Amon" / "tas" / f"f{i}.nc"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.bytes(size))
    (tmp / "report.json").write_text(json.dumps({"passed": True, "root": str(root), "errors": []}))
    return root


def upload_config(tmp: Path, endpoint: str, bucket: str, **submit) -> C.Config:
    """The config of an upload to ``bucket`` at ``endpoint`` (``submit``: further submit keys)."""
    cfg = make_config(tmp)
    cfg.submit.endpoint_url, cfg.submit.bucket, cfg.submit.chunksize_mb = endpoint, bucket, CHUNK_MB
    for k, v in submit.items():
        setattr(cfg.submit, k, v)
    return cfg
