"""Reading what the report compares: rollout ensembles, the reference, the synthetic truth.

Files are opened lazily and read one channel at a time, so a 1.5-degree, 46-year,
multi-member ensemble never sits in memory as a whole. Values come back in *display
units* (precipitation in mm/day, z500 as geopotential height in m, psl in hPa): every
score and figure is in the units a reader expects, and linear rescaling changes no
correlation or ratio.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from mdiff import variables as V
from mdiff.data.prepared import PreparedDataError, check_grid, dataset_to_channels, times_of
from mdiff.grid import LatLonGrid

log = logging.getLogger(__name__)

def display(channel: str) -> V.Display:
    """Display units and label of a state channel, from the variable table (its own units
    unless converted: pr in mm/day, z500 as zg500 in m, psl in hPa)."""
    return V.channel(channel).shown


def open_lazy(path: str | Path, grid: LatLonGrid) -> xr.Dataset:
    """Open a NetCDF file without reading its data; fail clearly if it is missing or unreadable."""
    path = Path(path)
    if not path.exists():
        raise PreparedDataError(f"{path}: file does not exist")
    try:
        ds = xr.open_dataset(path, decode_times=True)
    except Exception as err:  # netCDF4/HDF5 raise OSError/RuntimeError on truncated files
        raise PreparedDataError(f"{path}: cannot be read as NetCDF ({err}); truncated or corrupt?") from err
    ds.encoding["source"] = str(path)
    check_grid(ds, grid, str(path))
    return ds


def _level(da: xr.DataArray, ch: V.Channel, where: str) -> xr.DataArray:
    if ch.variable not in V.PRESSURE_VARIABLES:
        return da
    if "plev" not in da.dims:
        raise PreparedDataError(f"{where}: variable {da.name!r} has no plev dimension (channel {ch.name})")
    hits = np.flatnonzero(np.isclose(da["plev"].values, ch.level_hpa * 100.0))
    if hits.size != 1:
        raise PreparedDataError(f"{where}: variable {da.name!r} has no level {ch.level_hpa * 100} Pa; "
                                f"plev = {da['plev'].values.tolist()} (expected Pa)")
    return da.isel(plev=int(hits[0]))


class Ensemble:
    """Members of one run, each member a sequence of files concatenated in time.

    ``members`` lists, per *source*, the files of that source in time order. A source
    whose variables carry a ``member`` dimension (a rollout batch) contributes all its
    members; one without (a prepared-state year, a truth realisation) contributes one.
    """

    def __init__(self, name: str, sources: Sequence[Sequence[str | Path]], grid: LatLonGrid):
        if not sources or not all(sources):
            raise PreparedDataError(f"{name}: no input files")
        self.name = name
        self.grid = grid
        self.sources = [[(str(p), open_lazy(p, grid)) for p in files] for files in sources]

    def close(self) -> None:
        for files in self.sources:
            for _, ds in files:
                ds.close()

    @property
    def paths(self) -> list[str]:
        return [p for files in self.sources for p, _ in files]

    def field(self, channel: str, months: np.ndarray) -> np.ndarray:
        """Channel ``channel`` over ``months`` as (member, time, lat, lon) float32, display units."""
        ch = V.channel(channel)
        months = np.asarray(months).astype("datetime64[M]")
        out = [self._source_field(files, ch, months) for files in self.sources]
        return np.concatenate(out, axis=0) * np.float32(display(channel).factor)

    def _source_field(self, files, ch: V.Channel, months: np.ndarray) -> np.ndarray:
        parts: list[np.ndarray] = []
        found: list[np.ndarray] = []
        for path, ds in files:
            t = times_of(ds)
            idx = np.flatnonzero(np.isin(t, months))
            if idx.size == 0:
                continue
            sub = ds.isel(time=idx)
            values = dataset_to_channels(sub, [ch], source=path, allow_nan=True)[..., 0, :, :]
            if "member" not in ds[ch.variable].dims:
                values = values[None]
            elif ds[ch.variable].dims[0] != "member":
                raise PreparedDataError(f"{path}: variable {ch.variable!r} has dims {ds[ch.variable].dims}; "
                                        f"expected member first")
            parts.append(values)
            found.append(t[idx])
        got = np.concatenate(found) if found else np.array([], dtype="datetime64[M]")
        if got.size != months.size or not np.array_equal(got, months):
            missing = np.setdiff1d(months, got)
            names = ", ".join(p for p, _ in files[:3]) + (" ..." if len(files) > 3 else "")
            detail = (f"missing {missing.size} month(s), first {missing[0]}" if missing.size
                      else "months repeated or out of order")
            raise PreparedDataError(f"{self.name} ({names}): variable {ch.variable!r} does not cover "
                                    f"{months[0]}..{months[-1]} once in order: {detail}")
        return np.concatenate(parts, axis=1)


def rollout_experiment(path: str | Path) -> str:
    """The experiment of a rollout file: its ``experiment_id`` attribute (checked against the folder)."""
    path = Path(path)
    if not path.exists():
        raise PreparedDataError(f"{path}: file does not exist")
    try:
        with xr.open_dataset(path) as ds:
            exp = ds.attrs.get("experiment_id")
    except Exception as err:
        raise PreparedDataError(f"{path}: cannot be read as NetCDF ({err}); truncated or corrupt?") from err
    if exp is None:
        raise PreparedDataError(f"{path}: no global attribute 'experiment_id' (docs/data-contracts.md)")
    if path.parent.name != exp and path.parent.name.startswith("aimip"):
        raise PreparedDataError(f"{path}: experiment_id {exp!r} disagrees with its folder {path.parent.name!r}")
    return str(exp)


def group_rollouts(paths: Sequence[str | Path]) -> dict[str, list[Path]]:
    """Rollout files by experiment, member batches in file-name (= member) order."""
    out: dict[str, list[Path]] = {}
    for p in paths:
        out.setdefault(rollout_experiment(p), []).append(Path(p))
    return {exp: sorted(files, key=lambda p: p.name) for exp, files in out.items()}


# --------------------------------------------------------------------------- truth


def read_map(path: str | Path, name: str, channel: str, grid: LatLonGrid, **isel) -> np.ndarray:
    """A truth map ``name`` (e.g. ``enso_pattern_tas``) at ``channel``'s level, display units."""
    ds = open_lazy(path, grid)
    try:
        if name not in ds:
            raise PreparedDataError(f"{path}: variable {name!r} is missing; found {sorted(ds.data_vars)}")
        da = _level(ds[name], V.channel(channel), str(path)).isel(**isel)
        if set(da.dims) != {"lat", "lon"}:
            raise PreparedDataError(f"{path}: variable {name!r} has dims {da.dims} after selection; "
                                    f"expected (lat, lon)")
        return np.asarray(da.transpose("lat", "lon").values, dtype=np.float64) * display(channel).factor
    finally:
        ds.close()


