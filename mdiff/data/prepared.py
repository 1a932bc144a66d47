"""The prepared-file contract (docs/data-contracts.md): build, stack, unstack and check.

Everything that reads or writes prepared state, forcing, statics or rollout output goes
through here, so names, units, coordinates and checks live in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from mdiff import variables as V
from mdiff.grid import LatLonGrid

TIME_UNITS = "days since 1850-01-01"
CALENDAR = "proleptic_gregorian"


class PreparedDataError(ValueError):
    """A prepared file does not meet the contract; the message names file, variable, expectation."""

    user_facing = True  # `mdiff` prints it as one line, without a traceback


# ------------------------------------------------------------------------------ time


def parse_month(month: str) -> np.datetime64:
    return np.datetime64(month, "M")


def month_range(first: str, last: str) -> np.ndarray:
    """Month starts first..last inclusive, as datetime64[M]."""
    return np.arange(parse_month(first), parse_month(last) + 1)


def month_of_year(times) -> np.ndarray:
    """1..12 for datetime64 values."""
    t = np.asarray(times).astype("datetime64[M]")
    return (t.astype(int) % 12) + 1


def time_coords(months: np.ndarray) -> dict:
    start = months.astype("datetime64[M]").astype("datetime64[ns]")
    end = (months.astype("datetime64[M]") + 1).astype("datetime64[ns]")
    time = xr.DataArray(start, dims="time", attrs={"standard_name": "time", "long_name": "time",
                                                   "bounds": "time_bnds", "axis": "T"})
    bnds = xr.DataArray(np.stack([start, end], axis=1), dims=("time", "bnds"))
    return {"time": time, "time_bnds": bnds}


TIME_ENCODING = {
    "time": {"units": TIME_UNITS, "calendar": CALENDAR, "dtype": "float64"},
    "time_bnds": {"units": TIME_UNITS, "calendar": CALENDAR, "dtype": "float64"},
}

# ------------------------------------------------------------------------ coordinates


def grid_coords(grid: LatLonGrid) -> dict:
    return {
        "lat": xr.DataArray(grid.lat, dims="lat", attrs={"standard_name": "latitude", "units": "degrees_north",
                                                       "axis": "Y", "bounds": "lat_bnds"}),
        "lon": xr.DataArray(grid.lon, dims="lon", attrs={"standard_name": "longitude", "units": "degrees_east",
                                                       "axis": "X", "bounds": "lon_bnds"}),
        "lat_bnds": xr.DataArray(grid.lat_bounds, dims=("lat", "bnds")),
        "lon_bnds": xr.DataArray(grid.lon_bounds, dims=("lon", "bnds")),
    }


def plev_coord() -> xr.DataArray:
    return xr.DataArray(np.array(V.PRESSURE_LEVELS_HPA, dtype=np.float64) * 100.0, dims="plev",
                        attrs={"standard_name": "air_pressure", "units": "Pa", "axis": "Z",
                               "positive": "down", "long_name": "pressure"})


def skeleton(grid: LatLonGrid, months: np.ndarray | None = None, attrs: dict | None = None) -> xr.Dataset:
    """An empty dataset with the contract's coordinates and bounds."""
    coords = grid_coords(grid)
    data_vars = {"lat_bnds": coords.pop("lat_bnds"), "lon_bnds": coords.pop("lon_bnds")}
    if months is not None:
        tc = time_coords(months)
        coords["time"] = tc["time"]
        data_vars["time_bnds"] = tc["time_bnds"]
    ds = xr.Dataset(data_vars, coords=coords, attrs={"Conventions": "CF-1.8", **(attrs or {})})
    return ds


def _var_attrs(ch: V.Channel) -> dict:
    attrs = {"units": ch.units, "long_name": ch.long_name}
    if ch.standard_name:
        attrs["standard_name"] = ch.standard_name
    return attrs


def _family_attrs(variable: str) -> dict:
    ch = next(c for c in V.ALL if c.variable == variable)
    attrs = _var_attrs(ch)
    if variable in V.PRESSURE_VARIABLES:
        attrs["long_name"] = attrs["long_name"].rsplit(" at ", 1)[0]
    return attrs


# --------------------------------------------------------------- stacking/unstacking


def variable_array(variable: str, data: np.ndarray, leading: tuple[str, ...] = ("time",)) -> xr.DataArray:
    """A file variable with the contract's dims and attributes; pressure variables carry all
    levels of ``variables.PRESSURE_LEVELS_HPA`` in that order on the axis before lat."""
    plev = variable in V.PRESSURE_VARIABLES
    dims = (*leading, "plev", "lat", "lon") if plev else (*leading, "lat", "lon")
    if np.ndim(data) != len(dims):
        raise ValueError(f"{variable}: data of shape {np.shape(data)} does not fit dims {dims}")
    da = xr.DataArray(np.asarray(data, dtype=np.float32), dims=dims, attrs=_family_attrs(variable))
    return da.assign_coords(plev=plev_coord()) if plev else da


