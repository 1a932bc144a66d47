"""Normalisation statistics: one mean and std per channel, after the sqrt/logit transforms,
area-weighted, over the statistics period only (AI-MIP: nothing after 2014 may enter)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mdiff import variables as V
from mdiff.fileio import write_json
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


def _transformed(x: np.ndarray, channels) -> np.ndarray:
    out = np.empty(x.shape, dtype=np.float64)
    for i, ch in enumerate(channels):
        out[:, i] = forward_transform(x[:, i].astype(np.float64), ch.transform)
    return out


def compute_statistics(state_files, statics_file, grid: LatLonGrid, period: list[str]) -> dict:
    # every month of the period once, plausible values, SST defined over open ocean
    checks.check_state_files(state_files, grid, period, statics_file)
    first, last = (P.parse_month(m) for m in period)
    dynamic = V.STATE + V.FORCING[:2]  # sst, siconc from the training-time (ERA5 monthly-mean) forcing
    moments = _Moments(len(dynamic))
    n_months, used = 0, []
    for path in sorted(map(str, state_files)):
        ds = P.open_checked(path, grid)
        keep = (P.times_of(ds) >= first) & (P.times_of(ds) <= last)
        if not keep.any():
            continue
        ds = ds.isel(time=np.flatnonzero(keep))
        state = P.dataset_to_channels(ds, V.STATE, path)
        forcing = P.dataset_to_channels(ds, V.FORCING[:2], path, allow_nan=True)  # NaN over land
        x = np.concatenate([state, forcing], axis=1)
        moments.add(_transformed(x, dynamic), grid.area_weights)
        n_months += int(keep.sum())
        used.append(Path(path).name)
    if n_months == 0:
        raise P.PreparedDataError(f"no prepared months within the statistics period {period} in {list(state_files)}")
    mean, std = moments.result()
    channels = {}
    for ch, m, s in zip(dynamic, mean, std, strict=True):
        channels[ch.name] = {"mean": float(m), "std": _safe_std(s, ch.name), "transform": ch.transform}

    statics = P.open_checked(statics_file, grid)
    x = P.dataset_to_channels(statics, V.STATIC, str(statics_file))
    for i, ch in enumerate(V.STATIC):
        m = float(grid.mean(x[i].astype(np.float64)))
        s = float(np.sqrt(grid.mean((x[i] - m) ** 2)))
        channels[ch.name] = {"mean": m, "std": _safe_std(s, ch.name), "transform": ch.transform}
    return {"period": list(period), "months": n_months, "files": used, "grid": [grid.nlat, grid.nlon],
            "weighting": "cell area", "channels": channels}


def _safe_std(s: float, name: str) -> float:
    if not np.isfinite(s) or s < 1e-12:
        log.warning("channel %s is constant over the statistics period: std set to 1", name)
        return 1.0
    return float(s)


def add_arguments(parser) -> None:
    from mdiff.cli import add_settings_arguments

    add_settings_arguments(parser)
    parser.add_argument("--state", nargs="+", required=True, help="prepared state files (per year)")
    parser.add_argument("--statics", required=True, help="prepared statics file")
    parser.add_argument("--output", required=True, help="statistics JSON to write")


def main(args) -> None:
    from mdiff.cli import load_settings

    cfg = load_settings(args)
    grid = LatLonGrid(cfg.grid.nlat, cfg.grid.nlon)
    stats = compute_statistics(args.state, args.statics, grid, cfg.periods.stats)
    write_json(args.output, stats)
    log.info("statistics over %s (%d months, %d files) -> %s", cfg.periods.stats, stats["months"],
             len(stats["files"]), args.output)
