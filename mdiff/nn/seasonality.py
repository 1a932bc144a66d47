"""Seasonality: month of year -> (sin, cos) -> MLP -> weights of a learned spatial basis."""

from __future__ import annotations

import math

import torch
from torch import nn


def month_angle_features(month: torch.Tensor) -> torch.Tensor:
    """(B,) ints 1..12 -> (B, 2) sin/cos of the month's phase in the year."""
    if not bool(((month >= 1) & (month <= 12)).all()):
        raise ValueError(f"months {month.tolist()}: expected months of the year in 1..12")
    phase = 2 * math.pi * (month.to(torch.float32) - 1) / 12
    return torch.stack([torch.sin(phase), torch.cos(phase)], dim=-1)


class SeasonalityEmbedding(nn.Module):
    """``channels`` maps, each a month-dependent combination of ``basis`` learned maps."""

    def __init__(self, channels: int, basis: int, shape: tuple[int, int], hidden: int = 32):
        super().__init__()
        self.channels, self.n_basis = channels, basis
        self.mlp = nn.Sequential(nn.Linear(2, hidden), nn.GELU(), nn.Linear(hidden, channels * basis))
        self.basis = nn.Parameter(torch.randn(basis, *shape) / math.sqrt(basis))

    def forward(self, month: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, channels, H, W)
        weights = self.mlp(month_angle_features(month).to(self.basis.device))
        weights = weights.view(-1, self.channels, self.n_basis)
        return torch.einsum("bck,khw->bchw", weights, self.basis)
