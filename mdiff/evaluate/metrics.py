"""Metrics of the evaluation report, on plain numpy arrays.

Fields are ``(..., time, lat, lon)`` (time axis -3) or maps ``(..., lat, lon)`` on a
``LatLonGrid``. Every spatial mean, RMS, correlation and EOF is weighted by exact cell
area (METHOD.md, defect 5: never a plain mean over grid points). NaN marks missing
values (SST over land) and drops out of the weights.
"""

from __future__ import annotations

import numpy as np

from mdiff.grid import LatLonGrid

# AIMIP.md E3: Nino3.4 box, 5S-5N, 170W-120W (degrees east 190-240).
NINO34_LAT = (-5.0, 5.0)
NINO34_LON = (190.0, 240.0)
# The NAO sector: North Atlantic, 20N-80N, 90W-40E (degrees east 270-360 and 0-40).
NAO_LAT = (20.0, 80.0)
NAO_LON = (270.0, 40.0)  # wraps through the 0 meridian
NAO_SPLIT_LAT = 55.0  # positive NAO: low pressure north of this, high south of it
DJF = (12, 1, 2)


# ------------------------------------------------------------------------ regions


def region_mask(grid: LatLonGrid, lat: tuple[float, float], lon: tuple[float, float]) -> np.ndarray:
    """Boolean (lat, lon) mask of grid points within a lat/lon box; ``lon[0] > lon[1]`` wraps."""
    la = (grid.lat >= lat[0]) & (grid.lat <= lat[1])
    lo = grid.lon % 360.0
    if lon[0] <= lon[1]:
        lom = (lo >= lon[0]) & (lo <= lon[1])
    else:
        lom = (lo >= lon[0]) | (lo <= lon[1])
    mask = la[:, None] & lom[None, :]
    if not mask.any():
        raise ValueError(f"region lat {lat}, lon {lon} holds no point of the {grid.nlat}x{grid.nlon} grid")
    return mask


def lat_band_mask(grid: LatLonGrid, max_abs_lat: float) -> np.ndarray:
    return np.repeat((np.abs(grid.lat) <= max_abs_lat)[:, None], grid.nlon, axis=1)


# ------------------------------------------------------------------ spatial means


def _area_weights(grid: LatLonGrid, mask: np.ndarray | None) -> np.ndarray:
    w = grid.cell_area
    if mask is not None:
        mask = np.asarray(mask, dtype=np.float64)
        if mask.shape != grid.shape:
            raise ValueError(f"mask has shape {mask.shape}; expected the grid's {grid.shape}")
        w = w * mask
    return w


