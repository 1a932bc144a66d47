"""The SFNO-style block and its parts: conditional RMS norm, pointwise MLP."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from mdiff.nn.spectral import IsotropicSpectralConv, SpectralConv, SpectralOperators, SphereGrid


class Pointwise(nn.Conv2d):
    """A 1x1 convolution that also maps flattened fields (B, I, N) -> (B, O, N) (``flat``).

    Under autograd it runs as a convolution (measured faster in training, docs/benchmarks.md);
    without it as a matmul with the bias added in place (oneDNN's 1x1 convolutions are slow
    on CPU at inference). Same weights, same maths.
    """

    def flat(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self(x.unsqueeze(-1)).squeeze(-1)
        # detached: torch.matmul folds (O, I) @ (B, I, N) into one copy-heavy mm for operands
        # that require grad (decode 1.5x slower). Under autocast the matmul runs in its lower
        # precision; the bias joins in place.
        return torch.matmul(self.weight.detach()[:, :, 0, 0], x).add_(self.bias.detach()[:, None])


def conv1x1(in_channels: int, out_channels: int, zero: bool = False) -> Pointwise:
    conv = Pointwise(in_channels, out_channels, kernel_size=1)
    if zero:  # start as the identity modulation / a zero residual
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
    return conv


def _inplace() -> bool:
    """Whether tensors may be updated in place (nothing records them for a backward pass)."""
    return not torch.is_grad_enabled()


class ConditionalRMSNorm(nn.Module):
    """x / RMS(x) * (1 + scale) + shift, with scale and shift maps computed from conditioning.

    The RMS runs over channels and the sphere, area-weighted (quadrature weights), per sample.
    The modulation starts at zero, so the layer starts as a plain RMS norm. ``modulation_of``
    and ``normalise`` split it so that a rollout computes the modulation once per month.
    """

    def __init__(self, channels: int, cond_channels: int, grid: SphereGrid, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.modulation = conv1x1(cond_channels, 2 * channels, zero=True)
        # sqrt of the quadrature weights: the weighted mean square is one contiguous norm
        self.register_buffer("sqrt_area", torch.as_tensor(grid.area_weights, dtype=torch.float32).flatten().sqrt(),
                             persistent=False)

    def modulation_of(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1 + scale, shift), each (B, C, N), from conditioning maps (B, K, H, W)."""
        scale, shift = self.modulation.flat(cond.flatten(2)).chunk(2, dim=1)
        return 1 + scale, shift

    def normalise(self, x: torch.Tensor, modulation: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Flattened x (B, C, N) with a modulation from ``modulation_of`` (batch B or 1)."""
        # one contiguous reduction per sample (a norm over the channels alone is a slow strided one)
        mean_square = torch.linalg.vector_norm(x * self.sqrt_area.to(x.dtype), dim=(1, 2)).square() / x.shape[1]
        factor = torch.rsqrt(mean_square + self.eps)[:, None, None]
        scale, shift = modulation
        if _inplace():
            return x.mul_(factor).mul_(scale).add_(shift)
        return x * factor * scale + shift

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.normalise(x.flatten(2), self.modulation_of(cond)).view_as(x)


class PointwiseMLP(nn.Module):
    """1x1-conv MLP used as a residual branch."""

    def __init__(self, channels: int, ratio: float):
        super().__init__()
        hidden = max(1, round(channels * ratio))
        self.inner = conv1x1(channels, hidden)
        self.outer = conv1x1(hidden, channels, zero=True)

    def flat(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened (B, C, N) -> (B, C, N)."""
        return self.outer.flat(F.gelu(self.inner.flat(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flat(x.flatten(2)).view_as(x)


@dataclass
class BlockContext:
    """What a ``SphereBlock`` computes from its conditioning, apart from the member inputs:
    the spectral operators, the spectral image ``shared`` (M, X, B or 1, O) of the
    conditioning and embedding channels, and the norms' modulations (B or 1, C, N)."""

    ops: SpectralOperators
    shared: torch.Tensor
    modulations: list[tuple[torch.Tensor, torch.Tensor]]

    def with_modulations(self, modulations: list[tuple[torch.Tensor, torch.Tensor]],
                         add: torch.Tensor | None = None) -> BlockContext:
        """The same context with other modulations and ``add`` (a spectral image) added to ``shared``."""
        return BlockContext(self.ops, self.shared if add is None else self.shared + add, modulations)


class SphereBlock(nn.Module):
    """One block of METHOD.md, from ``in_grid`` to ``out_grid``.

    concat(input, conditioning maps on the input grid, learned embedding maps)
    -> spectral conv (resamples to the output grid) -> GELU -> conditional norm
    -> + pointwise MLP -> conditional norm -> 1x1 output conv.
    The norms are modulated by the conditioning maps on the *output* grid, which is how
    full-resolution detail (forcing, statics) reaches the decoder's output.

    ``forward`` is ``run(x, context(cond_in, cond_out))``. The spectral conv is linear in its
    input channels, so the conditioning's part (``context``) adds to the input's in the
    spectral domain: a rollout computes the context once per month for all members, and
    the image of any other fixed input group (``spectrum``) once, then adds it (``run``'s
    ``add``). Training runs the same functions.
    """

    def __init__(self, in_channels: int, out_channels: int, cond_in_channels: int,
                 cond_out_channels: int, in_grid: SphereGrid, out_grid: SphereGrid, *,
                 hidden: int, rank: int, embed_channels: int, mlp_ratio: float, film_embed_channels: int = 0):
        super().__init__()
        self.in_channels = in_channels
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

    def modulations(self, cond_out: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        film = self.film_conditioning(cond_out)
        return [self.norm1.modulation_of(film), self.norm2.modulation_of(film)]

    def spectrum(self, x: torch.Tensor, ops: SpectralOperators, first: int = 0) -> torch.Tensor:
        """The spectral image (M, X, B, O) of input channels first..first+I-1 given as ``x``."""
        return self.spectral.spectral(self.spectral.analyse(x, ops, first), ops)

    def context(self, cond_in: torch.Tensor, cond_out: torch.Tensor | None,
                ops: SpectralOperators | None = None) -> BlockContext:
        """The conditioning's part of the block for conditioning maps of batch B (or 1 to
        broadcast): the image of the conditioning and embedding channels, the modulations
        (none without ``cond_out``: ``with_modulations`` adds them)."""
        ops = self.spectral.operators() if ops is None else ops
        embedding = self.embedding.to(cond_in.dtype).expand(cond_in.shape[0], -1, -1, -1)
        shared = self.spectrum(torch.cat([cond_in, embedding], dim=1), ops, first=self.in_channels)
        return BlockContext(ops, shared, [] if cond_out is None else self.modulations(cond_out))

    def run(self, x: torch.Tensor, context: BlockContext, add: torch.Tensor | None = None) -> torch.Tensor:
        """The block for member inputs ``x`` (B, I', H, W): channels 0..I'-1 of the input (the
        rest, if any, given as a spectral image ``add``), with the conditioning's ``context``."""
        ops = context.ops
        shared = context.shared if add is None else context.shared + add
        y = self.spectral.spectral(self.spectral.analyse(x, ops), ops, add=shared)
        return self.tail(self.spectral.to_grid(y, ops), context.modulations)

    def tail(self, h: torch.Tensor, modulations: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """The real-valued rest of the block after the spectral conv: (B, O, K, W) -> output."""
        shape = h.shape[-2:]
        h = self.norm1.normalise(F.gelu(h.flatten(2)), modulations[0])
        branch = self.mlp.flat(h)
        h = h.add_(branch) if _inplace() else h + branch
        h = self.norm2.normalise(h, modulations[1])
        return self.output.flat(h).float().unflatten(2, shape)

    def forward(self, x: torch.Tensor, cond_in: torch.Tensor, cond_out: torch.Tensor) -> torch.Tensor:
        return self.run(x, self.context(cond_in.to(x.dtype), cond_out))


class LinearForcingResponse(nn.Module):
    """A map from forcing anomaly maps to the state that is linear in the forcing.

    A spectral convolution (zonally equivariant, non-local: land feels the surrounding
    ocean) to ``channels`` response maps, then per state channel a combination of them with
    gains that vary with position (a 1x1 conv of the statics and learned maps). Being
    linear, its response to +4 K is twice its response to +2 K: the forced response
    extrapolates as a linear response does, where the normalised blocks saturate.

    With ``gain_channels`` the gains also vary in time with the maps given to ``forward``
    (the month's seasonality maps and sea ice): gain = fixed(x) + sum_j w_j g_j(x, t), so
    the response of the air over ice can follow the ice season. The output stays linear in
    the maps the spectral convolution reads for fixed gain maps (sea ice is unchanged by the
    +dK protocol, so the response to +dK stays linear in dK).
    """

    def __init__(self, in_channels: int, out_channels: int, static_channels: int, grid: SphereGrid, *,
                 channels: int, rank: int, embed_channels: int = 4, gain_channels: int = 0,
                 kernel: str = "zonal"):
        super().__init__()
        self.spectral = (IsotropicSpectralConv(in_channels, channels, grid) if kernel == "isotropic"
                         else SpectralConv(in_channels, channels, grid, grid, rank))
        # both: the zonal maps and as many isotropic ones
        self.isotropic = IsotropicSpectralConv(in_channels, channels, grid) if kernel == "both" else None
        channels = 2 * channels if kernel == "both" else channels
        self.out_channels, self.channels = out_channels, channels
        self.embedding = nn.Parameter(0.1 * torch.randn(embed_channels, *grid.shape))
        self.gains = conv1x1(static_channels + embed_channels, out_channels * channels, zero=True)
        # products (response map k) x (gain map j) -> state channels: the time-varying gains
        self.varying_gains = conv1x1(channels * gain_channels, out_channels, zero=True) if gain_channels else None

    def forward(self, forcing: torch.Tensor, statics: torch.Tensor,
                gain_maps: torch.Tensor | None = None) -> torch.Tensor:
        """forcing (B, I, H, W), statics (S, H, W)[, gain_maps (B, J, H, W)] -> (B, out_channels, H, W)."""
        maps = self.spectral(forcing)
        if self.isotropic is not None:
            maps = torch.cat([maps, self.isotropic(forcing)], dim=1)
        features = torch.cat([statics, self.embedding.to(statics.dtype)], dim=0)[None]
        gains = self.gains(features).view(self.out_channels, self.channels, *maps.shape[-2:])
        gains = gains.to(maps.dtype)
        # sum over the response maps as k multiply-adds (an einsum over "bkhw,ckhw" becomes a
        # batched matmul of one tiny matrix per grid point: slow, and slower backward)
        out = maps[:, :1] * gains[None, :, 0]
        for k in range(1, self.channels):
            out = out + maps[:, k: k + 1] * gains[None, :, k]
        if self.varying_gains is not None:
            products = (maps[:, :, None] * gain_maps[:, None].to(maps.dtype)).flatten(1, 2)  # (B, K*J, H, W)
            out = out + self.varying_gains(products)
        return out
