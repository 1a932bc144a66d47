"""`mdiff fetch-era5`: raw ERA5 monthly means from the CDS API, or a local copy, checked.

What is fetched derives from the variable table (mdiff.variables) only. Requests are
grouped per data set and level set, so every request asks for exactly the variables and
levels the table needs:

- ``pressure``: T, Q, U, V on the 7 levels (pressure-level monthly means), per year;
- ``pressure_500``: geopotential at 500 hPa only, per year;
- ``single``: the single-level state fields and the training forcing (SST, sea ice), per year;
- ``invariant``: the statics (orography statistics, land-sea mask), once.

``era5.source: cds`` submits the requests through ``ecmwf-datastores-client`` (the
library that ``cdsapi`` >= 0.7.5 itself uses), with credentials from the user's standard
CDS client configuration (``~/.cdsapirc``, ``CDSAPI_RC``, or ``CDSAPI_URL``/``CDSAPI_KEY``)
read by ``cdsapi``; the key is never logged. The result is downloaded by
``mdiff.data.forcing.download`` (retries with backoff, resume after a cut, size + sha256
recorded in a sidecar; a finished file is never fetched again).
``era5.source: local`` checks existing files matched by glob patterns in the config.
Either way the files are checked: readable to the last month, every variable present,
a regular global latitude-longitude grid, every month of the year that is needed.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import xarray as xr

from mdiff import variables as V
from mdiff.config import Era5Config
from mdiff.data.prepared import PreparedDataError, month_range

log = logging.getLogger(__name__)

INVARIANT = V.ERA5_INVARIANT
PRODUCT_TYPE = "monthly_averaged_reanalysis"

# Names that ERA5 files use besides the table's short name (the new CDS writes some
# GRIB2-style names, e.g. avg_tprate for the mean total precipitation rate; the AI-MIP
# forcing file uses long names).
ALIASES: dict[str, tuple[str, ...]] = {
    "mtpr": ("avg_tprate",),
    "siconc": ("ci",),
}

# Unit spellings found in ERA5 / CF files besides the table's own and ERA5's ``**`` exponents
# (``m**2 s**-2`` for ``m2 s-2``), per table unit. A value outside these is an error.
UNIT_SPELLINGS: dict[str, tuple[str, ...]] = {
    "K": ("kelvin",),
    "1": ("kg kg-1", "kg/kg", "(0 - 1)", "0-1", "~", "dimensionless", "fraction", ""),
    "m s-1": ("m/s",),
    "m2 s-2": ("m^2/s^2",),
    "radians": ("rad", "radian"),
}


def unit_spellings(units: str) -> tuple[str, ...]:
    """Spellings of the table's ``units`` that files may use (ERA5's ``**`` exponents aside)."""
    return (units, *UNIT_SPELLINGS.get(units, ()))


# -------------------------------------------------------------------------- the groups

GROUPS = V.ERA5_GROUPS  # group -> (CDS data set, channels, levels), from the variable table
YEARLY_GROUPS: tuple[str, ...] = tuple(g for g in GROUPS if g != INVARIANT)


def group_channels(group: str) -> tuple[V.Channel, ...]:
    if group not in GROUPS:
        raise ValueError(f"unknown ERA5 group {group!r}; expected one of {list(GROUPS)}")
    return GROUPS[group][1]


def year_months(year: int, run_start: str, run_end: str) -> tuple[str, str] | None:
    """(first, last) month YYYY-MM of ``year`` within [run_start, run_end], or None."""
    first, last = max(run_start, f"{year:04d}-01"), min(run_end, f"{year:04d}-12")
    return (first, last) if first <= last else None


def cds_request(group: str, year: int, months: list[int]) -> tuple[str, dict]:
    """(data set, request) for one group and year, exactly the table's variables and levels."""
    dataset, channels, levels = GROUPS[group] if group in GROUPS else (None, None, None)
    if dataset is None:
        raise ValueError(f"unknown ERA5 group {group!r}; expected one of {list(GROUPS)}")
    if not months:
        raise ValueError(f"ERA5 group {group}, year {year}: no months requested")
    request = {
        "product_type": [PRODUCT_TYPE],
        "variable": list(dict.fromkeys(c.era5_name for c in channels)),
        "year": [f"{year:04d}"],
        "month": [f"{m:02d}" for m in months],
        "time": ["00:00"],
        "data_format": "netcdf",
        "download_format": "unarchived",
    }
    if levels:
        request["pressure_level"] = [str(p) for p in levels]
    return dataset, request


