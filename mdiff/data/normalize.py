"""Transforms (sqrt, clipped logit) and standardisation of the model's channels.

The statistics file is the one written by ``mdiff stats`` (``stats/normalization.nc``):
for each channel the mean and std of the *transformed* field, area-weighted over the
statistics period only, and for every dynamic channel (state, SST, sea ice) its
climatology per calendar month and grid point and the std of the anomalies from it.

Two modes (``model.normalization``):

* ``anomaly`` (the default, measured in docs/science.md): ``(T(x) - clim[month]) / anomaly_std``.
  The model sees monthly anomalies at unit scale, so the weather, the forced signal and
  the SST anomalies it must respond to are not hidden under the seasonal cycle and the
  equator-to-pole contrast. Decoding adds the climatology back.
* ``global`` (MD v0.9): ``(T(x) - mean) / std``, one number pair per channel.

Forcing points where SST is undefined (land) are masked: set to 0 after normalisation
and flagged by the ``sst_undefined`` channel. Statics always use the global mode.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from mdiff import variables as V

Mode = Literal["anomaly", "global"]


def _logit(x: np.ndarray) -> np.ndarray:
    p = np.clip(x, V.LOGIT_EPS, 1.0 - V.LOGIT_EPS)
    return np.log(p) - np.log1p(-p)


# transform -> (forward, inverse); sqrt: ERA5 humidity/precipitation can be a hair below 0
# after interpolation
TRANSFORMS = {
    "none": (lambda x: x, lambda y: y),
    "sqrt": (lambda x: np.sqrt(np.maximum(x, 0.0)), lambda y: np.square(np.maximum(y, 0.0))),
    "logit": (_logit, lambda y: 1.0 / (1.0 + np.exp(-y))),
}


def _pair(transform: str):
    try:
        return TRANSFORMS[transform]
    except KeyError:
        raise ValueError(f"unknown transform {transform!r}") from None


def forward_transform(x: np.ndarray, transform: str) -> np.ndarray:
    return _pair(transform)[0](x)


def inverse_transform(y: np.ndarray, transform: str) -> np.ndarray:
    return _pair(transform)[1](y)


@dataclass(frozen=True)
class ChannelStats:
    mean: float
    std: float
    transform: str
    anomaly_std: float | None = None  # std of the anomalies from the monthly climatology


class Normalizer:
    """Standardises stacked arrays (..., C, lat, lon) channel by channel.

    ``climatology``: {channel: (12, lat, lon)} of the transformed field (NaN where
    undefined), required by the ``anomaly`` mode. ``months``: the month of year (1..12) of
    each entry of the leading axis (one value, or one per entry of axis -4).
    """

    def __init__(self, stats: dict[str, ChannelStats], meta: dict | None = None,
                 climatology: dict[str, np.ndarray] | None = None, mode: Mode = "global"):
        self.stats = stats
        self.meta = meta or {}
        self.climatology = climatology or {}
        if mode not in ("anomaly", "global"):
            raise ValueError(f"normalisation mode {mode!r}; expected 'anomaly' or 'global'")
        self.mode = mode

    def with_mode(self, mode: Mode) -> Normalizer:
        if mode == "anomaly":
            lacking = [n for n in (*V.STATE_NAMES, *(c.name for c in V.PREPARED_FORCING))
                       if n not in self.climatology or self.stats[n].anomaly_std is None]
            if lacking:
                raise ValueError(f"normalisation statistics have no monthly climatology for {lacking[:4]}; "
                                 "rerun `mdiff stats` (the anomaly normalisation needs it)")
        return Normalizer(self.stats, self.meta, self.climatology, mode)

    def __eq__(self, other) -> bool:
        return (isinstance(other, Normalizer) and self.stats == other.stats and self.mode == other.mode
                and self.climatology.keys() == other.climatology.keys()
                and all(np.array_equal(v, other.climatology[k], equal_nan=True) for k, v in self.climatology.items()))

    # --- persistence
    @classmethod
    def from_dict(cls, d: dict, mode: Mode = "global") -> Normalizer:
        stats = {k: ChannelStats(float(v["mean"]), float(v["std"]), v["transform"],
                                 None if v.get("anomaly_std") is None else float(v["anomaly_std"]))
                 for k, v in d["channels"].items()}
        clim = {k: np.asarray(v, dtype=np.float32) for k, v in (d.get("climatology") or {}).items()}
        meta = {k: v for k, v in d.items() if k not in ("channels", "climatology")}
        return cls(stats, meta, clim).with_mode(mode)

    @classmethod
    def load(cls, path: str | Path, mode: Mode = "global") -> Normalizer:
        """The statistics file of ``mdiff stats`` (NetCDF; a JSON of an older version has no
        climatology and serves the ``global`` mode only)."""
        path = Path(path)
        if path.suffix == ".json":
            with open(path) as f:
                return cls.from_dict(json.load(f), mode)
        from mdiff.data.statistics import read_statistics

        return cls.from_dict(read_statistics(path), mode)


    def to_dict(self) -> dict:
        out = {**self.meta, "channels": {k: {key: v for key, v in vars(s).items() if v is not None}
                                         for k, s in self.stats.items()}}
        if self.climatology:
            out["climatology"] = dict(self.climatology)
        return out

    # --- arrays
    def _vectors(self, names: Sequence[str], anomaly: bool):
        missing = [n for n in names if n not in self.stats]
        if missing:
            raise KeyError(f"normalisation statistics lack channels {missing}")
        if anomaly:
            mean = 0.0
            std = np.array([self.stats[n].anomaly_std for n in names], dtype=np.float32)[:, None, None]
        else:
            mean = np.array([self.stats[n].mean for n in names], dtype=np.float32)[:, None, None]
            std = np.array([self.stats[n].std for n in names], dtype=np.float32)[:, None, None]
        return mean, std

    def _uses_anomalies(self, names: Sequence[str]) -> bool:
        return self.mode == "anomaly" and all(n in self.climatology for n in names)

    def _clim(self, names: Sequence[str], months, ndim: int) -> np.ndarray:
        """Climatology of ``names`` for ``months``, shaped to broadcast against (..., C, H, W)."""
        if months is None:
            raise ValueError("the anomaly normalisation needs the month of year of every field")
        index = np.asarray(months, dtype=np.int64) - 1
        clim = self._stacked_climatology(tuple(names))[index]  # (C, H, W) or (T, C, H, W)
        while clim.ndim < ndim:
            clim = clim[None]
        return clim

    def _stacked_climatology(self, names: tuple[str, ...]) -> np.ndarray:
        """(12, C, H, W) climatology of ``names``, NaN as 0, built once per channel list (a
        rollout denormalises every month with it)."""
        cache = self.__dict__.setdefault("_stacked", {})
        if names not in cache:
            cache[names] = np.nan_to_num(np.stack([self.climatology[n] for n in names], axis=1), nan=0.0)
        return cache[names]

    def normalize(self, x: np.ndarray, names: Sequence[str], months=None) -> np.ndarray:
        anomaly = self._uses_anomalies(names)
        mean, std = self._vectors(names, anomaly)
        out = np.empty(x.shape, dtype=np.float32)
        for i, n in enumerate(names):
            out[..., i, :, :] = forward_transform(x[..., i, :, :].astype(np.float64), self.stats[n].transform)
        if anomaly:
            out -= self._clim(names, months, out.ndim)
        return (out - mean) / std

    def denormalize(self, y: np.ndarray, names: Sequence[str], months=None, overwrite: bool = False) -> np.ndarray:
        """``overwrite``: the caller hands ``y`` over, and a C-contiguous float32 ``y`` is
        denormalised in place (a rollout's month: 43 MB at MD-1.5 with 10 members, which a
        fresh array would fault in page by page)."""
        anomaly = self._uses_anomalies(names)
        mean, std = self._vectors(names, anomaly)
        # in place on one float32 array: a rollout denormalises every month of every member
        owned = overwrite and y.dtype == np.float32 and y.flags.c_contiguous and y.flags.writeable
        z = np.multiply(y, std, out=y) if owned else np.multiply(y, std, dtype=np.float32)
        offset = self._clim(names, months, z.ndim) if anomaly else mean
        if np.broadcast_shapes(z.shape, np.shape(offset)) == z.shape:
            z += offset
        else:  # one field for many months: the result takes the months' axis
            z = z + offset
        for i, n in enumerate(names):
            if self.stats[n].transform != "none":
                z[..., i, :, :] = inverse_transform(z[..., i, :, :], self.stats[n].transform)
        return z

    def forcing(self, sst: np.ndarray, siconc: np.ndarray, sst_offset_k: float = 0.0, months=None) -> np.ndarray:
        """The 3 forcing channels (..., 3, lat, lon) from physical SST (K) and sea ice (0-1).

        ``sst_offset_k`` raises SST uniformly over ocean *before* normalisation with the
        unperturbed statistics (aimip-p2k/p4k); sea ice and the land mask are unchanged.
        Used identically by training and inference, so the forcing means the same in both.
        """
        undefined = ~np.isfinite(sst)
        sst = np.where(undefined, np.nan, sst + sst_offset_k)
        ice = np.where(undefined | ~np.isfinite(siconc), 0.0, siconc)
        x = np.stack([sst, ice], axis=-3)
        y = self.normalize(np.nan_to_num(x, nan=0.0), ["sst", "siconc"], months)
        y = np.where(undefined[..., None, :, :], 0.0, y)
        return np.concatenate([y, undefined[..., None, :, :].astype(np.float32)], axis=-3).astype(np.float32)
