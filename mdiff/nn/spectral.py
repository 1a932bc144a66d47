"""Spectral convolution on the sphere: SHT -> low-rank map across (l, m) modes -> inverse SHT.

The map never mixes different orders m, so it commutes with rotations about the polar
axis (a longitudinal roll of the input rolls the output). Input and output may live on
different grids: the map reads the input's modes and writes the output's modes, so
resampling happens in spectral space. Transforms always run in fp32, also under autocast.

torch-harmonics 0.9 truncates triangularly (lmax = mmax). A conv between grids of
truncations L_in and L_out only ever uses orders m < M = min(L_in, L_out), so the
transforms here contract only those orders (the same quadrature/Legendre tables as
torch-harmonics' RealSHT/InverseRealSHT, sliced); tests compare with the public classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import nn

from mdiff.grid import LatLonGrid, make_isht, make_sht


@dataclass(frozen=True)
class SphereGrid:
    """A grid the networks run on: the model grid (equiangular) or a latent grid.

    ``kind`` is a torch-harmonics grid type; ``lmax`` the explicit triangular truncation.
    Rows run south to north like the model grid (torch-harmonics counts colatitude from
    the north pole; the mirror image is harmless because every grid uses the same one).
    """

    nlat: int
    nlon: int
    kind: str
    lmax: int

    @classmethod
    def model(cls, grid: LatLonGrid, lmax: int | None = None) -> SphereGrid:
        limit = grid.default_truncation()
        return cls(grid.nlat, grid.nlon, "equiangular", min(lmax or limit, limit))

    @classmethod
    def latent(cls, grid: LatLonGrid, squeeze: int, lmax: int | None = None) -> SphereGrid:
        """The latent grid of ``squeeze``; ``lmax`` truncates its modes further (None: the
        grid's exact truncation)."""
        nlat, nlon = grid.coarsened(squeeze)
        if nlat < 2 or nlon < 4:
            raise ValueError(f"squeeze {squeeze} leaves a {nlat}x{nlon} latent grid for the "
                             f"{grid.nlat}x{grid.nlon} grid; expected at least 2x4")
        # Gauss-Legendre rows fit any nlat (no poles needed) and integrate exactly to 2 nlat - 1.
        limit = min(nlat, nlon // 2 + 1)
        return cls(nlat, nlon, "legendre-gauss", min(lmax or limit, limit))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.nlat, self.nlon)

    @cached_property
    def area_weights(self) -> np.ndarray:
        """Quadrature weights (nlat, nlon) summing to 1, for area-weighted means."""
        if self.kind == "equiangular":
            return LatLonGrid(self.nlat, self.nlon).area_weights
        from torch_harmonics.quadrature import legendre_gauss_weights

        _, w = legendre_gauss_weights(self.nlat)
        w = np.repeat(np.asarray(w, dtype=np.float64)[:, None], self.nlon, axis=1)
        return w / w.sum()


def _fp32(fn):
    """Run ``fn`` with autocast off and float inputs in fp32 (SHTs must stay fp32)."""

    def wrapper(self, x):
        with torch.autocast(device_type=x.device.type, enabled=False):
            return fn(self, x.to(torch.complex64) if x.is_complex() else x.float())

    return wrapper


class TruncatedSHT(nn.Module):
    """Forward real SHT of ``grid`` keeping orders m < ``mmax`` (degrees l < grid.lmax)."""

    def __init__(self, grid: SphereGrid, mmax: int):
        super().__init__()
        sht = make_sht(grid.nlat, grid.nlon, grid.lmax, grid.lmax, grid=grid.kind)
        self.mmax = mmax
        # (m, l, k): Legendre polynomials times quadrature weights; derived, never saved
        self.register_buffer("weights", sht.weights[:mmax].clone(), persistent=False)

    @_fp32
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., nlat, nlon) -> (..., lmax, mmax)
        f = torch.fft.rfft(x, dim=-1, norm="forward")[..., : self.mmax].transpose(-1, -2)
        re = torch.einsum("...mk,mlk->...lm", f.real.contiguous(), self.weights)
        im = torch.einsum("...mk,mlk->...lm", f.imag.contiguous(), self.weights)
        return torch.complex(re, im)