# ----------------------------------------------------------------------- reading files


def open_raw(path: str | os.PathLike) -> xr.Dataset:
    """Open a raw file lazily, failing clearly when it is missing or not NetCDF."""
    path = Path(path)
    if not path.exists():
        raise PreparedDataError(f"{path}: raw file does not exist")
    try:
        return xr.open_dataset(path, decode_times=True, cache=False)
    except Exception as err:
        raise PreparedDataError(f"{path}: cannot be read as NetCDF ({err}); truncated or corrupt?") from err


def source_names(ch: V.Channel) -> tuple[str, ...]:
    """Names a channel's field may carry in a raw file, preferred first."""
    return (ch.era5_short, *ALIASES.get(ch.era5_short, ()), ch.era5_name)


def find_name(ds: xr.Dataset, ch: V.Channel) -> str | None:
    return next((n for n in source_names(ch) if n in ds.data_vars), None)


def coord_name(ds: xr.Dataset, candidates: tuple[str, ...]) -> str | None:
    return next((n for n in candidates if n in ds.coords or n in ds.dims), None)


TIME_NAMES = ("time", "valid_time")
LEVEL_NAMES = ("pressure_level", "level", "plev", "isobaricInhPa")
LAT_NAMES = ("latitude", "lat")
LON_NAMES = ("longitude", "lon")


def level_hpa(ds: xr.Dataset, where: str) -> np.ndarray:
    name = coord_name(ds, LEVEL_NAMES)
    if name is None:
        raise PreparedDataError(f"{where}: no pressure-level coordinate (looked for {LEVEL_NAMES})")
    values = np.asarray(ds[name].values, dtype=np.float64)
    units = ds[name].attrs.get("units", "hPa")
    if units == "Pa":
        return values / 100.0
    if units in ("hPa", "millibars", "mbar", "hectopascal"):
        return values
    raise PreparedDataError(f"{where}: pressure levels in {units!r}; expected hPa or Pa")


def check_units(units: str | None, ch: V.Channel, name: str, where: str) -> None:
    if units is None:
        return  # files without units attributes are taken at their word
    if units.strip().replace("**", "") not in unit_spellings(ch.units):
        raise PreparedDataError(
            f"{where}: variable {name!r} (channel {ch.name}) has units {units!r}; expected {ch.units!r} "
            f"(accepted spellings: {list(unit_spellings(ch.units))}, exponents also as **)"
        )


