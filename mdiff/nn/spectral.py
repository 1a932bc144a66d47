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


def legendre_tables(grid: SphereGrid) -> tuple[torch.Tensor, torch.Tensor]:
    """The associated-Legendre tables of ``grid`` through torch-harmonics' public transforms.

    ``analysis`` (M, L, K): quadrature weights x Legendre polynomials, so that the SHT is
    ``c[l, m] = sum_k rfft(x)[k, m] analysis[m, l, k]`` (rfft with norm "forward");
    ``synthesis`` (M, K, L): the inverse's ``f[k, m] = sum_l c[l, m] synthesis[m, k, l]``.
    Both transforms are linear, so they are read off by transforming basis fields: a delta
    at longitude 0 on one row (its rfft is 1 in every order), and unit coefficients in one
    degree (every order at once; the orders come apart again under an rfft).
    """
    nlat, nlon, lmax = grid.nlat, grid.nlon, grid.lmax
    sht = make_sht(nlat, nlon, lmax, lmax, grid=grid.kind)
    isht = make_isht(nlat, nlon, lmax, lmax, grid=grid.kind)
    with torch.no_grad():
        rows = torch.zeros(nlat, nlat, nlon)
        rows[torch.arange(nlat), torch.arange(nlat), 0] = float(nlon)
        analysis = sht(rows).real.permute(2, 1, 0).contiguous()  # (row k, l, m) -> (m, l, k)
        degrees = torch.zeros(lmax, lmax, lmax, dtype=torch.complex64)
        degrees[torch.arange(lmax), torch.arange(lmax), :] = 1.0
        fields = isht(degrees)  # (l, k, lon)
        synthesis = torch.fft.rfft(fields, dim=-1, norm="forward")[..., :lmax].real.permute(2, 1, 0).contiguous()
    return analysis, synthesis  # synthesis: (l, k, m) -> (m, k, l)


class TruncatedSHT(nn.Module):
    """Forward real SHT of ``grid`` keeping orders m < ``mmax`` (degrees l < grid.lmax)."""

    def __init__(self, grid: SphereGrid, mmax: int):
        super().__init__()
        self.mmax = mmax
        # (m, l, k): Legendre polynomials times quadrature weights; derived, never saved
        self.register_buffer("weights", legendre_tables(grid)[0][:mmax].clone(), persistent=False)

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
        self.nlon = grid.nlon
        self.register_buffer("pct", legendre_tables(grid)[1][:mmax].clone(), persistent=False)  # (m, k, l)

    @_fp32
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., lmax, mmax) complex -> (..., nlat, nlon)
        x = x.transpose(-1, -2)
        re = torch.einsum("...ml,mkl->...km", x.real.contiguous(), self.pct)
        im = torch.einsum("...ml,mkl->...km", x.imag.contiguous(), self.pct)
        im = torch.cat([torch.zeros_like(im[..., :1]), im[..., 1:]], dim=-1)  # m = 0 is real
        return torch.fft.irfft(torch.complex(re, im), n=self.nlon, dim=-1, norm="forward")


