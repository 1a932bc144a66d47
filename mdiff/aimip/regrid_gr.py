"""`mdiff cmorize-gr`: the 1-degree (``gr``) AI-MIP files of one member.

Each native-grid (``gn``) file of the member is regridded conservatively (first order,
CDO ``remapcon``, weights computed once per job with ``gencon``) to the regular 1-degree
grid the organisers analyse on (180 x 360 cells, centres at -89.5 .. 89.5 N and
0.5 .. 359.5 E; ``mdiff.grid.ONE_DEGREE``) and written again by CMOR with grid_label
``gr``, so the ``gr`` tree passes the same validation as the ``gn`` one. Runs in the CMOR
environment, like `mdiff cmorize`; CDO is the Debian (or conda-forge) binary.

Conservative remapping keeps area integrals: the global mean of every field and month is
the native one (to float32 rounding; a test checks 1e-5 relative with exact cell areas).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from mdiff import cdo
from mdiff.aimip import drs
from mdiff.aimip.cmorize import CmorizeError, CmorSession, dataset_json, import_cmor
from mdiff.aimip.tables import nominal_resolution
from mdiff.aimip.varmap import load_variable_map
from mdiff.config import Config
from mdiff.grid import ONE_DEGREE, LatLonGrid

log = logging.getLogger("mdiff.aimip.regrid_gr")
MISSING = 1.0e20


def grid_description(cfg: Config) -> str:
    """The ``grid`` attribute of the gr files: what the grid is and how it was made."""
    native = LatLonGrid(cfg.grid.nlat, cfg.grid.nlon)
    return (f"regular 1x1 degree latitude-longitude grid, {ONE_DEGREE.nlat} x {ONE_DEGREE.nlon} "
            "(lat x lon), cell centres at -89.5..89.5 degrees_north and 0.5..359.5 degrees_east; "
            "conservatively regridded (first order, CDO remapcon) from the native equiangular grid "
            f"with poles, {native.nlat} x {native.nlon}, {native.resolution:g} degrees (grid_label gn)")


class Regridded:
    """One regridded variable (CDO's output) with the gn file's time axis, read like a
    rollout by :func:`mdiff.aimip.cmorize.write_variable`."""

    def __init__(self, path: Path, native: Path, variable: str):
        import netCDF4

        self.path, self.variable = path, variable
        self.nc = netCDF4.Dataset(path)
        self.nc.set_auto_mask(False)
        for name, want in (("lat", ONE_DEGREE.lat), ("lon", ONE_DEGREE.lon)):
            got = np.asarray(self.nc.variables[name][:], dtype=np.float64) if name in self.nc.variables else None
            if got is None or got.shape != want.shape or not np.allclose(got, want, atol=1e-6):
                raise CmorizeError(f"{path}: CDO output {name} is not the 1-degree grid "
                                   f"({None if got is None else got.size} values)")
        self.lat, self.lon = ONE_DEGREE.lat, ONE_DEGREE.lon
        self.lat_bnds, self.lon_bnds = ONE_DEGREE.lat_bounds, ONE_DEGREE.lon_bounds
        with netCDF4.Dataset(native) as src:  # time axis and bounds exactly as in the gn file
            t = src.variables["time"]
            self.time_units, self.calendar = t.units, getattr(t, "calendar", "standard")
            self.time = np.asarray(t[:], dtype=np.float64)
            self.time_bnds = np.asarray(src.variables[t.bounds][:], dtype=np.float64)
            self.units = src.variables[variable].units
        var = self.nc.variables[variable]
        if var.shape[0] != self.time.size:
            raise CmorizeError(f"{path}: {variable} has {var.shape[0]} time steps; the gn file {self.time.size}")

    def read(self, variable: str, first: int, stop: int) -> np.ndarray:
        var = self.nc.variables[variable]
        if getattr(var, "units", self.units) != self.units:
            raise CmorizeError(f"{self.path}: {variable} has units {var.units!r}; expected {self.units!r}")
        data = np.asarray(var[first:stop], dtype=np.float32)
        holes = int((np.abs(data) >= MISSING / 10).sum())
        if holes:
            raise CmorizeError(f"{self.path}: {variable} has {holes} missing values after remapping "
                               f"(months {first}..{stop - 1}): the gn field must cover the globe")
        return data

    def close(self) -> None:
        self.nc.close()


def _provenance(native: Path) -> tuple[str, str, str]:
    """(provenance written by cmorize, comment, calendar) of a gn file (CMOR prefixes its
    own line to the history)."""
    import netCDF4

    with netCDF4.Dataset(native) as nc:
        history = str(getattr(nc, "history", "")).strip()
        comment = str(getattr(nc, "comment", ""))
        calendar = getattr(nc.variables["time"], "calendar", "standard")
    return history.splitlines()[-1] if history else "", comment, calendar


def regrid_member(cfg: Config, root: str | Path, experiment: str, member: int,
                  file_list: str | Path | None = None, cdo_exe: str = "cdo") -> list[Path]:
    from mdiff.fileio import write_json

    root = Path(root)
    varmap = load_variable_map()
    native = {f.variable: root / f.relpath
              for f in drs.member_files(cfg.aimip, cfg.periods, varmap, experiment, member, "gn")}
    expected = {f.variable: f for f in drs.member_files(cfg.aimip, cfg.periods, varmap, experiment, member, "gr")}
    missing = [p for p in native.values() if not p.exists()]
    if missing:
        raise CmorizeError(f"{missing[0]}: gn file missing ({len(missing)} of {len(native)} missing): "
                           "the gr files are regridded from the gn files (run cmorize first)")
    cmor = import_cmor()
    written: list[Path] = []
    with CmorSession(cmor, cfg.aimip, root, f".cmorize-gr-{experiment}-r{member}-") as session:
        gridfile = session.stage / "grid.txt"
        gridfile.write_text(ONE_DEGREE.cdo_grid())
        weights = session.stage / "weights.nc"
        t0 = time.perf_counter()
        first = next(iter(native.values()))  # every gn file is on the same horizontal grid
        cdo.run(f"gencon,{gridfile}", first, weights, cdo=cdo_exe, error=CmorizeError)
        log.info("conservative weights %s -> 1 degree: %.1f s", cfg.grid, time.perf_counter() - t0)
        provenance, comment, cal = _provenance(first)
        session.start(dataset_json(
            cfg, experiment, member, session.out, calendar=cal, grid_label="gr", grid=grid_description(cfg),
            nominal=nominal_resolution(ONE_DEGREE.lat_bounds, ONE_DEGREE.lon_bounds),
            history=f"{provenance}; regridded to 1 degree from the gn files with CDO {cdo.version(cdo_exe)} "
                    "remapcon (first-order conservative)", comment=comment))
        for name, spec in varmap.items():
            remapped = session.stage / f"{name}.nc"
            cdo.run(f"remap,{gridfile},{weights}", native[name], remapped, cdo=cdo_exe, error=CmorizeError)
            source = Regridded(remapped, native[name], name)
            # The gn values are already AI-MIP variables: copy them on the same level axis.
            try:
                written.append(session.write(dataclasses.replace(spec, sources=(name,), conversion="identity"),
                                             source, expected[name].relpath))
            finally:
                source.close()
                remapped.unlink()
        session.close()
    if file_list:
        write_json(file_list, {"experiment": experiment, "member": member, "grid": "gr",
                               "files": [str(p) for p in written]})
    return written
