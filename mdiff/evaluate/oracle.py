"""The linear oracle: what a linear regression on the forcing, fitted on the training years,
says about the forced response, ENSO teleconnections and trends.

For every channel and grid point, the monthly anomalies of the reference state (training
months, climatology of the training months removed) are regressed on the leading principal
components of the SST anomaly field over ocean (area-weighted EOFs of the training months).
The number of components is chosen on the validation months (AI-MIP: selection within
1979-2014). A uniform +dK over ocean projects onto the same EOFs, so the oracle's response
to +dK is ``B @ pcs(dK)``. It sees the same inputs as the emulator and nothing after 2014:
on the synthetic world its scores are what a per-point linear fit of the SST EOFs gets
from the training data, shown beside the emulator's (a reference, not a bound: it has no
sea ice and no season, and the emulator's +4K pattern correlation now exceeds it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdiff.grid import LatLonGrid

from . import metrics as M

CANDIDATE_COMPONENTS = (4, 8, 16, 32)  # at most one predictor per ~11 training months


@dataclass
class SstBasis:
    """EOFs of the training-month SST anomalies over ocean and the climatology they remove."""

    ocean: np.ndarray  # (H, W) bool
    sqrt_w: np.ndarray  # (P,) sqrt of the ocean points' area weights
    climatology: np.ndarray  # (12, P)
    eofs: np.ndarray  # (K, P), orthonormal in the weighted inner product's square root space

    def anomalies(self, sst: np.ndarray, months: np.ndarray) -> np.ndarray:
        """(T, H, W) SST -> (T, P) weighted anomalies."""
        moy = M.month_of_year(months) - 1
        return (sst[:, self.ocean] - self.climatology[moy]) * self.sqrt_w

    def components(self, weighted_anomalies: np.ndarray) -> np.ndarray:
        return weighted_anomalies @ self.eofs.T


def unavailable(months: np.ndarray, train: tuple[str, str], validate: tuple[str, str]) -> str | None:
    """Why the oracle cannot be fitted on these months (None when it can): it needs every calendar
    month in the training period, more than two months per predictor, and some validation months."""
    train_sel = M.select_months(months, *train)
    if np.unique(M.month_of_year(months[train_sel])).size < 12:
        return f"the evaluated months hold {int(train_sel.sum())} of the training period {train[0]}..{train[1]}"
    if train_sel.sum() <= 2 * min(CANDIDATE_COMPONENTS):
        return f"only {int(train_sel.sum())} training months (need > {2 * min(CANDIDATE_COMPONENTS)})"
    if not M.select_months(months, *validate).any():
        return f"no evaluated month in the validation period {validate[0]}..{validate[1]}"
    return None


def sst_basis(grid: LatLonGrid, sst: np.ndarray, months: np.ndarray, train: np.ndarray) -> SstBasis:
    ocean = np.isfinite(sst[train]).all(axis=0)
    if not ocean.any():
        raise ValueError("oracle: the SST has no point defined in every training month")
    moy = M.month_of_year(months[train]) - 1
    x = sst[train][:, ocean].astype(np.float64)
    clim = np.stack([x[moy == m].mean(axis=0) for m in range(12)])
    sqrt_w = np.sqrt(grid.cell_area[ocean] / grid.cell_area[ocean].sum())
    anomalies = (x - clim[moy]) * sqrt_w
    _, _, vt = np.linalg.svd(anomalies, full_matrices=False)
    return SstBasis(ocean, sqrt_w, clim, vt[: max(CANDIDATE_COMPONENTS)])


def _fit(pcs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares of y (T, N) on [1, pcs (T, K)]: coefficients (K + 1, N)."""
    design = np.concatenate([np.ones((pcs.shape[0], 1)), pcs], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return coef


def _anomalies(field: np.ndarray, months: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(T, H, W) minus the monthly climatology of the ``reference`` months: (T, H*W)."""
    moy = M.month_of_year(months) - 1
    ref = field[reference]
    clim = np.stack([ref[moy[reference] == m].mean(axis=0) for m in range(12)])
    return (field - clim[moy]).reshape(field.shape[0], -1)


@dataclass
class Oracle:
    basis: SstBasis
    components: int
    coefficients: dict[str, np.ndarray]  # channel -> (K + 1, H*W)
    shape: tuple[int, int]

    def predict(self, channel: str, sst: np.ndarray, months: np.ndarray) -> np.ndarray:
        """Predicted monthly anomalies (T, H, W) of ``channel`` for SST (T, H, W)."""
        pcs = self.basis.components(self.basis.anomalies(sst, months))[:, : self.components]
        coef = self.coefficients[channel]
        return (coef[0] + pcs @ coef[1:]).reshape(-1, *self.shape)

    def response(self, channel: str, offset_k: float) -> np.ndarray:
        """Predicted time-mean response (H, W) to SST + offset_k over ocean."""
        pcs = self.basis.components(np.full((1, self.basis.sqrt_w.size), offset_k) * self.basis.sqrt_w)
        return (pcs[:, : self.components] @ self.coefficients[channel][1:]).reshape(self.shape)


def fit_oracle(grid: LatLonGrid, sst: np.ndarray, fields: dict[str, np.ndarray], months: np.ndarray,
               train: tuple[str, str], validate: tuple[str, str], basis: SstBasis | None = None) -> Oracle:
    """Fit on the ``train`` months; choose the number of components on ``validate``.
    ``basis``: the SST EOFs of the same training months, if already computed."""
    train_sel = M.select_months(months, *train)
    val_sel = M.select_months(months, *validate)
    basis = basis or sst_basis(grid, sst, months, train_sel)
    pcs = basis.components(basis.anomalies(sst, months))
    anomalies = {ch: _anomalies(f, months, train_sel) for ch, f in fields.items()}
    scale = {ch: float(a[train_sel].std()) or 1.0 for ch, a in anomalies.items()}
    best, best_err = None, np.inf
    for k in CANDIDATE_COMPONENTS:
        if k > basis.eofs.shape[0] or k >= train_sel.sum() // 2:
            continue
        err = 0.0
        for ch, a in anomalies.items():
            coef = _fit(pcs[train_sel, :k], a[train_sel])
            pred = coef[0] + pcs[val_sel, :k] @ coef[1:]
            err += float(((pred - a[val_sel]) ** 2).mean()) / scale[ch] ** 2
        if err < best_err:
            best, best_err = k, err
    if best is None:
        raise ValueError("oracle: too few training months for any candidate number of components")
    coefficients = {ch: _fit(pcs[train_sel, :best], a[train_sel]) for ch, a in anomalies.items()}
    return Oracle(basis, best, coefficients, grid.shape)