def read_response(path: str | Path, channel: str, experiment: str, grid: LatLonGrid) -> np.ndarray:
    """The exact time-mean response of ``channel`` in ``experiment`` from truth/response.nc."""
    ds = open_lazy(path, grid)
    try:
        if "experiment" not in ds.coords:
            raise PreparedDataError(f"{path}: no coordinate 'experiment'; expected "
                                    f"['aimip-p2k', 'aimip-p4k'] as the leading dimension")
        names = [str(e) for e in ds["experiment"].values]
        if experiment not in names:
            raise PreparedDataError(f"{path}: experiment {experiment!r} not in {names}")
    finally:
        ds.close()
    return read_map(path, V.channel(channel).variable, channel, grid, experiment=names.index(experiment))


def read_series(path: str | Path, name: str, months: np.ndarray, grid: LatLonGrid) -> np.ndarray:
    """A truth time series (e.g. ``enso_index``) over ``months``."""
    ds = open_lazy(path, grid)
    try:
        if name not in ds:
            raise PreparedDataError(f"{path}: variable {name!r} is missing; found {sorted(ds.data_vars)}")
        t = times_of(ds)
        idx = np.flatnonzero(np.isin(t, months))
        if idx.size != np.asarray(months).size:
            raise PreparedDataError(f"{path}: {name!r} covers {idx.size} of the {np.asarray(months).size} "
                                    f"analysis months")
        return np.asarray(ds[name].isel(time=idx).values, dtype=np.float64)
    finally:
        ds.close()


def realization_files(truth_dir: str | Path) -> list[Path]:
    """truth/realizations/r{k}.nc in k order (k = 1..R-1; realisation 0 is the prepared state)."""
    folder = Path(truth_dir) / "realizations"
    if not folder.is_dir():
        raise PreparedDataError(f"{folder}: folder of truth realisations does not exist")
    files = [p for p in folder.glob("r*.nc") if p.stem[1:].isdigit()]
    return sorted(files, key=lambda p: int(p.stem[1:]))


def read_static(path: str | Path, name: str, grid: LatLonGrid) -> np.ndarray:
    ds = open_lazy(path, grid)
    try:
        if name not in ds:
            raise PreparedDataError(f"{path}: variable {name!r} is missing; found {sorted(ds.data_vars)}")
        return np.asarray(ds[name].transpose("lat", "lon").values, dtype=np.float64)
    finally:
        ds.close()


def read_forcing_sst(path: str | Path, months: np.ndarray, grid: LatLonGrid) -> np.ndarray:
    """Forcing SST (K; NaN over land) over ``months`` as (time, lat, lon)."""
    ens = Ensemble("forcing", [[path]], grid)
    try:
        return ens.field("sst", months)[0]
    finally:
        ens.close()
