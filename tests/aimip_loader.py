"""A minimal re-implementation of the AI-MIP organisers' data loader, for tests.

The organisers evaluate submissions with ``open_aimip_data`` in ai2cm/AIMIP
``evaluations/notebooks/aimip_data_utils.py``. Its code cannot be copied here; this module
re-implements, from the facts recorded in the project's AIMIP notes (AIMIP.md), the two
things a submission must satisfy for it:

- the folder structure ``<institution>/<source_id>/<experiment>/<member>/<table>/<variable>/
  <grid>/<version>/`` with ``<table>`` = ``Amon`` (not the frequency ``mon``), and file
  names ``<var>_Amon_<source_id>_<experiment>_<member>_<grid>_<YYYYMM>-<YYYYMM>.nc``;
- the selection ``plev=[50000.]`` along a ``plev`` *dimension* on every variable that has
  one (a ``zg`` whose 500 hPa is a scalar coordinate makes xarray raise ``ValueError:
  Could not automatically create PandasIndex for coord 'plev' with 0 dimensions``).

It is not the organisers' code: it checks our tree against those two rules only.

    python tests/aimip_loader.py results/synthetic/aimip   # every experiment x member x variable
"""

from __future__ import annotations

import sys
from pathlib import Path

import xarray as xr

EVALUATION_VARIABLES = ("ta", "hus", "ua", "va", "zg", "ps", "psl", "ts", "tas", "huss", "uas", "vas", "pr")
PLEV_SELECTION = [50000.0]


class MissingData(FileNotFoundError):
    pass


def variable_path(root, institution, source_id, experiment, member, variable, table="Amon", grid="gn",
                  version=None) -> Path:
    folder = Path(root, institution, source_id, experiment, member, table, variable, grid)
    versions = sorted(p.name for p in folder.glob("v*") if p.is_dir())
    if not versions:
        raise MissingData(f"{folder}: no version folder")
    chosen = version or versions[-1]  # the latest version unless one is asked for
    files = sorted((folder / chosen).glob(f"{variable}_{table}_{source_id}_{experiment}_{member}_{grid}_*.nc"))
    if len(files) != 1:
        raise MissingData(f"{folder / chosen}: expected one {variable} file, found {len(files)}")
    return files[0]


def open_aimip_data(root, institution, source_id, experiment, member, variables=EVALUATION_VARIABLES,
                    table="Amon", grid="gn", version=None) -> xr.Dataset:
    """One member of one experiment: every variable, 3-D ones at plev=[50000.], merged."""
    parts = []
    for v in variables:
        ds = xr.open_dataset(variable_path(root, institution, source_id, experiment, member, v, table, grid,
                                           version), decode_times=True)
        da = ds[v]
        if "plev" in ds.coords:
            da = da.sel(plev=PLEV_SELECTION)
        parts.append(da.to_dataset(name=v))
    return xr.merge(parts, compat="override", join="exact")


def open_everything(root, grid="gn") -> dict[tuple[str, str], xr.Dataset]:
    """Every (experiment, member) of a tree with a single institution and source."""
    root = Path(root)
    (inst,) = [p.name for p in root.iterdir() if p.is_dir()]
    (source,) = [p.name for p in (root / inst).iterdir() if p.is_dir()]
    out = {}
    for exp in sorted(p.name for p in (root / inst / source).iterdir() if p.is_dir() and p.name != "weights"):
        for member in sorted(p.name for p in (root / inst / source / exp).iterdir() if p.is_dir()):
            out[exp, member] = open_aimip_data(root, inst, source, exp, member, grid=grid)
    return out


if __name__ == "__main__":
    for grid in sys.argv[2:] or ["gn"]:
        opened = open_everything(sys.argv[1], grid)
        for (exp, member), ds in opened.items():
            print(f"{grid} {exp} {member}: {len(ds.data_vars)} variables, {ds.sizes['time']} months, "
                  f"plev {ds['plev'].values.tolist()} Pa")
            ds.close()
        print(f"{grid}: opened {len(opened)} experiment x member combinations")
