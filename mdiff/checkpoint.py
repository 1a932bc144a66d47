"""The checkpoint: the contract between training and everything that runs a model.

A checkpoint file holds the weights (raw and EMA), the full model config, the normalisation
statistics, the variable table, the grid, a format version and the code version, so that
it alone can run a rollout. ``load`` returns everything built and checked: the model with
the EMA weights (the network built from the *stored* table, so a channel added to the
table since does not break an old checkpoint), its normaliser, its state channels and
its grid. ``migrate`` and ``migrate_state`` bring a payload of any earlier format to this one.

Format history: 1: the variable table stores ``cmip_name`` only; 2: each channel's CMIP
variable (units, conversion) and display units. Buffers and model-config keys added since
the first checkpoints are filled in too (see ``ADDED_BUFFERS``, ``MD_V09_MODEL``).
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import mdiff
from mdiff import config as C
from mdiff import variables as V
from mdiff.data.normalize import Normalizer
from mdiff.fileio import atomic_path
from mdiff.grid import LatLonGrid
from mdiff.nn.model import MonthlyDiffusion, build_model, parameter_count

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
# What a model config written before a key existed meant: MD v0.9's choices. Checkpoints
# whose stored config lacks a key load with these values (not with today's defaults).
MD_V09_MODEL = {"normalization": "global", "global_sst": "none", "linear_forcing": False,
                "latent_standardization": "learned", "sampler_variance": "posterior", "film_embed_channels": 0,
                "linear_forcing_gains": "static"}
# Buffers added after checkpoint format 1 was first written; older weights lack them and get
# the values a fresh model has (neutral for the MD v0.9 options such checkpoints use).
ADDED_BUFFERS = ("latent_center", "latent_eofs", "latent_eof_scale", "latent_residual_scale",
                 "latent_month_factor")
WEIGHTS = ("model_state", "ema_state", "optimizer_state", "rng")  # not metadata


class CheckpointError(ValueError):
    """A checkpoint (or last.pt) is missing, unreadable or not mdiff's: one line, no traceback."""

    user_facing = True


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: everything a rollout needs."""

    model: MonthlyDiffusion  # EMA weights, eval mode, on the requested device
    normalizer: Normalizer  # the statistics it was trained with, in its normalisation mode
    channels: tuple[V.Channel, ...]  # the state channels it was trained on, in its order
    grid: LatLonGrid
    meta: dict  # everything stored but the weights: format_version, code_version, epoch, ...


def reason(err: BaseException) -> str:
    """One line saying what an exception was."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def code_version() -> dict:
    out = {"mdiff": mdiff.__version__, "git": None, "torch": str(torch.__version__)}
    try:
        described = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"],
                                   cwd=Path(mdiff.__file__).parent, capture_output=True, text=True, timeout=10)
        if described.returncode == 0:
            out["git"] = described.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return out


# ------------------------------------------------------------------------------ writing


def payload(model_file: C.ModelFile, grid: C.GridConfig, periods: C.PeriodsConfig, normalizer: Normalizer,
            model: MonthlyDiffusion, ema: MonthlyDiffusion) -> dict:
    """The self-describing contents of a checkpoint: enough to run a rollout from it alone.
    The statistics' arrays are stored as tensors (``weights_only`` loading)."""
    stats = normalizer.to_dict()
    if "climatology" in stats:
        stats["climatology"] = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in stats["climatology"].items()}
    return {
        "format_version": FORMAT_VERSION,
        "code_version": code_version(),
        "model_config": C.to_dict(model_file.model),
        "train_config": C.to_dict(model_file.train),
        "grid": {"nlat": grid.nlat, "nlon": grid.nlon},
        "periods": C.to_dict(periods),
        "normalization": stats,
        "variables": V.as_table(),
        "state_channels": list(V.STATE_NAMES),
        "parameter_count": parameter_count(model),
        "model_state": model.state_dict(),
        "ema_state": ema.state_dict(),
    }


def save(path: str | Path, contents: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(contents, tmp)


# ------------------------------------------------------------------------------ reading


def read(path: str | Path, what: str = "mdiff checkpoint") -> dict:
    """The payload of a checkpoint file, or a one-line ``CheckpointError`` naming the file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: {what} does not exist")
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- torch/zipfile/pickle raise many kinds
        raise CheckpointError(f"{path}: cannot be read as an {what} ({reason(err)}); truncated or "
                              f"corrupt? expected a file written by `mdiff train`") from None
    if not isinstance(contents, dict):
        raise CheckpointError(f"{path}: holds a {type(contents).__name__}; expected an {what} (a dict)")
    return contents


def _known_fields(cls, data: dict, what: str) -> dict:
    """Drop fields an old (or newer) checkpoint has that this code does not know."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        log.warning("checkpoint %s has fields this version does not know, ignored: %s", what, unknown)
    return {k: v for k, v in data.items() if k in known}


def model_config_from(data: dict) -> C.ModelConfig:
    """The model config a checkpoint stores; keys it predates take MD v0.9's values."""
    return C.ModelConfig(**{**MD_V09_MODEL, **_known_fields(C.ModelConfig, data, "model_config")})


def migrate(contents: dict) -> dict:
    """A payload of any format up to ``FORMAT_VERSION`` in this format's terms: the variable
    table as ``Channel`` records (older tables completed from the current one) and the model
    config completed with MD v0.9's values (the weights: ``migrate_state``)."""
    version = contents.get("format_version")
    if version is None or version > FORMAT_VERSION:
        raise ValueError(f"format_version {version!r}; this mdiff reads 1..{FORMAT_VERSION}")
    return {**contents, "format_version": FORMAT_VERSION, "variables": V.from_table(contents["variables"]),
            "model_config": model_config_from(contents["model_config"])}


def migrate_state(state: dict, model: MonthlyDiffusion) -> dict:
    """Weights completed with the buffers their version predates (a fresh model's values)."""
    fresh = model.state_dict()
    return {**{k: fresh[k] for k in ADDED_BUFFERS if k not in state}, **state}


def build_network(config: C.ModelConfig, grid: LatLonGrid, channels: tuple[V.Channel, ...]) -> MonthlyDiffusion:
    """The network for a variable table: its channel counts per role."""
    count = {role: sum(c.role == role for c in channels) for role in ("state", "forcing", "static")}
    return build_model(config, grid, n_state=count["state"], n_forcing=count["forcing"], n_static=count["static"])


def load(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """The model (EMA weights, eval mode), normaliser, state channels and grid of a checkpoint.

    Checkpoints of older formats load through ``migrate`` and ``migrate_state``; unknown
    config fields of other versions are ignored with a warning. ``meta`` holds everything stored but the weights,
    with ``format_version`` as stored."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint does not exist")
    contents = read(path)
    try:
        migrated = migrate(contents)
        grid = LatLonGrid(contents["grid"]["nlat"], contents["grid"]["nlon"])
        channels = migrated["variables"]
        model = build_network(migrated["model_config"], grid, channels)
        model.load_state_dict(migrate_state(contents["ema_state"], model))
        normalizer = Normalizer.from_dict(contents["normalization"], model.config.normalization)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: not a usable mdiff checkpoint ({reason(err)}); expected the grid, "
                              "model_config, variables, normalization and ema_state written by `mdiff train`") from None
    model.to(device).eval()
    meta = {k: v for k, v in contents.items() if k not in WEIGHTS}
    return Checkpoint(model, normalizer, tuple(c for c in channels if c.role == "state"), grid, meta)
