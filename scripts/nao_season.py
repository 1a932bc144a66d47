"""The NAO's variance month by month: emulator rollout against the truth realisations.

The synthetic world's NAO is a winter mode (its amplitude is ~2.7x larger in January than in
July, so its variance ~7x). For each calendar month this prints the variance of the monthly
anomalies of the NAO index (sea-level pressure over the NAO sector, 20-80N 90W-40E,
projected on the planted NAO pattern, area-weighted) of the `aimip` rollout (members
pooled) and of the truth realisations, 1979-2014, and their ratio; the scored NAO variance
(docs/evaluation.md) is the winter's (DJF) one (docs/science.md, "The NAO's season"):

    source .venv/bin/activate
    python scripts/nao_season.py results/synthetic

The folder is a `make run` results folder (rollout/aimip/ and truth/), or a run folder of
`mdiff bench science --keep-rollouts`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import xarray as xr

from mdiff.data import prepared as P
from mdiff.evaluate import metrics as M
from mdiff.grid import LatLonGrid

PERIOD = ("1979-01", "2014-12")


def nao_index(psl: np.ndarray, pattern: np.ndarray, grid: LatLonGrid) -> np.ndarray:
    """(..., time, lat, lon) psl -> (..., time): its projection on ``pattern`` over the NAO
    sector, area-weighted and scaled so that the pattern itself gives 1."""
    sector = M.region_mask(grid, M.NAO_LAT, M.NAO_LON)
    weights = np.where(sector, grid.area_weights * pattern, 0.0)
    return (psl * weights).sum(axis=(-2, -1)) / float((weights * pattern).sum())


def variance_by_month(index: np.ndarray, moy: np.ndarray) -> np.ndarray:
    """(12,) variance of the anomalies about each calendar month's mean, pooled over leading axes."""
    return np.array([np.var(index[..., moy == m] - index[..., moy == m].mean(axis=-1, keepdims=True))
                     for m in range(1, 13)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="folder with rollout/aimip/*.nc and truth/")
    args = parser.parse_args()
    rollouts = sorted((args.results / "rollout" / "aimip").glob("*.nc"))
    truths = sorted((args.results / "truth" / "realizations").glob("*.nc"))
    if not rollouts or not truths:
        raise SystemExit(f"{args.results}: expected rollout/aimip/*.nc and truth/realizations/*.nc "
                         "(a make run results folder)")
    with xr.open_dataset(args.results / "truth" / "modes.nc") as modes:
        pattern = modes["nao_pattern_psl"].values.astype(np.float64)
        grid = LatLonGrid(modes.sizes["lat"], modes.sizes["lon"])

    def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
        with xr.open_dataset(path) as ds:
            ds = ds.sel(time=slice(*PERIOD))
            return nao_index(ds["psl"].values.astype(np.float64), pattern, grid), P.month_of_year(ds.time.values)

    emulator = [load(p) for p in rollouts]
    truth = [load(p) for p in truths]
    moy = truth[0][1]
    var_em = np.mean([variance_by_month(i, moy) for i, _ in emulator], axis=0)
    var_truth = np.mean([variance_by_month(i, moy) for i, _ in truth], axis=0)
    print(f"NAO index variance by calendar month, {PERIOD[0]}..{PERIOD[1]} "
          f"({len(rollouts)} rollout file(s), {len(truths)} truth realisation(s))")
    print("month   truth  emulator  ratio")
    for m in range(12):
        print(f"{m + 1:5d} {var_truth[m]:7.3f} {var_em[m]:9.3f} {var_em[m] / var_truth[m]:6.2f}")
    djf = [11, 0, 1]
    print(f"DJF ratio {var_em[djf].mean() / var_truth[djf].mean():.2f}, JJA ratio "
          f"{var_em[5:8].mean() / var_truth[5:8].mean():.2f}, all months {var_em.mean() / var_truth.mean():.2f}")


if __name__ == "__main__":
    main()