def area_mean(grid: LatLonGrid, field, mask: np.ndarray | None = None) -> np.ndarray:
    """Area-weighted mean over the last two axes (lat, lon), NaN-aware.

    ``mask`` (lat, lon; 1 = inside) restricts the mean to a region; NaN values drop out
    of the weights, so the mean of SST is over ocean points.
    """
    field = np.asarray(field)
    if field.shape[-2:] != grid.shape:
        raise ValueError(f"field has shape {field.shape}; expected (..., {grid.nlat}, {grid.nlon})")
    w = _area_weights(grid, mask)
    finite = np.isfinite(field)
    if finite.all():  # the fast path: no copies of large fields
        return np.tensordot(field, w, axes=2) / w.sum()
    num = np.tensordot(np.where(finite, field, 0.0), w, axes=2)
    den = np.tensordot(finite.astype(np.float64), w, axes=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def area_rms(grid: LatLonGrid, field, mask: np.ndarray | None = None) -> np.ndarray:
    """Area-weighted root-mean-square over the last two axes."""
    return np.sqrt(area_mean(grid, np.square(np.asarray(field, dtype=np.float64)), mask))


def pattern_correlation(grid: LatLonGrid, a, b, mask: np.ndarray | None = None) -> float:
    """Centred, area-weighted correlation of two maps (over ``mask`` if given)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    valid = np.isfinite(a) & np.isfinite(b)
    w = grid.cell_area * valid * (1.0 if mask is None else np.asarray(mask, dtype=np.float64))
    if w.sum() <= 0:
        return float("nan")
    w = w / w.sum()
    a = np.where(valid, a, 0.0)
    b = np.where(valid, b, 0.0)
    da = a - (w * a).sum()
    db = b - (w * b).sum()
    denom = np.sqrt((w * da * da).sum() * (w * db * db).sum())
    return float((w * da * db).sum() / denom) if denom > 0 else float("nan")


def amplitude_ratio(grid: LatLonGrid, estimate, truth, mask: np.ndarray | None = None) -> float:
    """Area-weighted least-squares amplitude of ``estimate`` along ``truth``: <e, t> / <t, t>.

    1 means the right amplitude; noise in ``estimate`` that is uncorrelated with ``truth``
    does not bias it (unlike a ratio of RMS values).
    """
    e = np.asarray(estimate, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    tt = float(area_mean(grid, t * t, mask))
    return float(area_mean(grid, e * t, mask)) / tt if tt > 0 else float("nan")


# ---------------------------------------------------------------------- in time


def select_months(months: np.ndarray, first: str, last: str) -> np.ndarray:
    """Boolean index of ``months`` (datetime64[M]) within [first, last]."""
    m = np.asarray(months).astype("datetime64[M]")
    return (m >= np.datetime64(first, "M")) & (m <= np.datetime64(last, "M"))


def month_of_year(months: np.ndarray) -> np.ndarray:
    return np.asarray(months).astype("datetime64[M]").astype(int) % 12 + 1


def decimal_years(months: np.ndarray) -> np.ndarray:
    """Mid-month times in years (1979.04 for January 1979)."""
    m = np.asarray(months).astype("datetime64[M]").astype(int)
    return 1970.0 + (m + 0.5) / 12.0


def monthly_anomalies(field, months: np.ndarray, axis: int = -3) -> np.ndarray:
    """``field`` minus its own mean annual cycle (a climatology per calendar month) along ``axis``."""
    x = np.moveaxis(np.asarray(field, dtype=np.float64), axis, -1).copy()
    moy = month_of_year(months)
    if x.shape[-1] != moy.size:
        raise ValueError(f"field has {x.shape[-1]} times along axis {axis}, months has {moy.size}")
    for m in np.unique(moy):
        sel = moy == m
        x[..., sel] -= np.nanmean(x[..., sel], axis=-1, keepdims=True)
    return np.moveaxis(x, -1, axis)


def running_mean(x, window: int = 3) -> np.ndarray:
    """Centred running mean along the last axis; the edges without a full window are NaN."""
    x = np.asarray(x, dtype=np.float64)
    if window % 2 != 1:
        raise ValueError(f"running-mean window {window}: expected an odd number of months")
    out = np.full_like(x, np.nan)
    half = window // 2
    if x.shape[-1] < window:
        return out
    c = np.cumsum(np.concatenate([np.zeros(x.shape[:-1] + (1,)), x], axis=-1), axis=-1)
    out[..., half:x.shape[-1] - half] = (c[..., window:] - c[..., :-window]) / window
    return out


def linear_trend(values, years: np.ndarray) -> np.ndarray:
    """Least-squares slope of ``values`` (..., time) against ``years``: units per year."""
    y = np.asarray(values, dtype=np.float64)
    t = np.asarray(years, dtype=np.float64)
    if y.shape[-1] != t.size or t.size < 2:
        raise ValueError(f"linear_trend: {y.shape[-1]} values for {t.size} times (need >= 2)")
    tc = t - t.mean()
    return ((y - y.mean(axis=-1, keepdims=True)) * tc).sum(axis=-1) / (tc * tc).sum()


def detrend(x, axis: int = -1) -> np.ndarray:
    """Remove the least-squares linear trend (and mean) along ``axis`` (evenly spaced times)."""
    y = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    t = np.arange(y.shape[-1], dtype=np.float64)
    t -= t.mean()
    ym = y.mean(axis=-1, keepdims=True)
    slope = ((y - ym) * t).sum(axis=-1, keepdims=True) / (t * t).sum()
    return np.moveaxis(y - ym - slope * t, -1, axis)


def regression_map(field, index) -> np.ndarray:
    """Least-squares slope of every point of ``field`` (..., time, lat, lon) on ``index`` (time,).

    Units of the field per unit index. Times where the index is NaN are left out.
    """
    x = np.asarray(index, dtype=np.float64)
    f = np.asarray(field, dtype=np.float64)
    if f.shape[-3] != x.size:
        raise ValueError(f"regression_map: field has {f.shape[-3]} times, index {x.size}")
    ok = np.isfinite(x)
    x = x[ok] - x[ok].mean()
    f = f[..., ok, :, :]
    f = f - f.mean(axis=-3, keepdims=True)
    return np.einsum("...tij,t->...ij", f, x) / (x * x).sum()


def nino34_index(grid: LatLonGrid, sst, months: np.ndarray, window: int = 3) -> np.ndarray:
    """Nino3.4 index (K): area-weighted SST over the box (ocean points), anomalies w.r.t. the
    monthly climatology of ``months``, linearly detrended (a warming trend is not ENSO), then
    a centred ``window``-month running mean."""
    box = region_mask(grid, NINO34_LAT, NINO34_LON)
    series = area_mean(grid, sst, box)
    if not np.isfinite(series).all():
        raise ValueError("Nino3.4 box has no ocean (finite SST) point in some month")
    return running_mean(detrend(monthly_anomalies(series, months, axis=-1)), window)


def enso_regression(field, months: np.ndarray, index) -> np.ndarray:
    """Regression map of ``field`` (..., time, lat, lon) on a Nino3.4 ``index``: monthly
    anomalies, linearly detrended like the index, then the least-squares slope per point."""
    return regression_map(detrend(monthly_anomalies(field, months), axis=-3), index)


def sensitivity_per_kelvin(grid: LatLonGrid, response, sst_offset_k: float) -> float:
    """Global, area-weighted mean response per kelvin of uniform SST warming."""
    if sst_offset_k == 0:
        raise ValueError("sensitivity per kelvin needs a non-zero SST offset")
    return float(area_mean(grid, response)) / sst_offset_k


# -------------------------------------------------------------------------- EOFs


def leading_eof(grid: LatLonGrid, anomalies, mask: np.ndarray) -> dict:
    """First EOF of ``anomalies`` (time, lat, lon) over ``mask``, area-weighted.

    Returns ``pattern`` (lat, lon; field units per standard deviation of the PC, NaN
    outside the mask), ``pc`` (unit variance), ``variance`` (area-weighted mean variance
    carried by the EOF, field units squared) and ``explained`` (its fraction of the total).
    """
    a = np.asarray(anomalies, dtype=np.float64)
    if a.ndim != 3:
        raise ValueError(f"leading_eof expects (time, lat, lon) anomalies, got shape {a.shape}")
    mask = np.asarray(mask, dtype=bool) & np.isfinite(a).all(axis=0)
    w = grid.cell_area[mask]
    w = w / w.sum()
    x = a[:, mask] - a[:, mask].mean(axis=0)  # (time, points)
    xw = x * np.sqrt(w)
    u, s, _ = np.linalg.svd(xw, full_matrices=False)
    nt = x.shape[0]
    pc = u[:, 0] * s[0]
    pc = pc / pc.std()
    values = x.T @ pc / nt  # regression on the unit-variance PC
    pattern = np.full(grid.shape, np.nan)
    pattern[mask] = values
    return {"pattern": pattern, "pc": pc, "variance": float(s[0] ** 2 / nt),
            "explained": float(s[0] ** 2 / (s ** 2).sum())}


def nao_sign(grid: LatLonGrid, pattern) -> float:
    """+1 or -1 so that ``sign * pattern`` is a positive NAO: lower pressure north of 55N."""
    p = np.asarray(pattern, dtype=np.float64)
    north = np.repeat((grid.lat >= NAO_SPLIT_LAT)[:, None], grid.nlon, axis=1)
    diff = area_mean(grid, p, north) - area_mean(grid, p, ~north)
    return -1.0 if diff > 0 else 1.0


def nao_eof(grid: LatLonGrid, psl, months: np.ndarray) -> dict:
    """The NAO: first EOF of DJF sea-level-pressure anomalies over 20-80N, 90W-40E.

    ``psl`` is (time, lat, lon) or (member, time, lat, lon); members are pooled (each
    against its own climatology). The sign is fixed so that the pattern is positive NAO.
    """
    p = np.asarray(psl, dtype=np.float64)
    if p.ndim == 3:
        p = p[None]
    winter = np.isin(month_of_year(months), DJF)
    anomalies = monthly_anomalies(p, months, axis=-3)[:, winter]
    pooled = anomalies.reshape(-1, *grid.shape)
    eof = leading_eof(grid, pooled, region_mask(grid, NAO_LAT, NAO_LON))
    sign = nao_sign(grid, eof["pattern"])
    eof["pattern"] = sign * eof["pattern"]
    eof["pc"] = sign * eof["pc"]
    return eof


# ------------------------------------------------------------------- variability


def interannual_variance(grid: LatLonGrid, field, months: np.ndarray) -> float:
    """Area-weighted mean variance of monthly anomalies of (member, time, lat, lon), members pooled."""
    a = monthly_anomalies(field, months, axis=-3)
    return float(area_mean(grid, np.mean(a * a, axis=(0, 1))))


def ensemble_variance(grid: LatLonGrid, field) -> float:
    """Area-weighted, time-mean variance across members (axis 0) of (member, time, lat, lon)."""
    f = np.asarray(field, dtype=np.float64)
    if f.shape[0] < 2:
        return float("nan")
    return float(area_mean(grid, f.var(axis=0, ddof=1).mean(axis=0)))
