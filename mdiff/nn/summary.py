"""The parameter count of a model config (`mdiff params`; complex weights counted once)."""

from __future__ import annotations

from mdiff.config import ModelConfig
from mdiff.grid import LatLonGrid
from mdiff.nn.model import build_model, parameter_count


def parameter_table(config: ModelConfig, grid: LatLonGrid, name: str = "model") -> str:
    """Parameters per part of the model and in total, one line each."""
    model = build_model(config, grid)
    lines = [f"  {part:<16} {count:>12,}" for part, child in model.named_children()
             if (count := parameter_count(child))]
    total = parameter_count(model)
    real = sum(p.numel() for p in model.parameters())
    lines.append(f"{name} on {grid.nlat}x{grid.nlon}: {total:,} parameters ({total / 1e6:.2f} M; complex weights "
                 f"counted once; {real:,} real numbers)")
    return "\n".join(lines)