class IsotropicSpectralConv(nn.Module):
    """Spherical convolution with isotropic kernels: ``y[o, l, m] = sum_i k[o, i, l] x[i, l, m]``.

    One kernel (a function of angular distance) at every position, by the convolution
    theorem on the sphere. Unlike ``SpectralConv`` (a map per order m, free to differ with
    latitude) a kernel learned where the input varies applies unchanged where it never did:
    the SST under sea ice is pinned at freezing in every training month, yet +dK raises it.
    """

    def __init__(self, in_channels: int, out_channels: int, grid: SphereGrid):
        super().__init__()
        self.sht, self.isht = TruncatedSHT(grid, grid.lmax), TruncatedISHT(grid, grid.lmax)
        self.kernel = nn.Parameter(torch.randn(out_channels, in_channels, grid.lmax) / math.sqrt(in_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, I, H, W) -> (B, O, H, W)."""
        c = self.sht(x)  # (B, I, L, M) complex
        k = self.kernel.float()
        re = torch.einsum("bilm,oil->bolm", c.real, k)
        im = torch.einsum("bilm,oil->bolm", c.imag, k)
        return self.isht(torch.complex(re, im)).to(x.dtype)


def triangular_modes(lmax: int, mmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (l, m) of the modes with m <= l < lmax, m < mmax (the ones an SHT fills)."""
    ls, ms = zip(*[(deg, m) for m in range(mmax) for deg in range(m, lmax)], strict=True)
    return torch.tensor(ls), torch.tensor(ms)


def _complex_normal(shape: tuple[int, ...], std: float) -> torch.Tensor:
    """Real storage (..., 2) of complex N(0, std^2) numbers: AdamW, DDP and EMA see real tensors."""
    return torch.randn(*shape, 2) * (std / math.sqrt(2.0))


@dataclass
class SpectralOperators:
    """A ``SpectralConv``'s weights folded with its transforms' tables (see ``operators``).

    ``analysis`` (M, R, K_in): Legendre analysis x analysis patterns; ``mixing`` (R, I, O);
    ``synthesis`` (M, K_out, R) when the inverse Legendre step is folded in (``legendre``
    None), else (M, L_out, R) with ``legendre`` (M, K_out, L_out) applied after.
    """

    analysis: torch.Tensor
    mixing: torch.Tensor
    synthesis: torch.Tensor
    legendre: torch.Tensor | None


class SpectralConv(nn.Module):
    """Low-rank spectral map from ``in_grid`` to ``out_grid``, rank ``rank``.

    With coefficients x[i, l, m] of input channel i, for each order m separately:
      h[i, r, m] = sum_l x[i, l, m] V[r, l, m]          (analysis onto r spectral patterns)
      g[o, r, m] = sum_i C[r, o, i] h[i, r, m]          (channel mixing per pattern)
      y[o, l, m] = sum_r U[r, l, m] g[o, r, m]          (synthesis on the output modes)
    i.e. per order a rank-r map over (channel, degree). V and U hold only the modes an SHT
    fills (l >= m); all weights are complex, stored as real pairs.

    The map runs in three public steps, each linear, whose composition is ``forward``:
    ``analyse`` (grid -> pattern domain g, any slice of the input channels), ``spectral``
    (g -> the output's Fourier coefficients y, optionally adding a precomputed y) and
    ``to_grid`` (y -> grid). The Legendre tables are folded into the patterns
    (``operators``), so the SHT's degree axis is never materialised. Because every step is
    linear, the images of input-channel groups add: a rollout computes the image of the
    inputs fixed for a month once (``mdiff.nn.layers.SphereBlock.context``).
    """

    def __init__(self, in_channels: int, out_channels: int, in_grid: SphereGrid,
                 out_grid: SphereGrid, rank: int):
        super().__init__()
        if rank < 1:
            raise ValueError(f"spectral rank must be >= 1, got {rank}")
        self.mmax = min(in_grid.lmax, out_grid.lmax)
        self.lmax_in, self.lmax_out = in_grid.lmax, out_grid.lmax
        self.rank, self.out_channels, self.nlon_out = rank, out_channels, out_grid.nlon
        analysis, _ = legendre_tables(in_grid)
        _, synthesis = legendre_tables(out_grid)
        self.register_buffer("legendre_analysis", analysis[: self.mmax].clone(), persistent=False)  # (M, L, K)
        self.register_buffer("legendre_synthesis", synthesis[: self.mmax].clone(), persistent=False)  # (M, K, L)
        l_in, m_in = triangular_modes(self.lmax_in, self.mmax)
        l_out, m_out = triangular_modes(self.lmax_out, self.mmax)
        for name, value in (("l_in", l_in), ("m_in", m_in), ("l_out", l_out), ("m_out", m_out)):
            self.register_buffer(name, value, persistent=False)
        self.analysis = nn.Parameter(_complex_normal((rank, len(l_in)), 1.0 / math.sqrt(self.lmax_in)))
        self.mixing = nn.Parameter(_complex_normal((rank, out_channels, in_channels), 1.0 / math.sqrt(in_channels)))
        self.synthesis = nn.Parameter(_complex_normal((rank, len(l_out)), 1.0 / math.sqrt(rank)))
        # Fold the inverse Legendre step into the synthesis patterns where that is cheaper
        # (onto latent grids); onto a fine grid (the decoder's) keep it a separate real product.
        k_out, l_out_n = self.legendre_synthesis.shape[1:]
        self.fold_synthesis = rank * k_out <= rank * l_out_n + l_out_n * k_out // 2

    def complex_parameter_count(self) -> int:
        """Parameters with complex weights counted once (the reference's way of counting)."""
        return sum(p.numel() // 2 for p in self.parameters())

    def _dense(self, packed: torch.Tensor, ls: torch.Tensor, ms: torch.Tensor, lmax: int) -> torch.Tensor:
        """Scatter packed (rank, modes) weights into a dense complex (rank, lmax, mmax) tensor."""
        dense = torch.zeros(self.rank, lmax, self.mmax, dtype=torch.complex64, device=packed.device)
        dense[:, ls, ms] = torch.view_as_complex(packed.float())
        return dense

    def operators(self) -> SpectralOperators:
        """The weights folded with the Legendre tables (differentiable). Compute once per
        forward; inference computes them once per month and passes them on."""
        with torch.autocast(device_type=self.analysis.device.type, enabled=False):
            v = self._dense(self.analysis, self.l_in, self.m_in, self.lmax_in)  # (R, L_in, M)
            analysis = torch.einsum("mlk,rlm->mrk", self.legendre_analysis.to(torch.complex64), v)
            mixing = torch.view_as_complex(self.mixing.float()).transpose(1, 2)  # (R, I, O)
            u = self._dense(self.synthesis, self.l_out, self.m_out, self.lmax_out)  # (R, L_out, M)
            if self.fold_synthesis:
                synthesis = torch.einsum("rlm,mkl->mkr", u, self.legendre_synthesis.to(torch.complex64))
                return SpectralOperators(analysis.contiguous(), mixing.contiguous(), synthesis.contiguous(), None)
            return SpectralOperators(analysis.contiguous(), mixing.contiguous(), u.permute(2, 1, 0).contiguous(),
                                     self.legendre_synthesis)

    def analyse(self, x: torch.Tensor, ops: SpectralOperators, first: int = 0) -> torch.Tensor:
        """Input channels first..first+I-1 given as ``x`` (B, I, K, W) -> g (R, M, B, O)."""
        b, i, k, _ = x.shape
        m, r = self.mmax, self.rank
        with torch.autocast(device_type=x.device.type, enabled=False):
            f = torch.fft.rfft(x.float(), dim=-1, norm="forward")[..., :m]  # (B, I, K, M)
            f = f.permute(3, 2, 0, 1).reshape(m, k, b * i)
            h = torch.bmm(ops.analysis, f)  # (M, R, B*I)
            # (R, M*B, I): a copy in contiguous runs of B*I numbers, not a full transpose
            h = h.transpose(0, 1).reshape(r, m * b, i)
            g = torch.bmm(h, ops.mixing[:, first: first + i])  # (R, M*B, O)
        return g.view(r, m, b, self.out_channels)

    def spectral(self, g: torch.Tensor, ops: SpectralOperators, add: torch.Tensor | None = None) -> torch.Tensor:
        """g (R, M, B, O) -> y (M, X, B, O) (X: output rows if folded, else degrees) [+ ``add``,
        (M, X, 1 or B, O), folded into the matmul]."""
        r, m, b, o = g.shape
        with torch.autocast(device_type=g.device.type, enabled=False):
            g = g.transpose(0, 1).reshape(m, r, b * o)  # contiguous runs of B*O numbers
            if add is None:
                y = torch.bmm(ops.synthesis, g)
            else:
                y = torch.baddbmm(add.expand(m, -1, b, o).reshape(m, -1, b * o), ops.synthesis, g)
        return y.view(m, -1, b, o)

    def to_grid(self, y: torch.Tensor, ops: SpectralOperators) -> torch.Tensor:
        """y (M, X, B, O) -> (B, O, K_out, nlon), real."""
        m, x, b, o = y.shape
        with torch.autocast(device_type=y.device.type, enabled=False):
            if ops.legendre is not None:  # real Legendre synthesis of the real and imaginary parts together
                parts = torch.view_as_real(y).reshape(m, x, b * o * 2)
                y = torch.view_as_complex(torch.bmm(ops.legendre, parts).view(m, -1, b, o, 2))
            y = y.permute(2, 3, 1, 0)  # (B, O, K, M)
            # m = 0 is real: keep only the real part of that order
            y = torch.cat([torch.complex(y[..., :1].real, torch.zeros_like(y[..., :1].real)), y[..., 1:]], dim=-1)
            return torch.fft.irfft(y, n=self.nlon_out, dim=-1, norm="forward")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ops = self.operators()
        return self.to_grid(self.spectral(self.analyse(x, ops), ops), ops)
