"""The SFNO-style block and its parts: conditional RMS norm, pointwise MLP."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mdiff.nn.spectral import SpectralConv, SphereGrid


def conv1x1(in_channels: int, out_channels: int, zero: bool = False) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
    if zero:  # start as the identity modulation / a zero residual
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
    return conv


class ConditionalRMSNorm(nn.Module):
    """x / RMS(x) * (1 + scale) + shift, with scale and shift maps computed from conditioning.

    The RMS runs over channels and the sphere, area-weighted (quadrature weights), per sample.
    The modulation starts at zero, so the layer starts as a plain RMS norm.
    """

    def __init__(self, channels: int, cond_channels: int, grid: SphereGrid, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.modulation = conv1x1(cond_channels, 2 * channels, zero=True)
        self.register_buffer("area_weights", torch.as_tensor(grid.area_weights, dtype=torch.float32),
                             persistent=False)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        w = self.area_weights.to(x.dtype)
        mean_square = (x.square().mean(dim=1) * w).sum(dim=(-2, -1))  # (B,)
        x = x * torch.rsqrt(mean_square + self.eps)[:, None, None, None]
        scale, shift = self.modulation(cond).chunk(2, dim=1)
        return x * (1 + scale) + shift


class PointwiseMLP(nn.Module):
    """1x1-conv MLP used as a residual branch."""

    def __init__(self, channels: int, ratio: float):
        super().__init__()
        hidden = max(1, round(channels * ratio))
        self.inner = conv1x1(channels, hidden)
        self.outer = conv1x1(hidden, channels, zero=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(F.gelu(self.inner(x)))


class SphereBlock(nn.Module):
    """One block of METHOD.md, from ``in_grid`` to ``out_grid``.

    concat(input, conditioning maps on the input grid, learned embedding maps)
    -> spectral conv (resamples to the output grid) -> GELU -> conditional norm
    -> + pointwise MLP -> conditional norm -> 1x1 output conv.
    The norms are modulated by the conditioning maps on the *output* grid, which is how
    full-resolution detail (forcing, statics) reaches the decoder's output.
    """

    def __init__(self, in_channels: int, out_channels: int, cond_in_channels: int,
                 cond_out_channels: int, in_grid: SphereGrid, out_grid: SphereGrid, *,
                 hidden: int, rank: int, embed_channels: int, mlp_ratio: float, film_embed_channels: int = 0):
        super().__init__()
        self.embedding = nn.Parameter(0.1 * torch.randn(embed_channels, *in_grid.shape))
        # learned maps on the output grid beside the conditioning of the norms: lets a block
        # scale its features by position (a spectral conv alone is zonally equivariant)
        self.film_embedding = (nn.Parameter(0.1 * torch.randn(film_embed_channels, *out_grid.shape))
                               if film_embed_channels else None)
        width = in_channels + cond_in_channels + embed_channels
        self.spectral = SpectralConv(width, hidden, in_grid, out_grid, rank)
        self.norm1 = ConditionalRMSNorm(hidden, cond_out_channels + film_embed_channels, out_grid)
        self.mlp = PointwiseMLP(hidden, mlp_ratio)
        self.norm2 = ConditionalRMSNorm(hidden, cond_out_channels + film_embed_channels, out_grid)
        self.output = conv1x1(hidden, out_channels)

    def film_conditioning(self, cond_out: torch.Tensor) -> torch.Tensor:
        """What the norms' modulations read: the conditioning and the learned position maps."""
        if self.film_embedding is None:
            return cond_out
        film = self.film_embedding.to(cond_out.dtype).expand(cond_out.shape[0], -1, -1, -1)
        return torch.cat([cond_out, film], dim=1)

    def forward(self, x: torch.Tensor, cond_in: torch.Tensor, cond_out: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        embedding = self.embedding.to(x.dtype).expand(batch, -1, -1, -1)
        h = self.spectral(torch.cat([x, cond_in.to(x.dtype), embedding], dim=1))
        film = self.film_conditioning(cond_out)
        h = self.norm1(F.gelu(h), film)
        h = self.norm2(h + self.mlp(h), film)
        return self.output(h)


class LinearForcingResponse(nn.Module):
    """A map from forcing anomaly maps to the state that is linear in the forcing.

    A spectral convolution (zonally equivariant, non-local: land feels the surrounding
    ocean) to ``channels`` response maps, then per state channel a combination of them with
    gains that vary with position (a 1x1 conv of the statics and learned maps). Being
    linear, its response to +4 K is twice its response to +2 K: the forced response
    extrapolates as a linear response does, where the normalised blocks saturate.
    """

    def __init__(self, in_channels: int, out_channels: int, static_channels: int, grid: SphereGrid, *,
                 channels: int, rank: int, embed_channels: int = 4):
        super().__init__()
        self.out_channels, self.channels = out_channels, channels
        self.spectral = SpectralConv(in_channels, channels, grid, grid, rank)
        self.embedding = nn.Parameter(0.1 * torch.randn(embed_channels, *grid.shape))
        self.gains = conv1x1(static_channels + embed_channels, out_channels * channels, zero=True)

    def forward(self, forcing: torch.Tensor, statics: torch.Tensor) -> torch.Tensor:
        """forcing (B, I, H, W), statics (S, H, W) -> (B, out_channels, H, W)."""
        maps = self.spectral(forcing)
        features = torch.cat([statics, self.embedding.to(statics.dtype)], dim=0)[None]
        gains = self.gains(features).view(self.out_channels, self.channels, *maps.shape[-2:])
        return torch.einsum("bkhw,ckhw->bchw", maps, gains.to(maps.dtype))
