"""The published Monthly Diffusion code's month step and training step, timed beside ours.

`mdiff bench rollout|train --published-code DIR` loads the ``md`` package of a checkout of
kjhall01/monthly-diffusion (MIT) from ``DIR`` (never part of this repository), builds its
``CVAE`` at MD-1.5 size with random weights (METHOD.md: latent 32 x 30x60, ranks 64/256/128,
T = 15) and times it in the same process as ours, so the two figures share the machine's
load. What is timed is what its ``scripts/run_aimip_runs.py`` does per month through
``CVAE.forced_run`` (diffusion sample, conditioning rebuilt for every member, decode), minus
its xarray/NetCDF output; and one ``compute_loss`` + backward + AdamW step of its ``train_model``.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
import time
import types
from pathlib import Path

import torch

# The 48 input channels of the published MD-1.5 checkpoint (models/MD-1p5.pth/config.pkl):
# its encoder adds a learned embedding per (variable, level) parsed from these names.
PUBLISHED_CHANNELS = (
    ["SPSFC", "SKTSFC", "VAR_2TSFC", "VAR_2DSFC", "VAR_10USFC", "VAR_10VSFC", "MTPRSFC", "MSLSFC"]
    + [f"{v}{p}.0" for v in "tquv" for p in (1000, 850, 700, 500, 250, 100, 50)]
    + ["z500.0", "SSTKSFC", "CISFC", "nanmaskSFC", "time0SFC", "time1SFC", "time2SFC",
       "SDORSFC", "ANORSFC", "ISORSFC", "SLORSFC", "LSMSFC"])


def load_published(path: str | Path, truncation: str = "published") -> types.ModuleType:
    """The ``md.cvae`` module of a checkout at ``path``; ``truncation``: the SHTs' default
    degrees, "published" (torch-harmonics 0.7, as it ran) or "installed" (this torch-harmonics).

    ``md/__init__`` imports its data preparation (a package ``src``, scipy), which the networks
    do not use: the package is registered without running it, and scipy's three names are
    stubbed when scipy is absent."""
    root = Path(path)
    if not (root / "md" / "cvae.py").is_file():
        raise FileNotFoundError(f"{root}: no md/cvae.py; expected a checkout of kjhall01/monthly-diffusion")
    try:
        importlib.import_module("scipy.special")
        importlib.import_module("scipy.stats")
    except ImportError:
        for name, attrs in (("scipy", {}), ("scipy.special", {"logit": None, "expit": None}),
                            ("scipy.stats", {"norm": None})):
            stub = types.ModuleType(name)
            stub.__dict__.update(attrs)
            sys.modules[name] = stub
    package = types.ModuleType("md")
    package.__path__ = [str(root / "md")]
    sys.modules["md"] = package
    cvae = importlib.import_module("md.cvae")
    if truncation == "installed":
        return cvae
    # It ran torch-harmonics 0.7.4 (its environment files), where an SHT of an equiangular grid
    # keeps lmax = nlat degrees by default; 0.9 halves that. Its SHTs pass no lmax, so give them
    # the old default: the model then has its published size (~3.4-3.9 M parameters; with
    # the installed default, 1.6 M and smaller transforms).
    spectral = importlib.import_module("md.spectral_conv")
    real_sht = spectral.RealSHT

    def sht_with_published_truncation(nlat, nlon, lmax=None, mmax=None, **kwargs):
        return real_sht(nlat, nlon, lmax=lmax or nlat, mmax=mmax, **kwargs)

    spectral.RealSHT = sht_with_published_truncation
    return cvae


def published_model(path: str | Path, device: torch.device, truncation: str = "published"):
    """The published ``CVAE`` at MD-1.5 size, random weights; other arguments its defaults."""
    cvae = load_published(path, truncation)
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its shapes
        model = cvae.CVAE(forcing_dim=3, data_dimensions=(37, 121, 240), device=device, n_statics=5,
                          statics=torch.randn(5, 121, 240), hidden_channels=[32], squeeze_factors=[4],
                          seasonality_dim=3, variable_names=PUBLISHED_CHANNELS,
                          encoder_rank=64, decoder_rank=256, diffusion_rank=128)
    return model


def parameter_count(model) -> int:
    """Parameters, complex ones counted once (as ``mdiff params`` counts)."""
    return sum(p.numel() for p in model.parameters())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def time_month_step(model, members: int, months: int, device: torch.device) -> float:
    """ms per member-month of ``CVAE.forced_run``'s month step (after one untimed month)."""
    model.eval()
    g = torch.Generator().manual_seed(0)
    forcings = torch.randn(months + 2, 3, 121, 240, generator=g).to(device)
    month_of_year = (torch.arange(months + 2, dtype=torch.float32) % 12 + 1).view(-1, 1).to(device)
    state = torch.randn(1, 37, 121, 240, generator=g).to(device).expand(members, -1, -1, -1).contiguous()

    def conditions(step):  # as forced_run: the forcing and seasonality copied for every member
        forcing = torch.ones(members, 3, 121, 240, device=device) * forcings[step].unsqueeze(0)
        season = model.seasonality_embedding(month_of_year[step].unsqueeze(0))
        return torch.cat([forcing, torch.vstack([season for _ in range(members)])], dim=1)

    latent, _, cs = model.encoder(state, conditions(0))
    model.decoder(latent, cs).cpu()
    stamps = []
    for step in range(1, months + 2):
        latent = model.predictor(latent, cs[-1])
        cs = model.encoder.embed_conditions(conditions(step))
        model.decoder(latent, cs).cpu().numpy()
        _sync(device)
        stamps.append(time.perf_counter())
    return 1000 * (stamps[-1] - stamps[0]) / (len(stamps) - 1) / members


def time_training_step(model, batch: int, steps: int, warmup: int, device: torch.device) -> float:
    """Samples/s of ``train_model``'s step: ``compute_loss`` + backward + AdamW, batch ``batch``."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)

    def tensors(*shape):
        return torch.randn(batch, *shape, generator=g).to(device)

    f0, x0, f1, x1 = tensors(3, 121, 240), tensors(37, 121, 240), tensors(3, 121, 240), tensors(37, 121, 240)
    m0 = (torch.arange(batch, dtype=torch.float32) % 12 + 1).view(-1, 1).to(device)
    m1 = m0 % 12 + 1

    def step():
        optimizer.zero_grad()
        terms = model.compute_loss(f0, x0, m0, f1, x1, m1, denoise=False, validation=False)
        loss = (terms["Reconstruction"] * model.recon_weight + terms["KL Divergence"] * model.kl_weight
                + terms["Denoising Loss"] * model.prediction_weight + terms["Latent Population Mean Loss"]
                + terms["Latent Population LgVar Loss"])
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return batch * steps / (time.perf_counter() - t0)
