"""A small random model on the tiny world, and its checkpoint: what the rollout tests step."""

from __future__ import annotations

from pathlib import Path

import torch

from mdiff import checkpoint
from mdiff import config as C
from mdiff import variables as V
from mdiff.data import prepared as P
from mdiff.data.normalize import Normalizer
from mdiff.nn.model import MonthlyDiffusion

SMALL = C.ModelConfig(latent_channels=4, squeeze=4, seasonal_channels=2, seasonal_basis=3, embed_channels=2,
                      hidden_channels=12, encoder_rank=8, decoder_rank=12, denoiser_rank=8,
                      time_embed_channels=3, diffusion_steps=4)


def small_model(tiny_world, perturb: bool = True) -> tuple[MonthlyDiffusion, Normalizer]:
    """The model (seed 0, eval mode, the world's statics set) and the world's statistics.
    ``perturb``: zero-initialised parameters drawn small (they would hide parts of the arithmetic)."""
    torch.manual_seed(0)
    model = MonthlyDiffusion(SMALL, tiny_world.grid).eval()
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                if not p.any():
                    p.normal_(0.0, 0.05)
    normalizer = Normalizer.load(tiny_world.stats, SMALL.normalization)
    statics = P.dataset_to_channels(P.open_checked(tiny_world.statics, tiny_world.grid), V.STATIC)
    model.set_statics(torch.from_numpy(normalizer.normalize(statics, V.STATIC_NAMES)))
    return model, normalizer


def save_checkpoint(path: Path, model: MonthlyDiffusion, normalizer: Normalizer) -> Path:
    """``model`` as a checkpoint (raw and EMA weights alike) with the statistics it uses."""
    grid = C.GridConfig(model.grid.nlat, model.grid.nlon)
    checkpoint.save(path, checkpoint.payload(C.ModelFile(model.config, C.TrainConfig()), grid, C.PeriodsConfig(),
                                             normalizer, model, model))
    return path
