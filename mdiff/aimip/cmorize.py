"""`mdiff cmorize`: rewrite one member of one experiment's rollout as AI-MIP files with CMOR.

Runs in the CMOR environment (Debian python3 + numpy 1.x, or conda's cmor): reads the
rollout with netCDF4 directly, converts with the variable map derived from the variable
table (mdiff.aimip.varmap) and writes every variable with one generic writer. CMOR writes into a private staging
folder; each file is checked against its expected AI-MIP path and only then moved into
the tree, so an interrupted job never leaves a file that looks complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from mdiff import protocol
from mdiff.aimip import drs
from mdiff.aimip.cmor_env import preload_libuuid
from mdiff.aimip.tables import (
    AIMIP_LEVELS_PA,
    TABLE_ID,
    license_text,
    nominal_resolution,
    write_run_tables,
)
from mdiff.aimip.varmap import VarSpec, load_variable_map, source_units
from mdiff.config import AimipConfig, Config
from mdiff.grid import LatLonGrid

log = logging.getLogger("mdiff.aimip.cmorize")


class CmorizeError(ValueError):
    user_facing = True


def import_cmor():
    """Import CMOR with the two fixes Debian's python3-cmor 3.7 needs (see docs/aimip.md)."""
    preload_libuuid()
    if not hasattr(np, "float"):  # cmor 3.7's python wrapper still uses np.float / np.int
        np.float = float  # type: ignore[attr-defined]
        np.int = int  # type: ignore[attr-defined]
    try:
        import cmor
    except ImportError as err:
        raise CmorizeError(f"cannot import CMOR ({err}): run `mdiff cmorize` in the CMOR environment "
                           "(.venv-cmor/bin/mdiff, or conda env envs/cmor.yaml)") from err
    return cmor


# ------------------------------------------------------------------------- reading


class Rollout:
    """One member of a rollout batch file, read lazily with netCDF4."""

    def __init__(self, path: str | Path, experiment: str, member: int, cfg: Config):
        import netCDF4

        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: rollout file does not exist")
        try:
            self.nc = netCDF4.Dataset(self.path)
        except OSError as err:
            raise CmorizeError(f"{self.path}: cannot be read as NetCDF ({err})") from err
        self.nc.set_auto_mask(False)
        nc = self.nc
        got = getattr(nc, "experiment_id", None)
        if got != experiment:
            raise CmorizeError(f"{self.path}: attribute experiment_id = {got!r}; expected {experiment!r}")
        members = [int(m) for m in nc.variables["member"][:]]
        if member not in members:
            raise CmorizeError(f"{self.path}: member {member} not in the file's members {members}")
        self.index = members.index(member)
        self.attrs = {k: nc.getncattr(k) for k in nc.ncattrs()}
        self.seed = int(nc.variables["member_seed"][self.index]) if "member_seed" in nc.variables else None
        self._check_grid(LatLonGrid(cfg.grid.nlat, cfg.grid.nlon))
        self._read_time(cfg)
        plev = np.asarray(nc.variables["plev"][:], dtype=np.float64)
        if plev.shape != (len(AIMIP_LEVELS_PA),) or not np.allclose(plev, AIMIP_LEVELS_PA):
            raise CmorizeError(f"{self.path}: plev = {plev.tolist()}; expected {list(AIMIP_LEVELS_PA)} Pa")

    def _check_grid(self, grid: LatLonGrid) -> None:
        for name, expected in (("lat", grid.lat), ("lon", grid.lon)):
            got = np.asarray(self.nc.variables[name][:], dtype=np.float64)
            if got.shape != expected.shape or not np.allclose(got, expected, atol=1e-6):
                raise CmorizeError(f"{self.path}: {name} has {got.size} values; expected the "
                                   f"{grid.nlat}x{grid.nlon} grid of the config")
        self.lat, self.lon = grid.lat, grid.lon
        self.lat_bnds, self.lon_bnds = grid.lat_bounds, grid.lon_bounds

    def _read_time(self, cfg: Config) -> None:
        import cftime

        t = self.nc.variables["time"]
        b = self.nc.variables[t.bounds] if hasattr(t, "bounds") else self.nc.variables["time_bnds"]
        self.time_units = t.units
        self.calendar = getattr(t, "calendar", "standard")
        bounds = np.asarray(b[:], dtype=np.float64)
        starts = cftime.num2date(bounds[:, 0], self.time_units, self.calendar)
        got = [f"{d.year:04d}-{d.month:02d}" for d in starts]
        expected = protocol.months(cfg.periods.run_start, cfg.periods.run_end)
        if got != expected:
            missing = sorted(set(expected) - set(got))[:3]
            raise CmorizeError(f"{self.path}: time covers {len(got)} months {got[:1]}..{got[-1:]}; expected "
                               f"{len(expected)} months {cfg.periods.run_start}..{cfg.periods.run_end} "
                               f"(missing e.g. {missing})")
        if not np.array_equal(bounds[1:, 0], bounds[:-1, 1]):
            raise CmorizeError(f"{self.path}: time_bnds are not contiguous")
        self.time_bnds = bounds
        self.time = bounds.mean(axis=1)  # mid-month: the centre of each averaging interval

    def read(self, variable: str, first: int, stop: int) -> np.ndarray:
        """(months, [plev,] lat, lon) of this member, float32, units checked."""
        if variable not in self.nc.variables:
            raise CmorizeError(f"{self.path}: variable {variable!r} missing; found "
                               f"{sorted(self.nc.variables)}")
        var = self.nc.variables[variable]
        units = getattr(var, "units", None)
        if units != source_units(variable):
            raise CmorizeError(f"{self.path}: variable {variable!r} has units {units!r}; "
                               f"expected {source_units(variable)!r}")
        dims = var.dimensions
        if dims[:2] != ("member", "time") or dims[-2:] != ("lat", "lon"):
            raise CmorizeError(f"{self.path}: variable {variable!r} has dimensions {dims}; expected "
                               "(member, time, [plev,] lat, lon)")
        return np.asarray(var[self.index, first:stop], dtype=np.float32)

    def close(self) -> None:
        self.nc.close()


