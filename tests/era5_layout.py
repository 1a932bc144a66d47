"""Raw files in the layout of the new CDS (ERA5 monthly means) and of the AI-MIP forcing file,
at a coarse native grid, for the ERA5 tests (tests/test_era5.py, tests/test_regrid.py).

Layout as the CDS writes it since 2024: dims ``valid_time, pressure_level (hPa), latitude
(90..-90), longitude (0..360)``, scalar ``number``, per-time string ``expver``, ERA5 short
names and ERA5 unit spellings (``kg kg**-1``, ``m**2 s**-2``). The AI-MIP file follows the
ARCO-ERA5 names (``sea_surface_temperature``, ``sea_ice_cover``, ``land_sea_mask``) with one
value per month start.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from mdiff import variables as V
from mdiff.data import era5 as E

ERA5_UNITS = {"K": "K", "1": "kg kg**-1", "m s-1": "m s**-1", "m2 s-2": "m**2 s**-2", "Pa": "Pa",
              "kg m-2 s-1": "kg m**-2 s**-1", "m": "m", "radians": "radians"}


def native_grid(nlat: int = 73) -> tuple[np.ndarray, np.ndarray]:
    """ERA5-like grid: latitude descending 90..-90, longitude 0..360-dlon."""
    return np.linspace(90.0, -90.0, nlat), np.arange(2 * (nlat - 1)) * (360.0 / (2 * (nlat - 1)))


def land_fraction(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Two blob continents (fraction 0..1, with partly covered coastal cells) and Antarctica."""
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    blob = np.exp(-(((la - 30) / 20) ** 2 + ((lo - 100) / 40) ** 2) * 2)
    blob += np.exp(-(((la + 10) / 25) ** 2 + ((lo - 300) / 25) ** 2) * 2)
    blob += (la < -70).astype(float)
    return np.clip(np.round(blob * 3) / 3, 0.0, 1.0)


def field(ch: V.Channel, lat: np.ndarray, lon: np.ndarray, t: int, level: int | None = None) -> np.ndarray:
    """A smooth, plausible field for a channel at month index t (float64, (lat, lon))."""
    la, lo = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    wave = np.cos(la) ** 2 + 0.1 * np.sin(2 * lo + 0.3 * t) * np.cos(la)
    p = (level or 1000) / 1000.0
    base = {
        "ta": 200 + 80 * p + 30 * wave, "hus": 1e-3 * p**2 * (0.2 + wave), "ua": 20 * np.sin(2 * la) ** 2 + wave,
        "va": 2 * np.sin(lo + 0.1 * t) * np.cos(la), "z500": 5.5e4 + 2e3 * wave, "ps": 9.8e4 + 2e3 * wave,
        "ts": 250 + 50 * wave, "tas": 250 + 48 * wave, "tdas": 245 + 45 * wave, "uas": 5 * np.sin(2 * la) + wave,
        "vas": np.sin(lo) * np.cos(la), "pr": 3e-5 * (0.1 + wave), "psl": 1.01e5 + 1e3 * wave,
        "sst": 271.5 + 30 * wave, "siconc": np.clip(1.2 - 2.5 * wave, 0.0, 1.0),
        "lsm": 0 * wave, "sdor": 100 * (1 + wave), "isor": 0.5 + 0.2 * wave, "anor": 0.5 * wave, "slor": 0.01 * (1 + wave),
    }
    return base[ch.variable]


def _coords(lat, lon, months):
    return {
        "valid_time": ("valid_time", np.asarray(months).astype("datetime64[ns]"),
                       {"standard_name": "time", "long_name": "time"}),
        "latitude": ("latitude", lat, {"units": "degrees_north", "standard_name": "latitude"}),
        "longitude": ("longitude", lon, {"units": "degrees_east", "standard_name": "longitude"}),
        "number": ((), 0),
        "expver": ("valid_time", np.array(["0001"] * len(months))),
    }


TIME_ENC = {"valid_time": {"units": "seconds since 1970-01-01", "calendar": "proleptic_gregorian",
                           "dtype": "int64"}}


