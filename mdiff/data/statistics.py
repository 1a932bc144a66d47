"""Normalisation statistics, after the sqrt/logit transforms, over the statistics period only
(AI-MIP: nothing after 2014 may enter): one area-weighted mean and std per channel, and for
the dynamic channels (state, SST, sea ice) a climatology per calendar month and grid point
and the area-weighted std of the anomalies from it (``mdiff.data.normalize``).

File: ``stats/normalization.nc`` (``write_statistics``/``read_statistics``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from mdiff import variables as V
from mdiff.grid import LatLonGrid

from . import checks
from . import prepared as P
from .normalize import forward_transform

log = logging.getLogger(__name__)


class _Moments:
    """Weighted mean and variance, combined across files (Chan et al.), per channel."""

    def __init__(self, n: int):
        self.w = np.zeros(n)
        self.mean = np.zeros(n)
        self.m2 = np.zeros(n)

    def add(self, x: np.ndarray, w: np.ndarray) -> None:
        """x: (T, C, H, W) with NaN where undefined; w: (H, W) area weights."""
        valid = np.isfinite(x)
        ww = np.where(valid, w, 0.0)
        xx = np.where(valid, x, 0.0).astype(np.float64)
        wsum = ww.sum(axis=(0, 2, 3))
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (ww * xx).sum(axis=(0, 2, 3)) / wsum
            m2 = (ww * (xx - mean[None, :, None, None]) ** 2).sum(axis=(0, 2, 3))
        has = wsum > 0
        total = self.w + wsum
        delta = np.where(has, mean - self.mean, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(total > 0, wsum / total, 0.0)
        self.mean = self.mean + delta * frac
        self.m2 = self.m2 + np.where(has, m2, 0.0) + delta**2 * self.w * frac
        self.w = total

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return self.mean, np.sqrt(self.m2 / np.maximum(self.w, 1e-300))


class _MonthlyClimatology:
    """Sums per calendar month and grid point, for the climatology and its anomaly variance."""

    def __init__(self, n: int, shape: tuple[int, int]):
        self.sum = np.zeros((12, n, *shape))
        self.sum2 = np.zeros((12, n, *shape))
        self.count = np.zeros((12, n, *shape))

    def add(self, x: np.ndarray, months: np.ndarray) -> None:
        """x: (T, C, H, W) transformed, NaN where undefined; months: (T,) 1..12."""
        valid = np.isfinite(x)
        xx = np.where(valid, x, 0.0)
        for m in np.unique(months):
            sel = months == m
            self.sum[m - 1] += xx[sel].sum(axis=0)
            self.sum2[m - 1] += (xx[sel] ** 2).sum(axis=0)
            self.count[m - 1] += valid[sel].sum(axis=0)

    def result(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Climatology (12, C, H, W; NaN where never defined) and the area-weighted anomaly std (C,)."""
        missing = [m + 1 for m in range(12) if not self.count[m].any()]
        if missing:
            raise P.PreparedDataError(f"the statistics period lacks calendar month(s) {missing}; "
                                      "expected at least one full year for the monthly climatology")
        with np.errstate(invalid="ignore", divide="ignore"):
            clim = self.sum / self.count
            var = np.maximum(self.sum2 / self.count - clim**2, 0.0)
        ww = np.where(self.count > 0, w * self.count, 0.0)  # weight: area x months at the point
        anomaly_var = np.nansum(np.where(ww > 0, var, 0.0) * ww, axis=(0, 2, 3)) / np.maximum(ww.sum(axis=(0, 2, 3)), 1e-300)
        return clim.astype(np.float32), np.sqrt(anomaly_var)


def _transformed(x: np.ndarray, channels) -> np.ndarray:
    out = np.empty(x.shape, dtype=np.float64)
    for i, ch in enumerate(channels):
        out[:, i] = forward_transform(x[:, i].astype(np.float64), ch.transform)
    return out