def channels_to_dataset(array: np.ndarray, channels: Sequence[V.Channel], ds: xr.Dataset,
                        leading: tuple[str, ...] = ("time",)) -> xr.Dataset:
    """Add ``array`` (*leading, C, lat, lon) as the file variables of ``channels`` to ``ds``.

    Pressure-level channels of one family become one (*leading, plev, lat, lon) variable.
    """
    array = np.asarray(array)
    if array.shape[-3] != len(channels):
        raise ValueError(f"array has {array.shape[-3]} channels, expected {len(channels)}")
    index = {c.name: i for i, c in enumerate(channels)}
    out = ds.copy()
    for variable in V.variables(tuple(channels)):
        members = [c for c in channels if c.variable == variable]
        if variable in V.PRESSURE_VARIABLES:
            levels = [c.level_hpa for c in members]
            if tuple(levels) != V.PRESSURE_LEVELS_HPA:
                raise ValueError(f"{variable}: channels must cover all levels {V.PRESSURE_LEVELS_HPA}")
            data = np.stack([array[..., index[c.name], :, :] for c in members], axis=-3)
        else:
            data = array[..., index[members[0].name], :, :]
        out[variable] = variable_array(variable, data, leading)
    return out


def _where(ds: xr.Dataset, source: str | None) -> str:
    return source or ds.encoding.get("source", "<dataset>")


def check_grid(ds: xr.Dataset, grid: LatLonGrid, source: str | None = None) -> None:
    where = _where(ds, source)
    for name, expected in (("lat", grid.lat), ("lon", grid.lon)):
        if name not in ds.coords:
            raise PreparedDataError(f"{where}: no coordinate {name!r}; expected the {grid.nlat}x{grid.nlon} model grid")
        got = ds[name].values
        if got.shape != expected.shape or not np.allclose(got, expected, atol=1e-6):
            raise PreparedDataError(
                f"{where}: coordinate {name!r} has {got.size} values "
                f"[{got.min() if got.size else 'none'}..{got.max() if got.size else 'none'}]; "
                f"expected {expected.size} values [{expected[0]}..{expected[-1]}] "
                f"(the {grid.nlat}x{grid.nlon} model grid)"
            )


def dataset_to_channels(ds: xr.Dataset, channels: Sequence[V.Channel], source: str | None = None,
                        allow_nan: bool = False) -> np.ndarray:
    """Stack the file variables of ``channels`` into (..., C, lat, lon) float32, with checks."""
    where = _where(ds, source)
    parts = []
    for ch in channels:
        if ch.variable not in ds:
            raise PreparedDataError(
                f"{where}: variable {ch.variable!r} (channel {ch.name}, {ch.long_name}, {ch.units}) "
                f"is missing; found {sorted(ds.data_vars)}"
            )
        da = ds[ch.variable]
        units = da.attrs.get("units")
        if units is not None and units != ch.units:
            raise PreparedDataError(f"{where}: variable {ch.variable!r} has units {units!r}; expected {ch.units!r}")
        if ch.variable in V.PRESSURE_VARIABLES:
            if "plev" not in da.dims:
                raise PreparedDataError(f"{where}: variable {ch.variable!r} has no plev dimension")
            plev = ds["plev"].values
            hits = np.flatnonzero(np.isclose(plev, ch.level_hpa * 100.0))
            if hits.size != 1:
                raise PreparedDataError(
                    f"{where}: variable {ch.variable!r} has no level {ch.level_hpa} hPa "
                    f"({ch.level_hpa * 100} Pa); plev = {plev.tolist()} (expected Pa)"
                )
            da = da.isel(plev=int(hits[0]))
        values = np.asarray(da.transpose(..., "lat", "lon").values, dtype=np.float32)
        if not allow_nan and not np.isfinite(values).all():
            bad = np.argwhere(~np.isfinite(values))[0]
            raise PreparedDataError(
                f"{where}: variable {ch.variable!r} (channel {ch.name}) has {int((~np.isfinite(values)).sum())} "
                f"NaN/Inf values, first at index {tuple(int(i) for i in bad)}; expected finite values"
            )
        parts.append(values)
    return np.stack(parts, axis=-3)


def open_checked(path: str | Path, grid: LatLonGrid | None = None) -> xr.Dataset:
    """Open a prepared NetCDF file, failing clearly on a missing or unreadable/truncated file."""
    path = Path(path)
    if not path.exists():
        raise PreparedDataError(f"{path}: file does not exist")
    try:
        ds = xr.open_dataset(path, decode_times=True)
        ds.load()
    except Exception as err:  # netCDF4/HDF5 raise OSError/RuntimeError on truncated files
        raise PreparedDataError(f"{path}: cannot be read as NetCDF ({err}); truncated or corrupt?") from err
    ds.encoding["source"] = str(path)
    if grid is not None:
        check_grid(ds, grid, str(path))
    return ds


def times_of(ds: xr.Dataset) -> np.ndarray:
    return ds["time"].values.astype("datetime64[M]")


def write(ds: xr.Dataset, path: str | Path, compress: bool = False) -> None:
    """Write a prepared dataset atomically with the contract's encodings.

    Uncompressed by default: deflate of noisy float32 costs more time than the disk it saves.
    """
    from mdiff.fileio import write_netcdf

    encoding = {k: v for k, v in TIME_ENCODING.items() if k in ds.variables}
    for name, da in ds.data_vars.items():
        if da.dtype == np.float32:
            encoding[name] = {"zlib": compress, "complevel": 1, "_FillValue": None}
    for name in ("lat", "lon", "plev", "lat_bnds", "lon_bnds"):
        if name in ds.variables:
            encoding[name] = {"_FillValue": None}
    write_netcdf(ds, path, encoding=encoding)
