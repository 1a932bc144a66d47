"""DDPM pieces: cosine schedule, v-prediction, diffusion-time embedding, ancestral sampler.

Steps are numbered t = 1..T (t = T is pure noise). With abar_t from the cosine schedule,
x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps and the network predicts
v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn


def cosine_alpha_bar(steps: int, s: float = 0.008) -> torch.Tensor:
    """abar_t for t = 0..T (abar_0 = 1), Nichol & Dhariwal's cosine schedule, float64."""
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    # cap beta_t = 1 - abar_t / abar_{t-1} at 0.999 as usual, so the last step stays finite
    betas = (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    return torch.cat([abar[:1], torch.cumprod(1 - betas, dim=0)])


class CosineSchedule(nn.Module):
    """The schedule's constants as (non-saved) buffers, indexed by integer step t."""

    def __init__(self, steps: int, s: float = 0.008):
        super().__init__()
        if steps < 1:
            raise ValueError(f"diffusion steps must be >= 1, got {steps}")
        self.steps = steps
        self.register_buffer("alpha_bar", cosine_alpha_bar(steps, s).float(), persistent=False)

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sqrt(abar_t), sqrt(1 - abar_t) shaped (B, 1, 1, 1)."""
        abar = self.alpha_bar[t].view(-1, 1, 1, 1)
        return abar.sqrt(), (1 - abar).sqrt()


def add_noise(schedule: CosineSchedule, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    a, b = schedule.coefficients(t)
    return a * x0 + b * noise


def v_target(schedule: CosineSchedule, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    a, b = schedule.coefficients(t)
    return a * noise - b * x0


def x0_from_v(schedule: CosineSchedule, xt: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    a, b = schedule.coefficients(t)
    return a * xt - b * v


class TimeEmbedding(nn.Module):
    """Diffusion step t -> sinusoidal features of t/T -> MLP -> ``channels`` numbers."""

    def __init__(self, channels: int, steps: int, features: int = 8, hidden: int = 32):
        super().__init__()
        self.steps = steps
        self.register_buffer("frequencies", torch.arange(1, features // 2 + 1, dtype=torch.float32) * math.pi,
                             persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * (features // 2), hidden), nn.GELU(), nn.Linear(hidden, channels))

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # (B,) ints -> (B, channels)
        phase = (t.to(torch.float32) / self.steps)[:, None] * self.frequencies
        return self.mlp(torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1))


def member_noise(shape: tuple[int, ...], generators: torch.Generator | Sequence[torch.Generator],
                 device: torch.device) -> torch.Tensor:
    """N(0, 1) noise of ``shape`` (B, ...): row k from generator k, so a member's noise does not
    depend on the batch it runs in; a single generator fills the whole batch."""
    if isinstance(generators, torch.Generator):
        return torch.randn(shape, generator=generators, device=generators.device).to(device)
    if len(generators) != shape[0]:
        raise ValueError(f"got {len(generators)} generators for a batch of {shape[0]}; expected one per member")
    noise = torch.empty(shape, device=generators[0].device)
    for row, g in zip(noise, generators, strict=True):  # each row drawn in place: no stacking copy
        torch.randn(shape[1:], generator=g, device=g.device, out=row)
    return noise.to(device)


def ancestral_sample(schedule: CosineSchedule, predict_v: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                     shape: tuple[int, ...], generators, device: torch.device,
                     variance: str = "posterior") -> torch.Tensor:
    """DDPM ancestral sampling, T steps from pure noise to x_0.

    ``variance``: "posterior" (beta~_t, MD v0.9) or "beta" (beta_t). With few steps the
    posterior variance loses variance even for a perfect denoiser (15 cosine steps keep
    0.78 of a unit Gaussian's variance); beta_t keeps it (Ho et al. 2020 discuss both).
    """
    def noise() -> torch.Tensor:
        return member_noise(shape, generators, device)

    if variance not in ("posterior", "beta"):
        raise ValueError(f"sampler variance {variance!r}; expected 'posterior' or 'beta'")
    abar = schedule.alpha_bar
    x = noise()
    for step in range(schedule.steps, 0, -1):
        t = torch.full((shape[0],), step, dtype=torch.long, device=device)
        x0 = x0_from_v(schedule, x, predict_v(x, t), t)
        if step == 1:
            return x0
        a_t, a_prev = abar[step], abar[step - 1]
        beta = 1 - a_t / a_prev
        mean = (a_prev.sqrt() * beta / (1 - a_t)) * x0 + ((1 - beta).sqrt() * (1 - a_prev) / (1 - a_t)) * x
        var = beta * (1 - a_prev) / (1 - a_t) if variance == "posterior" else beta
        x = mean + var.sqrt() * noise()
    return x