def write_group(path: Path, group: str, year: int, months: list[int], nlat: int = 73,
                drop: tuple[str, ...] = (), scale: float = 1.0) -> Path:
    """One raw ERA5 file of a group, new-CDS layout. ``drop``: ERA5 short names to leave out."""
    lat, lon = native_grid(nlat)
    times = np.array([f"{year:04d}-{m:02d}" for m in months], dtype="datetime64[M]")
    dataset, channels, levels = E.GROUPS[group]
    lsm = land_fraction(lat, lon)
    coords = _coords(lat, lon, times)
    data = {}
    if dataset == V.ERA5_PRESSURE_LEVELS:
        coords["pressure_level"] = ("pressure_level", np.array(levels, dtype=np.float64),
                                    {"units": "hPa", "standard_name": "air_pressure"})
    for short in dict.fromkeys(c.era5_short for c in channels):
        if short in drop:
            continue
        ch = next(c for c in channels if c.era5_short == short)
        if dataset == V.ERA5_PRESSURE_LEVELS:
            arr = np.stack([np.stack([field(ch, lat, lon, t, lv) for lv in levels]) for t in range(len(times))])
            dims = ("valid_time", "pressure_level", "latitude", "longitude")
        else:
            arr = np.stack([field(ch, lat, lon, t) for t in range(len(times))])
            dims = ("valid_time", "latitude", "longitude")
            if short == "lsm":
                arr = np.broadcast_to(lsm, arr.shape)
            if short in ("sst", "siconc"):
                arr = np.where(lsm[None] > 0.5, np.nan, arr)
        data[short] = (dims, (arr * scale).astype(np.float32),
                       {"units": ERA5_UNITS[ch.units] if short not in ("siconc", "lsm") else "(0 - 1)",
                        "long_name": ch.long_name})
    ds = xr.Dataset(data, coords=coords, attrs={"Conventions": "CF-1.7", "institution": "ECMWF (test)"})
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(path, encoding=TIME_ENC)
    return path


def write_year(root: Path, year: int, months: list[int], nlat: int = 73) -> dict[str, Path]:
    return {g: write_group(root / f"{year}" / f"{g}.nc", g, year, months, nlat) for g in E.YEARLY_GROUPS}


def write_invariant(path: Path, nlat: int = 73) -> Path:
    return write_group(path, E.INVARIANT, 1978, [10], nlat)


def write_aimip(path: Path, first: str, last: str, nlat: int = 73) -> Path:
    """AI-MIP-like forcing: start-of-month values first..last (inclusive), ARCO names."""
    lat, lon = native_grid(nlat)
    starts = np.arange(np.datetime64(first, "M"), np.datetime64(last, "M") + 1)
    lsm = land_fraction(lat, lon)
    t = np.arange(len(starts))[:, None, None]
    la = np.deg2rad(lat)[None, :, None]
    sst = 271.5 + 30 * np.cos(la) ** 2 + 0.5 * t + 0 * lsm[None]
    ice = np.clip(1.2 - 2.5 * np.cos(la) ** 2 + 0 * t + 0 * lsm[None], 0, 1)
    sst = np.where(lsm[None] > 0.5, np.nan, sst)
    ice = np.where(lsm[None] > 0.5, np.nan, ice)
    ds = xr.Dataset(
        {"sea_surface_temperature": (("time", "latitude", "longitude"), sst.astype(np.float32), {"units": "K"}),
         "sea_ice_cover": (("time", "latitude", "longitude"), ice.astype(np.float32), {"units": "(0 - 1)"}),
         "land_sea_mask": (("latitude", "longitude"), lsm.astype(np.float32), {"units": "(0 - 1)"})},
        coords={"time": starts.astype("datetime64[ns]"),
                "latitude": ("latitude", lat, {"units": "degrees_north"}),
                "longitude": ("longitude", lon, {"units": "degrees_east"})},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(path, encoding={"time": {"units": "hours since 1900-01-01", "dtype": "int64"}})
    return path