# ------------------------------------------------------------------------- writing


def dataset_attributes(cfg: Config, experiment: str, member: int, rollout: Rollout, outpath: Path) -> dict:
    """CMOR's dataset JSON for the native-grid (gn) files of one member."""
    grid = LatLonGrid(cfg.grid.nlat, cfg.grid.nlon)
    seed = f"; member seed {rollout.seed}" if rollout.seed is not None else ""
    return dataset_json(
        cfg, experiment, member, outpath, calendar=rollout.calendar, grid_label="gn",
        grid=f"native equiangular latitude-longitude grid with poles, {grid.nlat} x {grid.nlon} "
             f"(lat x lon), {grid.resolution:g} degrees",
        nominal=nominal_resolution(grid.lat_bounds, grid.lon_bounds),
        history=f"rollout {rollout.path.name}: checkpoint {rollout.attrs.get('checkpoint_sha256', '?')}, "
                f"mdiff {rollout.attrs.get('mdiff_version', '?')}{seed}",
        comment=f"SST offset {rollout.attrs.get('sst_offset_K', '?')} K over the ocean")


def dataset_json(cfg: Config, experiment: str, member: int, outpath: Path, *, calendar: str,
                 grid_label: str, grid: str, nominal: str, history: str, comment: str) -> dict:
    """CMOR's dataset JSON: identity and vocabulary from the config, grid and provenance given."""
    a = cfg.aimip
    return {
        "_controlled_vocabulary_file": "CMIP6_CV.json",
        "_AXIS_ENTRY_FILE": "CMIP6_coordinate.json",
        "_FORMULA_VAR_FILE": "CMIP6_formula_terms.json",
        "_cmip6_option": "CMIP6",
        "mip_era": "CMIP6",
        "activity_id": "AIMIP",
        "experiment_id": experiment,
        "sub_experiment_id": "none",
        "sub_experiment": "none",
        "realization_index": str(member),
        "initialization_index": "1",
        "physics_index": "1",
        "forcing_index": "1",
        "source_type": "AGCM",
        "parent_experiment_id": "no parent",
        "parent_activity_id": "no parent",
        "institution_id": a.institution_id,
        "institution": a.institution,
        "source_id": a.source_id,
        "source": a.source,
        "calendar": calendar,
        "grid": grid,
        "grid_label": grid_label,
        "nominal_resolution": nominal,
        "license": license_text(a),
        "contact": a.contact,
        "version": a.version,
        "outpath": str(outpath),
        "output_path_template": drs.cmor_path_template(a),
        "output_file_template": "<variable_id><table><source_id><experiment_id><_member_id><grid_label>",
        "tracking_prefix": "hdl:21.14100",
        "history": history,
        "comment": comment,
        "references": "",
        "title": f"{a.source_id} output prepared for AI-MIP",
    }


def write_variable(cmor, spec: VarSpec, rollout: Rollout, block: int, deflate: int) -> Path:
    """The one generic writer: axes, variable, data in blocks of months, close."""
    axes = [
        cmor.axis("time", units=rollout.time_units, coord_vals=rollout.time, cell_bounds=rollout.time_bnds),
    ]
    if spec.has_plev:
        axes.append(cmor.axis(spec.level_axis, units="Pa", coord_vals=np.asarray(spec.levels_pa)))
    axes += [
        cmor.axis("latitude", units="degrees_north", coord_vals=rollout.lat, cell_bounds=rollout.lat_bnds),
        cmor.axis("longitude", units="degrees_east", coord_vals=rollout.lon, cell_bounds=rollout.lon_bnds),
    ]
    var_id = cmor.variable(spec.name, spec.units, axes, missing_value=1.0e20)
    cmor.set_deflate(var_id, 1 if deflate else 0, 1 if deflate else 0, deflate)
    n = rollout.time.size
    for first in range(0, n, block):
        stop = min(first + block, n)
        sources = [rollout.read(s, first, stop) for s in spec.sources]
        data = spec.convert(*sources)
        if spec.has_plev and data.ndim == 3:  # a single-level field (zg): plev of length 1
            data = data[:, None]
        if not np.isfinite(data).all():
            raise CmorizeError(f"{rollout.path}: {spec.name} from {list(spec.sources)} has "
                               f"{int((~np.isfinite(data)).sum())} non-finite values in months {first}..{stop - 1}")
        status = cmor.write(var_id, np.ascontiguousarray(data), ntimes_passed=stop - first)
        if status != 0:
            raise CmorizeError(f"CMOR failed writing {spec.name} months {first}..{stop - 1} (status {status})")
    path = cmor.close(var_id, file_name=True)
    if not path:
        raise CmorizeError(f"CMOR did not close {spec.name}")
    return Path(path)


