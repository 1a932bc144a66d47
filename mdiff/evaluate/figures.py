"""Figures of the report: maps with a land outline and time series (matplotlib, Agg).

No cartopy: the network is closed, so coastlines come from the land fraction itself
(its 0.5 contour). Maps are drawn with longitudes -180..180 so the Atlantic is whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mdiff.fileio import atomic_path  # noqa: E402
from mdiff.grid import LatLonGrid  # noqa: E402

DPI = 90


@dataclass
class MapPanel:
    title: str
    values: np.ndarray  # (lat, lon)


@dataclass
class MapRow:
    """Panels that share one colour scale (e.g. emulator and reference of one variable)."""

    label: str
    units: str
    panels: list[MapPanel]
    diverging: bool = True  # symmetric about zero (biases, anomalies, responses)


@dataclass
class Series:
    label: str
    x: np.ndarray
    y: np.ndarray  # (time,) or (member, time): members drawn as a min-max band
    color: str | None = None
    style: str = "-"


@dataclass
class SeriesPanel:
    title: str
    units: str
    series: list[Series] = field(default_factory=list)


def _rolled(grid: LatLonGrid, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Longitudes -180..180 (ascending) and ``values`` rolled to match."""
    shift = grid.nlon // 2
    lon = np.roll(grid.lon, shift)
    lon = np.where(lon >= 180.0, lon - 360.0, lon)
    return lon, np.roll(values, shift, axis=-1)


def _edges(centres: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    d = np.diff(centres)
    e = np.concatenate([[centres[0] - d[0] / 2], centres[:-1] + d / 2, [centres[-1] + d[-1] / 2]])
    return np.clip(e, lo, hi) if lo is not None else e


def _scale(values: list[np.ndarray], diverging: bool) -> tuple[float, float]:
    finite = np.concatenate([v[np.isfinite(v)].ravel() for v in values]) if values else np.array([])
    if finite.size == 0:
        return (-1.0, 1.0)
    if diverging:
        top = float(np.percentile(np.abs(finite), 98)) or float(np.abs(finite).max()) or 1.0
        return (-top, top)
    lo, hi = np.percentile(finite, [2, 98])
    return (float(lo), float(hi) if hi > lo else float(lo) + 1.0)


def draw_map(ax, grid: LatLonGrid, values: np.ndarray, land: np.ndarray | None, vmin: float, vmax: float,
             cmap: str, extent: tuple[float, float, float, float] | None = None):
    """One map on ``ax``: cells as drawn, the land outline as the 0.5 land-fraction contour."""
    lon, v = _rolled(grid, np.asarray(values, dtype=np.float64))
    mesh = ax.pcolormesh(_edges(lon), _edges(grid.lat, -90.0, 90.0), np.ma.masked_invalid(v),
                         cmap=cmap, vmin=vmin, vmax=vmax, shading="flat")
    if land is not None:
        _, lf = _rolled(grid, land)
        if np.nanmin(lf) < 0.5 < np.nanmax(lf):
            ax.contour(lon, grid.lat, lf, levels=[0.5], colors="k", linewidths=0.6)
    if extent is None:
        ax.set_xlim(-180, 180)
        ax.set_ylim(-90, 90)
    else:
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
    ax.set_xticks([])
    ax.set_yticks([])
    return mesh


def maps_figure(path: str | Path, grid: LatLonGrid, rows: Sequence[MapRow], land: np.ndarray | None,
                title: str, extent: tuple[float, float, float, float] | None = None,
                rows_per_line: int = 1) -> Path:
    """Maps, one colour scale and colour bar per row; ``rows_per_line`` rows side by side.

    Written atomically as PNG.
    """
    ncol = max(len(r.panels) for r in rows)
    w = 3.6 if ncol * rows_per_line <= 3 else 3.0
    h = 0.5 * w if extent is None else w * (extent[3] - extent[2]) / (extent[1] - extent[0])
    nline = -(-len(rows) // rows_per_line)
    fig = plt.figure(figsize=((w * ncol + 0.9) * rows_per_line, (h + 0.45) * nline + 0.5),
                     layout="constrained")
    blocks = np.atleast_2d(fig.subfigures(nline, rows_per_line, squeeze=False))
    for i, block in enumerate(blocks.ravel()):
        if i >= len(rows):
            continue
        row = rows[i]
        axes = block.subplots(1, ncol, squeeze=False)[0]
        vmin, vmax = _scale([p.values for p in row.panels], row.diverging)
        cmap = "RdBu_r" if row.diverging else "viridis"
        mesh = None
        for c, ax in enumerate(axes):
            if c >= len(row.panels):
                ax.axis("off")
                continue
            panel = row.panels[c]
            mesh = draw_map(ax, grid, panel.values, land, vmin, vmax, cmap, extent)
            ax.set_title(f"{row.label}: {panel.title}", fontsize=8)
        if mesh is not None:
            cb = block.colorbar(mesh, ax=axes.tolist(), shrink=0.9, pad=0.01)
            cb.set_label(row.units, fontsize=8)
            cb.ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def series_figure(path: str | Path, panels: Sequence[SeriesPanel], title: str, ncol: int = 2) -> Path:
    """Time series panels; a (member, time) series is drawn as its mean and min-max band."""
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 2.3 * nrow + 0.5), squeeze=False,
                             layout="constrained")
    for i, ax in enumerate(axes.ravel()):
        if i >= len(panels):
            ax.axis("off")
            continue
        panel = panels[i]
        for s in panel.series:
            y = np.asarray(s.y, dtype=np.float64)
            if y.ndim == 2:
                line = ax.plot(s.x, y.mean(axis=0), s.style, color=s.color, lw=1.2, label=s.label)[0]
                if y.shape[0] > 1:
                    ax.fill_between(s.x, y.min(axis=0), y.max(axis=0), color=line.get_color(),
                                    alpha=0.2, lw=0)
            else:
                ax.plot(s.x, y, s.style, color=s.color, lw=1.0, label=s.label)
        ax.set_title(panel.title, fontsize=9)
        ax.set_ylabel(panel.units, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.ticklabel_format(axis="y", useOffset=False)  # 1013.4 hPa, not +1.013e3 and 0.4
        ax.grid(alpha=0.3)
        if panel.series:
            ax.legend(fontsize=6, loc="best", ncol=2)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    return path