def compute_statistics(state_files, statics_file, grid: LatLonGrid, period: list[str]) -> dict:
    # every month of the period once, plausible values, SST defined over open ocean
    checks.check_state_files(state_files, grid, period, statics_file)
    first, last = (P.parse_month(m) for m in period)
    dynamic = V.STATE + V.PREPARED_FORCING  # sst, siconc from the training-time (ERA5 monthly-mean) forcing
    moments = _Moments(len(dynamic))
    monthly = _MonthlyClimatology(len(dynamic), grid.shape)
    n_months, used = 0, []
    for path in sorted(map(str, state_files)):
        ds = P.open_checked(path, grid)
        keep = (P.times_of(ds) >= first) & (P.times_of(ds) <= last)
        if not keep.any():
            continue
        ds = ds.isel(time=np.flatnonzero(keep))
        state = P.dataset_to_channels(ds, V.STATE, path)
        forcing = P.dataset_to_channels(ds, V.PREPARED_FORCING, path, allow_nan=True)  # NaN over land
        x = _transformed(np.concatenate([state, forcing], axis=1), dynamic)
        moments.add(x, grid.area_weights)
        monthly.add(x, P.month_of_year(P.times_of(ds)))
        n_months += int(keep.sum())
        used.append(Path(path).name)
    if n_months == 0:
        raise P.PreparedDataError(f"no prepared months within the statistics period {period} in {list(state_files)}")
    mean, std = moments.result()
    clim, anomaly_std = monthly.result(grid.area_weights)
    if monthly.count.max(axis=(1, 2, 3)).min() < 2:
        # One sample of a calendar month has no anomaly: scaling by a zero (or floored) anomaly std would
        # blow anomalies of other years up to thousands of units. Short test periods scale by the std.
        log.warning("the statistics period %s..%s holds a calendar month only once: anomalies are scaled by "
                    "each channel's std (use >= 2 years, as the real periods do)", *period)
        anomaly_std = std
    channels, climatology = {}, {}
    for i, (ch, m, s) in enumerate(zip(dynamic, mean, std, strict=True)):
        channels[ch.name] = {"mean": float(m), "std": _safe_std(s, ch.name), "transform": ch.transform,
                             "anomaly_std": _safe_std(anomaly_std[i], f"{ch.name} (anomalies)")}
        climatology[ch.name] = clim[:, i]

    statics = P.open_checked(statics_file, grid)
    x = P.dataset_to_channels(statics, V.STATIC, str(statics_file))
    for i, ch in enumerate(V.STATIC):
        m = float(grid.mean(x[i].astype(np.float64)))
        s = float(np.sqrt(grid.mean((x[i] - m) ** 2)))
        channels[ch.name] = {"mean": m, "std": _safe_std(s, ch.name), "transform": ch.transform}
    return {"period": list(period), "months": n_months, "files": used, "grid": [grid.nlat, grid.nlon],
            "weighting": "cell area", "channels": channels, "climatology": climatology}


def write_statistics(path, stats: dict, grid: LatLonGrid) -> None:
    """The statistics as NetCDF: per-channel numbers, the monthly climatologies, metadata."""
    import xarray as xr

    from mdiff.fileio import write_netcdf

    names = list(stats["channels"])
    ds = xr.Dataset(coords={"channel": names, "month": np.arange(1, 13), "lat": grid.lat, "lon": grid.lon})
    for key in ("mean", "std", "anomaly_std"):
        ds[key] = ("channel", [stats["channels"][n].get(key, np.nan) for n in names])
    ds["transform"] = ("channel", [stats["channels"][n]["transform"] for n in names])
    clim_names = list(stats["climatology"])
    ds["climatology"] = (("clim_channel", "month", "lat", "lon"),
                         np.stack([stats["climatology"][n] for n in clim_names]).astype(np.float32))
    ds = ds.assign_coords(clim_channel=clim_names)
    ds["climatology"].attrs["description"] = "mean of the transformed field per calendar month, NaN where undefined"
    ds.attrs.update({"period": json.dumps(stats["period"]), "months": stats["months"],
                     "files": json.dumps(stats["files"]), "grid": json.dumps(stats["grid"]),
                     "weighting": stats["weighting"],
                     "description": "mdiff normalisation statistics (mdiff.data.statistics)"})
    write_netcdf(ds, path)


def read_statistics(path) -> dict:
    """The dict ``compute_statistics`` returned, from a file of ``write_statistics``."""
    import xarray as xr

    try:
        with xr.open_dataset(path) as ds:
            ds.load()
    except FileNotFoundError:
        raise P.PreparedDataError(f"{path}: normalisation statistics file does not exist") from None
    except Exception as err:  # noqa: BLE001 -- netCDF4/HDF5 errors on damaged files
        raise P.PreparedDataError(f"{path}: cannot be read as the normalisation statistics ({err}); truncated or "
                                  "corrupt? expected the file written by `mdiff stats`") from err
    missing = [k for k in ("mean", "std", "transform", "climatology") if k not in ds]
    if missing:
        raise P.PreparedDataError(f"{path}: variables {missing} missing; expected a file written by `mdiff stats`")
    channels = {}
    for i, name in enumerate(ds["channel"].values.tolist()):
        entry = {"mean": float(ds["mean"][i]), "std": float(ds["std"][i]), "transform": str(ds["transform"].values[i])}
        if np.isfinite(float(ds["anomaly_std"][i])):
            entry["anomaly_std"] = float(ds["anomaly_std"][i])
        channels[name] = entry
    climatology = {n: ds["climatology"].values[i] for i, n in enumerate(ds["clim_channel"].values.tolist())}
    meta = {k: json.loads(ds.attrs[k]) for k in ("period", "files", "grid") if k in ds.attrs}
    return {**meta, "months": int(ds.attrs.get("months", 0)), "weighting": ds.attrs.get("weighting", ""),
            "channels": channels, "climatology": climatology}


def _safe_std(s: float, name: str) -> float:
    if not np.isfinite(s) or s < 1e-12:
        log.warning("channel %s is constant over the statistics period: std set to 1", name)
        return 1.0
    return float(s)