def cmorize(cfg: Config, rollout_path: str | Path, experiment: str, member: int, root: str | Path,
            file_list: str | Path | None = None) -> list[Path]:
    from tqdm import tqdm

    from mdiff.fileio import write_json

    cmor = import_cmor()
    varmap = load_variable_map()
    expected = {f.variable: f for f in drs.member_files(cfg.aimip, cfg.periods, varmap, experiment, member)}
    rollout = Rollout(rollout_path, experiment, member, cfg)
    written = []
    try:
        with CmorSession(cmor, cfg.aimip, Path(root), f".cmorize-{experiment}-r{member}-") as session:
            session.start(dataset_attributes(cfg, experiment, member, rollout, session.out))
            for name, spec in tqdm(varmap.items(), desc=f"cmorize {experiment} r{member}", unit="var"):
                written.append(session.write(spec, rollout, expected[name].relpath))
            session.close()
    finally:
        rollout.close()
    if file_list:
        write_json(file_list, {"experiment": experiment, "member": member, "rollout": str(rollout_path),
                               "files": [str(p) for p in written]})
    return written


class CmorSession:
    """One CMOR job in a private staging folder beside the tree (same file system: the final
    move is a rename): the run's tables, CMOR's log and the dataset attributes; every file
    CMOR writes is checked against its AI-MIP path, and only then moved into the tree."""

    def __init__(self, cmor, aimip: AimipConfig, root: Path, prefix: str):
        self.cmor, self.aimip, self.root = cmor, aimip, root
        root.mkdir(parents=True, exist_ok=True)
        self.stage = Path(tempfile.mkdtemp(prefix=prefix, dir=root.parent))
        self.out = self.stage / "out"
        self.log = self.stage / "cmor.log"

    def __enter__(self) -> CmorSession:
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)

    def start(self, attributes: dict) -> None:
        """CMOR set up with the run's tables and these dataset attributes (dataset_json)."""
        tables = write_run_tables(self.aimip, self.stage / "tables")
        self.out.mkdir()
        self.cmor.setup(inpath=str(tables), netcdf_file_action=self.cmor.CMOR_REPLACE, logfile=str(self.log),
                        create_subdirectories=1)
        user_json = self.stage / "dataset.json"
        user_json.write_text(json.dumps(attributes, indent=1))
        cmor_call(self.cmor.dataset_json, self.log, str(user_json))
        cmor_call(self.cmor.load_table, self.log, str(tables / f"CMIP6_{TABLE_ID}.json"))

    def write(self, spec: VarSpec, source, want: Path) -> Path:
        """Write one variable from ``source`` (a Rollout, or anything with its ``read`` and
        axes) and move it to ``root / want``; returns that path."""
        t0 = time.perf_counter()
        path = cmor_call(write_variable, self.log, self.cmor, spec, source, self.aimip.block_months,
                         self.aimip.deflate_level)
        rel = path.relative_to(self.out)
        if rel != want:
            raise CmorizeError(f"CMOR wrote {spec.name} as {rel}; expected {want} (check aimip.* config "
                               "and the run period)")
        final = self.root / want
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, final)
        log.info("%s: %s (%.1f s)", spec.name, final, time.perf_counter() - t0)
        return final

    def close(self) -> None:
        self.cmor.close()


def cmor_call(fn, cmor_log: Path, *args):
    """Call into CMOR; on failure raise with the tail of CMOR's own log (it names the cause)."""
    try:
        result = fn(*args)
    except CmorizeError:
        raise
    except Exception as err:
        tail = cmor_log.read_text(errors="replace")[-2000:] if cmor_log.exists() else ""
        raise CmorizeError(f"CMOR failed in {getattr(fn, '__name__', fn)}: {err}\n{tail}") from err
    if isinstance(result, int) and result != 0 and fn.__name__ != "load_table":
        tail = cmor_log.read_text(errors="replace")[-2000:] if cmor_log.exists() else ""
        raise CmorizeError(f"CMOR {fn.__name__} returned {result}\n{tail}")
    return result