class TruncatedISHT(nn.Module):
    """Inverse real SHT onto ``grid`` from orders m < ``mmax`` (higher orders are zero)."""

    def __init__(self, grid: SphereGrid, mmax: int):
        super().__init__()
        isht = make_isht(grid.nlat, grid.nlon, grid.lmax, grid.lmax, grid=grid.kind)
        self.nlon = grid.nlon
        self.register_buffer("pct", isht.pct[:mmax].clone(), persistent=False)  # (m, k, l)

    @_fp32
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., lmax, mmax) complex -> (..., nlat, nlon)
        x = x.transpose(-1, -2)
        re = torch.einsum("...ml,mkl->...km", x.real.contiguous(), self.pct)
        im = torch.einsum("...ml,mkl->...km", x.imag.contiguous(), self.pct)
        im = torch.cat([torch.zeros_like(im[..., :1]), im[..., 1:]], dim=-1)  # m = 0 is real
        return torch.fft.irfft(torch.complex(re, im), n=self.nlon, dim=-1, norm="forward")


def triangular_modes(lmax: int, mmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (l, m) of the modes with m <= l < lmax, m < mmax (the ones an SHT fills)."""
    ls, ms = zip(*[(deg, m) for m in range(mmax) for deg in range(m, lmax)], strict=True)
    return torch.tensor(ls), torch.tensor(ms)


def _complex_normal(shape: tuple[int, ...], std: float) -> torch.Tensor:
    """Real storage (..., 2) of complex N(0, std^2) numbers: AdamW, DDP and EMA see real tensors."""
    return torch.randn(*shape, 2) * (std / math.sqrt(2.0))


class SpectralConv(nn.Module):
    """Low-rank spectral map from ``in_grid`` to ``out_grid``, rank ``rank``.

    With coefficients x[i, l, m] of input channel i, for each order m separately:
      h[i, r, m] = sum_l x[i, l, m] V[r, l, m]          (analysis onto r spectral patterns)
      g[o, r, m] = sum_i C[r, o, i] h[i, r, m]          (channel mixing per pattern)
      y[o, l, m] = sum_r U[r, l, m] g[o, r, m]          (synthesis on the output modes)
    i.e. per order a rank-r map over (channel, degree). V and U hold only the modes an SHT
    fills (l >= m); all weights are complex, stored as real pairs.
    """

    def __init__(self, in_channels: int, out_channels: int, in_grid: SphereGrid,
                 out_grid: SphereGrid, rank: int):
        super().__init__()
        if rank < 1:
            raise ValueError(f"spectral rank must be >= 1, got {rank}")
        self.mmax = min(in_grid.lmax, out_grid.lmax)
        self.lmax_in, self.lmax_out = in_grid.lmax, out_grid.lmax
        self.rank, self.out_channels = rank, out_channels
        self.sht = TruncatedSHT(in_grid, self.mmax)
        self.isht = TruncatedISHT(out_grid, self.mmax)
        l_in, m_in = triangular_modes(self.lmax_in, self.mmax)
        l_out, m_out = triangular_modes(self.lmax_out, self.mmax)
        for name, value in (("l_in", l_in), ("m_in", m_in), ("l_out", l_out), ("m_out", m_out)):
            self.register_buffer(name, value, persistent=False)
        self.analysis = nn.Parameter(_complex_normal((rank, len(l_in)), 1.0 / math.sqrt(self.lmax_in)))
        self.mixing = nn.Parameter(_complex_normal((rank, out_channels, in_channels), 1.0 / math.sqrt(in_channels)))
        self.synthesis = nn.Parameter(_complex_normal((rank, len(l_out)), 1.0 / math.sqrt(rank)))

    def complex_parameter_count(self) -> int:
        """Parameters with complex weights counted once (the reference's way of counting)."""
        return sum(p.numel() // 2 for p in self.parameters())

    def _dense(self, packed: torch.Tensor, ls: torch.Tensor, ms: torch.Tensor, lmax: int) -> torch.Tensor:
        """Scatter packed (rank, modes) weights into a dense complex (rank, lmax, mmax) tensor."""
        dense = torch.zeros(self.rank, lmax, self.mmax, dtype=torch.complex64, device=packed.device)
        dense[:, ls, ms] = torch.view_as_complex(packed.float())
        return dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            coeffs = self.sht(x)  # (B, I, L_in, M)
            v = self._dense(self.analysis, self.l_in, self.m_in, self.lmax_in)
            u = self._dense(self.synthesis, self.l_out, self.m_out, self.lmax_out)
            mix = torch.view_as_complex(self.mixing.float())
            h = torch.einsum("bilm,rlm->birm", coeffs, v)
            g = torch.einsum("birm,roi->borm", h, mix)
            return self.isht(torch.einsum("borm,rlm->bolm", g, u))
