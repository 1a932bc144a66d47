"""Transforms (sqrt, clipped logit) and per-channel standardisation.

The statistics file is the one written by ``mdiff stats``: for each channel the mean and
std of the *transformed* field, area-weighted over the statistics period only.
Forcing points where SST is undefined (land) are masked: set to 0 after normalisation
and flagged by the ``sst_undefined`` channel.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mdiff import variables as V


def forward_transform(x: np.ndarray, transform: str) -> np.ndarray:
    if transform == "none":
        return x
    if transform == "sqrt":
        # ERA5 humidity/precipitation can be a hair below 0 after interpolation
        return np.sqrt(np.maximum(x, 0.0))
    if transform == "logit":
        p = np.clip(x, V.LOGIT_EPS, 1.0 - V.LOGIT_EPS)
        return np.log(p) - np.log1p(-p)
    raise ValueError(f"unknown transform {transform!r}")


def inverse_transform(y: np.ndarray, transform: str) -> np.ndarray:
    if transform == "none":
        return y
    if transform == "sqrt":
        return np.square(np.maximum(y, 0.0))
    if transform == "logit":
        return 1.0 / (1.0 + np.exp(-y))
    raise ValueError(f"unknown transform {transform!r}")


@dataclass(frozen=True)
class ChannelStats:
    mean: float
    std: float
    transform: str


class Normalizer:
    """Standardises stacked arrays (..., C, lat, lon) channel by channel."""

    def __init__(self, stats: dict[str, ChannelStats], meta: dict | None = None):
        self.stats = stats
        self.meta = meta or {}

    # --- persistence
    @classmethod
    def from_dict(cls, d: dict) -> Normalizer:
        stats = {k: ChannelStats(float(v["mean"]), float(v["std"]), v["transform"]) for k, v in d["channels"].items()}
        return cls(stats, {k: v for k, v in d.items() if k != "channels"})

    @classmethod
    def from_json(cls, path: str | Path) -> Normalizer:
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict:
        return {**self.meta, "channels": {k: vars(s) for k, s in self.stats.items()}}

    # --- arrays
    def _vectors(self, names: Sequence[str]):
        missing = [n for n in names if n not in self.stats]
        if missing:
            raise KeyError(f"normalisation statistics lack channels {missing}")
        mean = np.array([self.stats[n].mean for n in names], dtype=np.float32)[:, None, None]
        std = np.array([self.stats[n].std for n in names], dtype=np.float32)[:, None, None]
        return mean, std

    def normalize(self, x: np.ndarray, names: Sequence[str]) -> np.ndarray:
        mean, std = self._vectors(names)
        out = np.empty(x.shape, dtype=np.float32)
        for i, n in enumerate(names):
            out[..., i, :, :] = forward_transform(x[..., i, :, :].astype(np.float64), self.stats[n].transform)
        return (out - mean) / std

    def denormalize(self, y: np.ndarray, names: Sequence[str]) -> np.ndarray:
        mean, std = self._vectors(names)
        z = np.asarray(y, dtype=np.float32) * std + mean
        for i, n in enumerate(names):
            z[..., i, :, :] = inverse_transform(z[..., i, :, :], self.stats[n].transform)
        return z

    def forcing(self, sst: np.ndarray, siconc: np.ndarray, sst_offset_k: float = 0.0) -> np.ndarray:
        """The 3 forcing channels (..., 3, lat, lon) from physical SST (K) and sea ice (0-1).

        ``sst_offset_k`` raises SST uniformly over ocean *before* normalisation with the
        unperturbed statistics (aimip-p2k/p4k); sea ice and the land mask are unchanged.
        Used identically by training and inference, so the forcing means the same in both.
        """
        undefined = ~np.isfinite(sst)
        sst = np.where(undefined, np.nan, sst + sst_offset_k)
        ice = np.where(undefined | ~np.isfinite(siconc), 0.0, siconc)
        x = np.stack([sst, ice], axis=-3)
        y = self.normalize(np.nan_to_num(x, nan=0.0), ["sst", "siconc"])
        y = np.where(undefined[..., None, :, :], 0.0, y)
        return np.concatenate([y, undefined[..., None, :, :].astype(np.float32)], axis=-3).astype(np.float32)
