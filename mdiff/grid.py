"""The equiangular latitude-longitude grid with both poles, its cell areas and SHTs.

A grid of ``nlat`` rows from -90 to 90 (poles included) and ``nlon = 2 (nlat - 1)``
columns from 0 east. Rows are stored south to north, as prepared files are. Cell
boundaries lie half-way between rows, so the pole rows are half cells; the exact cell
area on the unit sphere is ``(sin phi2 - sin phi1) * dlon``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class LatLonGrid:
    nlat: int
    nlon: int

    def __post_init__(self) -> None:
        if self.nlat < 3 or self.nlon != 2 * (self.nlat - 1):
            raise ValueError(
                f"grid {self.nlat}x{self.nlon}: expected nlat >= 3 and nlon = 2*(nlat-1) "
                f"(an equiangular grid with both poles, e.g. 121x240 for 1.5 degrees)"
            )

    @classmethod
    def from_resolution(cls, degrees: float) -> LatLonGrid:
        nlat = round(180.0 / degrees) + 1
        if abs((nlat - 1) * degrees - 180.0) > 1e-9:
            raise ValueError(f"resolution {degrees} degrees does not divide 180")
        return cls(nlat, 2 * (nlat - 1))

    @property
    def resolution(self) -> float:
        """Grid spacing in degrees."""
        return 180.0 / (self.nlat - 1)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.nlat, self.nlon)

    @cached_property
    def lat(self) -> np.ndarray:
        return np.linspace(-90.0, 90.0, self.nlat)

    @cached_property
    def lon(self) -> np.ndarray:
        return np.arange(self.nlon) * (360.0 / self.nlon)

    @cached_property
    def lat_bounds(self) -> np.ndarray:
        half = self.resolution / 2
        return np.clip(np.stack([self.lat - half, self.lat + half], axis=1), -90.0, 90.0)

    @cached_property
    def lon_bounds(self) -> np.ndarray:
        half = 180.0 / self.nlon
        return np.stack([self.lon - half, self.lon + half], axis=1)

    @cached_property
    def cell_area(self) -> np.ndarray:
        """Exact cell areas on the unit sphere (steradians), shape (nlat, nlon); sum 4 pi."""
        s = np.sin(np.deg2rad(self.lat_bounds))
        band = (s[:, 1] - s[:, 0]) * (2 * np.pi / self.nlon)
        return np.repeat(band[:, None], self.nlon, axis=1)

    @cached_property
    def area_weights(self) -> np.ndarray:
        """Quadrature weights for spatial means, shape (nlat, nlon), summing to 1."""
        return self.cell_area / self.cell_area.sum()

    def mean(self, field, mask=None):
        """Area-weighted mean over the last two axes (numpy or torch).

        ``mask`` (broadcastable, 1 = valid) restricts the mean, e.g. to ocean points.
        """
        w = self.area_weights
        if _is_torch(field):
            import torch

            w = torch.as_tensor(w, dtype=field.dtype, device=field.device)
            if mask is not None:
                w = w * torch.as_tensor(mask, dtype=field.dtype, device=field.device)
            return (field * w).sum(dim=(-2, -1)) / w.sum(dim=(-2, -1))
        if mask is not None:
            w = w * np.asarray(mask, dtype=np.float64)
        return (np.asarray(field) * w).sum(axis=(-2, -1)) / w.sum(axis=(-2, -1))

    def coarsened(self, squeeze: int) -> tuple[int, int]:
        """Latent grid shape for a squeeze factor (121x240, 4 -> 30x60, as the reference)."""
        return (self.nlat // squeeze, self.nlon // squeeze)

    def default_truncation(self) -> int:
        """lmax = mmax for which the equiangular SHT round trip is exact: (nlat + 1) // 2
        (61 on 121x240, torch-harmonics' own default since 0.9; pass it explicitly)."""
        return (self.nlat + 1) // 2


@dataclass(frozen=True)
class RegularGrid:
    """A regular, cell-centred latitude-longitude grid (no pole rows), e.g. the 1-degree
    grid of AI-MIP's ``gr`` files and of the organisers' analysis: 180 x 360 cells, centres
    at -89.5 .. 89.5 N and 0.5 .. 359.5 E. Rows south to north."""

    nlat: int = 180
    nlon: int = 360

    @property
    def resolution(self) -> float:
        return 180.0 / self.nlat

    @property
    def shape(self) -> tuple[int, int]:
        return (self.nlat, self.nlon)

    @cached_property
    def lat_bounds(self) -> np.ndarray:
        edges = np.linspace(-90.0, 90.0, self.nlat + 1)
        return np.stack([edges[:-1], edges[1:]], axis=1)

    @cached_property
    def lon_bounds(self) -> np.ndarray:
        edges = np.linspace(0.0, 360.0, self.nlon + 1)
        return np.stack([edges[:-1], edges[1:]], axis=1)

    @cached_property
    def lat(self) -> np.ndarray:
        return self.lat_bounds.mean(axis=1)

    @cached_property
    def lon(self) -> np.ndarray:
        return self.lon_bounds.mean(axis=1)

    @cached_property
    def cell_area(self) -> np.ndarray:
        """Exact cell areas on the unit sphere (steradians), shape (nlat, nlon); sum 4 pi."""
        s = np.sin(np.deg2rad(self.lat_bounds))
        band = (s[:, 1] - s[:, 0]) * (2 * np.pi / self.nlon)
        return np.repeat(band[:, None], self.nlon, axis=1)

    def cdo_grid(self) -> str:
        """The grid as a CDO grid description file."""
        return (f"gridtype = lonlat\nxsize = {self.nlon}\nysize = {self.nlat}\n"
                f"xfirst = {self.lon[0]:g}\nxinc = {360.0 / self.nlon:g}\n"
                f"yfirst = {self.lat[0]:g}\nyinc = {self.resolution:g}\n")


ONE_DEGREE = RegularGrid(180, 360)


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def make_sht(nlat: int, nlon: int, lmax: int, mmax: int, grid: str = "equiangular"):
    """Forward real SHT with an explicit truncation (torch-harmonics' default changed in 0.9)."""
    from torch_harmonics import RealSHT

    return RealSHT(nlat, nlon, lmax=lmax, mmax=mmax, grid=grid, norm="ortho").float()


def make_isht(nlat: int, nlon: int, lmax: int, mmax: int, grid: str = "equiangular"):
    """Inverse real SHT with an explicit truncation."""
    from torch_harmonics import InverseRealSHT

    return InverseRealSHT(nlat, nlon, lmax=lmax, mmax=mmax, grid=grid, norm="ortho").float()