def source_grid(ds: xr.Dataset, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon) of a regular global latitude-longitude grid with both poles, else an error."""
    lat_name, lon_name = coord_name(ds, LAT_NAMES), coord_name(ds, LON_NAMES)
    if lat_name is None or lon_name is None:
        raise PreparedDataError(f"{where}: no latitude/longitude coordinates (looked for {LAT_NAMES}, {LON_NAMES})")
    lat = np.asarray(ds[lat_name].values, dtype=np.float64)
    lon = np.asarray(ds[lon_name].values, dtype=np.float64)
    ok = (
        lat.ndim == 1 and lon.ndim == 1 and lat.size >= 3 and lon.size >= 4
        and np.isclose(abs(lat[0]), 90.0) and np.isclose(lat[0], -lat[-1])
        and np.allclose(np.diff(lat), lat[1] - lat[0], atol=1e-6)
        and np.allclose(np.diff(lon), 360.0 / lon.size, atol=1e-6)
    )
    if not ok:
        raise PreparedDataError(
            f"{where}: grid {lat.size}x{lon.size} (lat {lat[:1]}..{lat[-1:]}, lon {lon[:1]}..{lon[-1:]}) is not "
            f"a regular global latitude-longitude grid with both poles, as ERA5 (721x1440) is"
        )
    return lat, lon


def file_months(ds: xr.Dataset, where: str) -> np.ndarray:
    name = coord_name(ds, TIME_NAMES)
    if name is None:
        raise PreparedDataError(f"{where}: no time coordinate (looked for {TIME_NAMES})")
    return np.atleast_1d(ds[name].values).astype("datetime64[M]")


def locate(paths: list[str | os.PathLike], channels: tuple[V.Channel, ...],
           months: np.ndarray | None = None) -> tuple[dict[str, tuple[str, str]], tuple[int, int]]:
    """Find each channel's field in raw files, with checks; returns ({channel: (file, name)}, grid).

    Checks: every file readable, on one regular global grid; every channel present (at its
    pressure level), with known units; ``months`` (datetime64[M]) all present (None: any
    time, for the invariants). The last time step of every variable is read, which fails on
    a truncated file.
    """
    found: dict[str, tuple[str, str]] = {}
    read: set[tuple[str, str]] = set()  # (file, variable) already read to the last step
    grid = None
    for path in dict.fromkeys(map(str, paths)):
        where = path
        with open_raw(path) as ds:
            lat, lon = source_grid(ds, where)
            if grid is not None and grid != (lat.size, lon.size):
                raise PreparedDataError(f"{where}: grid {lat.size}x{lon.size} differs from the "
                                        f"{grid[0]}x{grid[1]} grid of {paths[0]}")
            grid = (lat.size, lon.size)
            for ch in channels:
                name = find_name(ds, ch)
                if name is None or ch.name in found:
                    continue
                da = ds[name]
                check_units(da.attrs.get("units"), ch, name, where)
                if ch.era5_dataset == V.ERA5_PRESSURE_LEVELS:
                    if not np.isclose(level_hpa(ds, where), ch.level_hpa).any():
                        continue
                found[ch.name] = (where, name)
                if (where, name) in read:
                    continue
                read.add((where, name))
                tname = coord_name(ds, TIME_NAMES)
                if months is not None:
                    have = file_months(ds, where)
                    lacking = np.setdiff1d(months, have)
                    if lacking.size:
                        raise PreparedDataError(f"{where}: variable {name!r} lacks months "
                                                f"{[str(m) for m in lacking]}; has {have[0]}..{have[-1]}")
                try:
                    last = da.isel({tname: -1}) if tname in da.dims else da
                    np.asarray(last.values)
                except Exception as err:
                    raise PreparedDataError(f"{where}: variable {name!r} cannot be read ({err}); "
                                            f"truncated or corrupt file?") from err
    missing = [ch for ch in channels if ch.name not in found]
    if missing:
        ch = missing[0]
        level = f" at {ch.level_hpa} hPa" if ch.era5_dataset == V.ERA5_PRESSURE_LEVELS else ""
        raise PreparedDataError(
            f"{', '.join(map(str, paths))}: ERA5 variable {ch.era5_short!r} ({ch.era5_name}{level}, "
            f"for channel {ch.name}) is missing (looked for names {list(source_names(ch))}); "
            f"{len(missing)} channel(s) missing in all: {[c.name for c in missing]}"
        )
    return found, grid


def check_raw(paths: list[str | os.PathLike], group: str, months: np.ndarray | None) -> dict:
    """Check the raw files of one group (see ``locate``); returns the check record."""
    _, grid = locate(paths, group_channels(group), months)
    files = [{"path": str(p), "size": Path(p).stat().st_size, "mtime": Path(p).stat().st_mtime}
             for p in paths]
    return {"group": group, "grid": list(grid), "files": files}


# --------------------------------------------------------------------------- fetching


def cds_credentials() -> tuple[str, str]:
    """URL and key from the standard CDS client configuration (never logged)."""
    from cdsapi.api import get_url_key_verify

    try:
        url, key, _ = get_url_key_verify(None, None, None)
    except Exception as err:
        raise PreparedDataError(
            "no CDS API credentials: put 'url: https://cds.climate.copernicus.eu/api' and "
            "'key: <your key>' into ~/.cdsapirc (or set CDSAPI_URL and CDSAPI_KEY); "
            f"see docs/real-data.md ({err})"
        ) from None
    return url.rstrip("/"), key


def fetch_cds(group: str, year: int, months: list[int], target: str | os.PathLike, *,
              max_retries: int = 5, backoff_s: float = 30.0, poll_max_s: float = 120.0) -> dict:
    """Submit one CDS request, wait for it, download the result (resumable) and check it."""
    from ecmwf.datastores import Client

    from mdiff.data import forcing

    dataset, request = cds_request(group, year, months)
    identity = {"dataset": dataset, "request": request}
    target = Path(target)
    if forcing.is_complete(target, identity):
        log.info("%s: already complete for this request, not fetched again", target)
        return json.loads(forcing.sidecar_path(target).read_text())
    url, key = cds_credentials()
    log.info("CDS %s at %s: %s", dataset, url, json.dumps(request))
    attempt = 0
    while True:
        try:
            client = Client(url=url, key=key, progress=False, maximum_tries=max_retries,
                            retry_after=backoff_s, sleep_max=poll_max_s)
            results = client.submit(dataset, request).get_results()
            location, size = results.location, results.content_length
            break
        except Exception as err:  # the client's own retries are spent, or the job failed
            attempt += 1
            if attempt > max_retries:
                raise forcing.DownloadError(f"CDS request for {dataset} {year} ({group}) failed "
                                            f"after {max_retries} retries: {err}") from err
            wait = backoff_s * 2 ** (attempt - 1)
            log.warning("CDS request failed (%s); retry %d/%d in %.1f s", err, attempt, max_retries, wait)
            time.sleep(wait)
    headers = {"PRIVATE-TOKEN": key}
    record = forcing.download(location, target, identity=identity, expected_size=size,
                              headers=headers, max_retries=max_retries, backoff_s=backoff_s)
    if zipfile.is_zipfile(target):
        record = _unzip_to_netcdf(target, identity)
    months_dt = np.array([f"{year:04d}-{m:02d}" for m in months], dtype="datetime64[M]")
    try:
        check_raw([target], group, None if group == INVARIANT else months_dt)
    except PreparedDataError:
        forcing.sidecar_path(target).unlink(missing_ok=True)  # refetch next time
        raise
    return record


def _unzip_to_netcdf(target: Path, identity: dict) -> dict:
    """The CDS zips results whose fields differ in GRIB step type: merge them into one file."""
    from mdiff.data import forcing
    from mdiff.fileio import atomic_path, sha256_file, write_json

    with zipfile.ZipFile(target) as zf, _tempdir(target.parent) as tmp:
        names = [n for n in zf.namelist() if n.endswith(".nc")]
        if not names:
            raise PreparedDataError(f"{target}: zip archive from the CDS holds no NetCDF file ({zf.namelist()})")
        zf.extractall(tmp, members=names)
        parts = [xr.open_dataset(Path(tmp) / n).load() for n in names]
        merged = xr.merge(parts, compat="override", join="outer")
        with atomic_path(target) as out:
            merged.to_netcdf(out, format="NETCDF4")
    record = {"identity": identity, "size": target.stat().st_size, "sha256": sha256_file(target),
              "unzipped_from": names, "fetched": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json(forcing.sidecar_path(target), record)
    return record


class _tempdir:
    def __init__(self, parent: Path):
        self.parent = parent

    def __enter__(self) -> str:
        import tempfile

        self.dir = tempfile.mkdtemp(prefix=".unzip.", dir=self.parent)
        return self.dir

    def __exit__(self, *exc) -> None:
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


def local_files(pattern: str, year: int | None, group: str) -> list[str]:
    """Files matching a config pattern (``{year}`` substituted), sorted; error when none."""
    expanded = pattern.format(year=year) if year is not None else pattern
    files = sorted(glob.glob(expanded))
    if not files:
        raise PreparedDataError(f"era5.local_patterns[{group!r}] = {pattern!r}: no file matches "
                                f"{expanded!r}" + (f" (year {year})" if year is not None else ""))
    return files


def months_arg(first: str, last: str) -> np.ndarray:
    """Months first..last (YYYY-MM), which must lie within one year."""
    months = month_range(first, last)
    if months.size == 0 or first[:4] != last[:4]:
        raise PreparedDataError(f"--months {first} {last}: expected first <= last within one year")
    return months


def fetch_group(era5: Era5Config, group: str, first: str, last: str, output: str | os.PathLike,
                files: list[str] | None = None) -> dict:
    """What `mdiff fetch-era5` does for one group and the months first..last of one year:
    ``era5.source`` cds: the CDS request, downloaded to ``output``; local: the files (given,
    or matched by ``era5.local_patterns``) checked, the check record written to ``output``."""
    from mdiff.fileio import write_json

    months = months_arg(first, last)
    year = int(first[:4])
    numbers = [int(m) for m in (months.astype(int) % 12) + 1]
    if group == INVARIANT:
        months, numbers = months[:1], numbers[:1]
    if era5.source == "cds":
        return fetch_cds(group, year, numbers, output, max_retries=era5.max_retries, backoff_s=era5.retry_backoff_s)
    if not files:
        pattern = era5.local_patterns.get(group)
        if pattern is None:
            raise PreparedDataError(f"era5.local_patterns has no pattern for group {group!r}")
        files = local_files(pattern, None if group == INVARIANT else year, group)
    record = check_raw(files, group, None if group == INVARIANT else months)
    write_json(output, record)
    log.info("%s %s: %d file(s) checked", group, year, len(files))
    return record
