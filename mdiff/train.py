"""`mdiff train`: joint training of the CVAE and the latent diffusion model.

One optimisation of the joint loss (``mdiff.nn.model.training_losses``) with AdamW and an
EMA of the weights; the EMA model is the one validated, selected and saved for inference
(METHOD.md defect 3). Runs on one CPU, one GPU, or several processes under ``torchrun``
(DDP: gloo on CPU, nccl on GPU).

Reproducibility: all randomness of a training sample (reparametrisation noise, diffusion
step and noise) comes from a generator seeded by (seed, epoch, sample index), and the
order of samples from (seed, epoch). So an update does not depend on how a batch is split
over processes, and a resumed run continues exactly. ``train.batch_size`` is per process;
the global batch is batch_size x processes (incomplete last batches are dropped).

Files (in the folder of ``--output``): ``last.pt`` (every epoch, and on SIGTERM; what
``--resume`` continues from), ``best.pt`` (the best EMA model so far), the running log
``{log}.running`` (every epoch), and at the end the declared outputs: the JSON-lines log,
the loss curve, the model card and, last of all, the selected checkpoint. A declared output
never appears before training is complete, and each appears whole (atomic renames); a
killed run's own temporaries are removed when the next run starts. An unreadable
checkpoint or ``last.pt`` is a one-line error naming the file (``--fresh-if-corrupt``
moves a corrupt ``last.pt`` aside and starts afresh instead).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import platform
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mdiff import checkpoint
from mdiff import config as C
from mdiff.data import checks
from mdiff.data.dataset import MonthPairDataset, load_statics
from mdiff.data.normalize import Normalizer
from mdiff.fileio import atomic_path, remove_stale_temporaries, write_json
from mdiff.grid import LatLonGrid
from mdiff.nn.model import (
    MonthlyDiffusion,
    build_model,
    draw_training_noise,
    parameter_count,
    weighted_mse,
)

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 143  # 128 + SIGTERM: Slurm and Snakemake see a failed (requeueable) job
LOSS_TERMS = ("reconstruction", "forcing_regression", "diffusion", "leading_pcs", "kl", "latent_stats")
SELECTION_RULES = {
    "best": ("lowest validation score = reconstruction weight x reconstruction MSE + "
             "diffusion weight x v-prediction MSE, of the EMA model"),
    "last": "the EMA model of the last epoch (validation scores are recorded, not compared)",
}


# ------------------------------------------------------------------------------ options


@dataclass
class TrainOptions:
    state_files: list[str]
    statics: str
    stats: str
    output: str  # the selected checkpoint
    model_file: C.ModelFile
    grid: C.GridConfig = field(default_factory=C.GridConfig)
    periods: C.PeriodsConfig = field(default_factory=C.PeriodsConfig)
    model_card: str | None = None
    log_file: str | None = None
    curve: str | None = None
    resume: bool = False
    fresh_if_corrupt: bool = False  # with resume: a corrupt last.pt is moved aside instead of an error
    source: str = "unknown"  # data source for the model card
    model_path: str = ""  # where the model config came from (model card)

    @property
    def workdir(self) -> Path:
        return Path(self.output).parent

    @property
    def last(self) -> Path:
        return self.workdir / "last.pt"

    @property
    def best(self) -> Path:
        return self.workdir / "best.pt"

    @property
    def running_log(self) -> Path | None:
        """The log while training runs (the declared ``log_file`` appears only at the end)."""
        return Path(f"{self.log_file}.running") if self.log_file else None

    def own_files(self) -> list[Path]:
        """Every file this run writes (whose stale temporaries it may remove)."""
        files = [self.output, self.model_card, self.log_file, self.curve, self.running_log]
        return [Path(p) for p in files if p] + [self.last, self.best, self.workdir / "resolved_model.json"]


@dataclass
class Progress:
    """Where training stands; saved in ``last.pt``."""

    epoch: int = 0  # epoch in progress (or the next one)
    batch: int = 0  # next global batch of that epoch
    step: int = 0  # optimizer steps done
    sums: dict = field(default_factory=dict)  # running sums of this epoch's training terms
    count: int = 0  # samples in those sums
    history: list = field(default_factory=list)  # one record per finished epoch
    best_score: float | None = None
    best_epoch: int | None = None
    elapsed_s: float = 0.0


# ------------------------------------------------------------------------------ distributed


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def choose_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(name)


def init_distributed(device_name: str) -> tuple[Distributed, torch.device]:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dist = Distributed(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = choose_device(device_name, dist.local_rank)
    if dist.active and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend)
        log.info("DDP: rank %d of %d, backend %s, device %s", dist.rank, dist.world, backend, device)
    return dist, device


def all_reduce_sum(x: torch.Tensor, dist: Distributed) -> torch.Tensor:
    if dist.active:
        torch.distributed.all_reduce(x)
    return x


# ------------------------------------------------------------------------------ randomness


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of one training sample in one epoch (-1: validation noise, -2: validation sampling)."""
    state = np.random.SeedSequence([seed, epoch + 2, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def epoch_batches(n: int, global_batch: int, seed: int, epoch: int) -> list[list[int]]:
    """The shuffled global batches of an epoch (the last incomplete one dropped)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    return [order[k: k + global_batch] for k in range(0, n - global_batch + 1, global_batch)]


def local_part(indices: list[int], dist: Distributed) -> list[int]:
    per = len(indices) // dist.world
    return indices[dist.rank * per: (dist.rank + 1) * per]


# ------------------------------------------------------------------------------ steps


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def weighted_total(terms: dict[str, torch.Tensor], weights: C.LossWeights) -> torch.Tensor:
    """Batch mean of the weighted sum of the per-sample loss terms."""
    return sum(getattr(weights, name) * terms[name].mean() for name in LOSS_TERMS)


def train_step(module: torch.nn.Module, model: MonthlyDiffusion, optimizer: torch.optim.Optimizer,
               batch: dict, noise, area_weights: torch.Tensor, train: C.TrainConfig) -> dict[str, float]:
    """One AdamW step on ``batch`` (``module`` is the model or its DDP wrapper); returns the
    sums over the batch of each loss term."""
    terms = module(batch, noise, area_weights)
    loss = weighted_total(terms, train.loss_weights)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
    optimizer.step()
    return {k: float(v.detach().sum()) for k, v in terms.items()}


def ema_decay(decay: float, step: int) -> float:
    """Warm-up of the EMA (short runs would otherwise keep mostly the initial weights)."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


@torch.no_grad()
def validate(ema: MonthlyDiffusion, dataset: MonthPairDataset, area_weights: torch.Tensor,
             train: C.TrainConfig, dist: Distributed, device: torch.device, sample: bool) -> dict[str, float]:
    """Validation metrics of the EMA model with fixed noise (comparable between epochs).

    ``sample``: also the full sampling error (encode t, sample t + 1, decode) and the
    persistence baseline, both area-weighted MSE of the normalised state of month t + 1.
    """
    ema.eval()
    names = list(LOSS_TERMS) + (["sampling", "persistence"] if sample else [])
    sums = torch.zeros(len(names) + 1, dtype=torch.float64)
    indices = list(range(dist.rank, len(dataset), dist.world))
    for k in range(0, len(indices), train.batch_size):
        chunk = indices[k: k + train.batch_size]
        batch = to_device(dataset.batch(chunk), device)
        noise = draw_training_noise(ema, [sample_generator(train.seed, -1, i) for i in chunk]).to(device)
        terms = ema(batch, noise, area_weights)
        if sample:
            cond = ema.conditioning(batch["forcing"], batch["month"])
            cond_next = ema.conditioning(batch["forcing_next"], batch["month_next"])
            mu, _ = ema.encode(batch["state"], cond)
            gens = [sample_generator(train.seed, -2, i) for i in chunk]
            pred = ema.decode(ema.sample_next(mu, cond_next, gens), cond_next)
            terms["sampling"] = weighted_mse(pred, batch["state_next"], area_weights)
            terms["persistence"] = weighted_mse(batch["state"], batch["state_next"], area_weights)
        sums += torch.tensor([float(terms[n].sum()) for n in names] + [len(chunk)], dtype=torch.float64)
    sums = all_reduce_sum(sums, dist)
    count = max(float(sums[-1]), 1.0)
    return {n: float(sums[i]) / count for i, n in enumerate(names)}


@torch.no_grad()
def refresh_latent_basis(ema: MonthlyDiffusion, model: MonthlyDiffusion, dataset: MonthPairDataset,
                         device: torch.device, batch_size: int) -> None:
    """latent_standardization pca: the whitening basis from posterior samples of the EMA
    encoder (mu + sigma eps, fixed noise: what the denoiser is conditioned on in training) of
    every training month, set on both models (the same on every process: DDP stays in step)."""
    if model.config.latent_standardization != "pca":
        return
    ema.eval()
    samples, months = [], []
    generator = torch.Generator().manual_seed(0)
    for k in range(0, len(dataset), batch_size):
        batch = to_device(dataset.batch(range(k, min(k + batch_size, len(dataset)))), device)
        mu, logvar = ema.encode(batch["state"], ema.conditioning(batch["forcing"], batch["month"]))
        eps = torch.randn(mu.shape, generator=generator).to(device)
        samples.append(mu + (0.5 * logvar).exp() * eps)
        months.append(batch["month"])
    ema.set_latent_basis(torch.cat(samples), torch.cat(months))
    for name in ("latent_center", "latent_eofs", "latent_eof_scale", "latent_residual_scale", "latent_month_factor"):
        getattr(model, name).copy_(getattr(ema, name))


def selection_score(metrics: dict[str, float], weights: C.LossWeights) -> float:
    return weights.reconstruction * metrics["reconstruction"] + weights.diffusion * metrics["diffusion"]


# ------------------------------------------------------------------------------ checkpoints


def run_signature(opts: TrainOptions, normalizer: Normalizer) -> str:
    """What must match for ``--resume`` to continue a run: configs, grid, periods, statistics."""
    # epochs and device may change between runs: extending a finished run is allowed
    train = {k: v for k, v in C.to_dict(opts.model_file.train).items() if k not in ("epochs", "device")}
    stats = normalizer.to_dict()
    climatology = stats.pop("climatology", {})
    blob = json.dumps({"model": C.to_dict(opts.model_file.model), "train": train, "grid": C.to_dict(opts.grid),
                       "periods": {"train": opts.periods.train, "validate": opts.periods.validate},
                       "stats": stats}, sort_keys=True)
    digest = hashlib.sha256(blob.encode())
    for name in sorted(climatology):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(climatology[name]).tobytes())
    return digest.hexdigest()


def checkpoint_payload(opts: TrainOptions, normalizer: Normalizer, model: MonthlyDiffusion,
                       ema: MonthlyDiffusion) -> dict:
    """The checkpoint's contents for this run (mdiff.checkpoint.payload)."""
    return checkpoint.payload(opts.model_file, opts.grid, opts.periods, normalizer, model, ema)


# ------------------------------------------------------------------------------ reports


def write_log(path: str, history: list[dict]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in history))


def plot_loss_curve(path: str, history: list[dict], best_epoch: int | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, term in zip(axes, ("reconstruction", "diffusion"), strict=True):
        ax.plot(epochs, [r["train"][term] for r in history], label="train (raw weights)")
        ax.plot(epochs, [r["validate"][term] for r in history], label="validation (EMA)")
        if term == "reconstruction":
            sampled = [(r["epoch"], r["validate"]["sampling"]) for r in history if "sampling" in r["validate"]]
            if sampled:
                ax.plot(*zip(*sampled, strict=True), "o--", label="validation sampling error (EMA)")
                ax.plot(*zip(*[(r["epoch"], r["validate"]["persistence"]) for r in history
                               if "persistence" in r["validate"]], strict=True), ":", label="persistence")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="k", lw=0.8, ls="--", label=f"selected (epoch {best_epoch})")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(f"{term} loss (area-weighted MSE, normalised units)" if term == "reconstruction"
                     else "v-prediction loss (latent grid)")
        ax.legend(fontsize=7)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def hardware(device: torch.device, dist: Distributed) -> str:
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return f"{dist.world} x {what}" if dist.active else what


def write_model_card(path: str, opts: TrainOptions, payload: dict, progress: Progress, hw: str,
                     curve: str | None) -> None:
    best = next((r for r in progress.history if r["epoch"] == progress.best_epoch), progress.history[-1])
    last = progress.history[-1]
    cfg = json.dumps({"model": payload["model_config"], "train": payload["train_config"]}, indent=2)

    def row(name, r):
        v, t = r["validate"], r["train"]
        return (f"| {name} (epoch {r['epoch']}) | {t['reconstruction']:.4g} | {t['diffusion']:.4g} | "
                f"{v['reconstruction']:.4g} | {v['diffusion']:.4g} | {v.get('sampling', float('nan')):.4g} |")

    curve_line = f"![loss curve]({Path(curve).name})" if curve else "(no loss curve written)"
    text = f"""# Model card: mdiff Monthly Diffusion ({Path(opts.model_path).name or 'model'})

Monthly latent-diffusion climate emulator (MD-1.5 method: spectral CVAE + latent DDPM,
trained jointly). Weights in `{Path(opts.output).name}` are the **EMA** weights of the
selected epoch (the raw weights are stored beside them).

## Data
- Source: {opts.source}; model grid {opts.grid.nlat} x {opts.grid.nlon} (equiangular, both poles).
- Training months: {opts.periods.train[0]} .. {opts.periods.train[1]}; validation (model selection):
  {opts.periods.validate[0]} .. {opts.periods.validate[1]}; normalisation statistics:
  {opts.periods.stats[0]} .. {opts.periods.stats[1]}. Nothing after 2014 is used (AI-MIP rule).
- Forcing seen in training: monthly-mean SST and sea ice of the prepared state files.

## Model
- Parameters: {payload['parameter_count']:,} (complex spectral weights counted once).
- Model config file: `{opts.model_path}`. Resolved config:

```json
{cfg}
```

## Training and selection
- Selection rule: {SELECTION_RULES[opts.model_file.train.selection]}.
- Chosen epoch: **{progress.best_epoch}** of {len(progress.history)}.
- Losses (normalised units; train terms are means over the epoch with the raw weights):

| | train recon | train v-pred | val recon | val v-pred | val sampling |
|---|---|---|---|---|---|
{row('selected', best)}
{row('final', last)}

{curve_line}

- Training time: {progress.elapsed_s / 60:.1f} min on {hw}; {progress.step} optimizer steps.
- Code version: mdiff {payload['code_version']['mdiff']} (git {payload['code_version']['git']}),
  torch {payload['code_version']['torch']}; checkpoint format {payload['format_version']}.
"""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


# ------------------------------------------------------------------------------ the loop


class _StopFlag:
    """Set by SIGTERM (Slurm pre-emption); checked between steps."""

    def __init__(self):
        self.requested = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        log.warning("SIGTERM received: saving a checkpoint after this step, then exiting")
        self.requested = True

    def agreed(self, dist: Distributed) -> bool:
        """All processes stop at the same step if any of them was signalled."""
        if not dist.active:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0])
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())


def _save_last(opts, normalizer, model, ema, optimizer, progress, signature, dist) -> None:
    if not dist.main:
        return
    payload = checkpoint_payload(opts, normalizer, model, ema)
    payload.update(optimizer_state=optimizer.state_dict(), progress=dataclasses.asdict(progress),
                   signature=signature, rng={"torch": torch.get_rng_state()})
    checkpoint.save(opts.last, payload)


def _try_resume(opts, signature, model, ema, optimizer) -> Progress | None:
    if not opts.last.exists():
        return None
    try:
        payload = checkpoint.read(opts.last, "mdiff resume checkpoint")
    except checkpoint.CheckpointError as err:
        if not opts.fresh_if_corrupt:
            raise checkpoint.CheckpointError(f"{err}; --resume refuses to start afresh over it: delete it, or pass "
                                  "--fresh-if-corrupt to move it aside and start afresh") from None
        aside = opts.last.with_name(opts.last.name + ".corrupt")
        os.replace(opts.last, aside)
        log.warning("%s is unreadable: moved to %s, starting afresh (--fresh-if-corrupt)", opts.last, aside)
        return None
    if payload.get("signature") != signature:
        log.warning("%s was made with other configs/statistics: starting afresh", opts.last)
        return None
    try:
        model.load_state_dict(payload["model_state"])
        ema.load_state_dict(payload["ema_state"])
        optimizer.load_state_dict(payload["optimizer_state"])
        torch.set_rng_state(payload["rng"]["torch"])
        progress = Progress(**payload["progress"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise checkpoint.CheckpointError(f"{opts.last}: not a usable mdiff resume checkpoint ({checkpoint.reason(err)}) "
                                         "although its "
                              "signature matches; delete it to start afresh") from None
    log.info("resuming from %s: epoch %d, batch %d", opts.last, progress.epoch + 1, progress.batch)
    return progress


def configure_objective(model: MonthlyDiffusion, tc: C.TrainConfig) -> None:
    """Set the training objective's switches of ``tc`` on ``model`` (training and `mdiff bench
    train` alike)."""
    model.grad_to_encoder, model.latent_momentum = tc.diffusion_grad_to_encoder, tc.latent_momentum
    model.reconstruct_both = tc.reconstruct == "both"


def prefit_linear_forcing(model: MonthlyDiffusion, dataset: MonthPairDataset, area_weights: torch.Tensor,
                          tc: C.TrainConfig, device: torch.device, show: bool = True) -> None:
    """``tc.linear_forcing_prefit_epochs`` epochs of the linear forcing path alone on its
    least-squares loss (the months of ``dataset`` in batches of 2 x batch_size, shuffled by a
    generator of the training seed): deterministic, so a run killed before its first
    checkpoint repeats it exactly."""
    linear = model.linear_forcing
    if linear is None or tc.linear_forcing_prefit_epochs <= 0:
        return
    params = list(linear.parameters())
    optimizer = torch.optim.AdamW(params, lr=tc.linear_forcing_lr or tc.lr, weight_decay=tc.weight_decay)
    order_gen = torch.Generator().manual_seed(tc.seed * 100_003 + 77)
    n = len(dataset.months)
    size = min(2 * tc.batch_size, n)  # a short training period: one batch of all its months
    started, losses = time.perf_counter(), []
    model.train()
    for _ in tqdm(range(tc.linear_forcing_prefit_epochs), desc="linear forcing prefit", disable=not show,
                  leave=False, mininterval=2.0):
        order, total = torch.randperm(n, generator=order_gen), 0.0
        for i in range(0, n - size + 1, size):
            idx = order[i: i + size]
            forcing, state = dataset.forcing[idx].to(device), dataset.state[idx].to(device)
            response = model.conditioning(forcing, dataset.month_of_year[idx].to(device)).response
            loss = weighted_mse(response, state, area_weights).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / (n - n % size))
    log.info("linear forcing prefit: %d epochs, regression loss %.4g -> %.4g, %.1f s", len(losses), losses[0],
             losses[-1], time.perf_counter() - started)


def parameter_groups(model: MonthlyDiffusion, tc: C.TrainConfig) -> list[dict]:
    """The optimiser's parameter groups: the linear forcing path at ``linear_forcing_lr``."""
    linear = model.linear_forcing
    if linear is None or tc.linear_forcing_lr is None:
        return [{"params": list(model.parameters())}]
    own = {id(p) for p in linear.parameters()}
    return [{"params": [p for p in model.parameters() if id(p) not in own]},
            {"params": list(linear.parameters()), "lr": tc.linear_forcing_lr}]


def train(opts: TrainOptions, stop: _StopFlag | None = None) -> int:
    """Train; returns 0 when done, EXIT_PREEMPTED when stopped by SIGTERM (checkpoint saved)."""
    tc = opts.model_file.train
    dist, device = init_distributed(tc.device)
    if dist.main:
        for tmp in remove_stale_temporaries(*opts.own_files()):
            log.info("removed %s (a temporary of an interrupted run)", tmp)
    grid = LatLonGrid(opts.grid.nlat, opts.grid.nlon)
    normalizer = Normalizer.load(opts.stats, opts.model_file.model.normalization)
    train_set = MonthPairDataset(opts.state_files, normalizer, grid, *opts.periods.train)
    val_set = MonthPairDataset(opts.state_files, normalizer, grid, *opts.periods.validate)
    global_batch = tc.batch_size * dist.world
    if len(train_set) < global_batch:
        raise ValueError(f"periods.train {opts.periods.train} gives {len(train_set)} month pairs; "
                         f"expected at least one global batch ({global_batch})")

    torch.manual_seed(tc.seed)
    model = build_model(opts.model_file.model, grid)
    configure_objective(model, tc)
    model.set_statics(load_statics(opts.statics, grid, normalizer))
    model.to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(parameter_groups(model, tc), lr=tc.lr, weight_decay=tc.weight_decay)
    signature = run_signature(opts, normalizer)
    progress = (_try_resume(opts, signature, model, ema, optimizer) if opts.resume else None) or Progress()
    if progress.step == 0 and tc.linear_forcing_prefit_epochs > 0:  # (every process alike)
        prefit_linear_forcing(model, train_set, torch.as_tensor(grid.area_weights, dtype=torch.float32,
                                                                 device=device), tc, device, dist.main)
        ema.load_state_dict(model.state_dict())
    module = model
    if dist.active:
        module = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    area = torch.as_tensor(grid.area_weights, dtype=torch.float32, device=device)
    stop = stop or _StopFlag()
    log.info("training %s: %d parameters, %d train / %d validation pairs, %d epochs, global batch %d, %s",
             opts.model_path, parameter_count(model), len(train_set), len(val_set), tc.epochs, global_batch, device)

    for epoch in range(progress.epoch, tc.epochs):
        started = time.perf_counter()
        if progress.batch == 0:  # (a resumed epoch has its basis in last.pt)
            refresh_latent_basis(ema, model, train_set, device, tc.batch_size)
        batches = epoch_batches(len(train_set), global_batch, tc.seed, epoch)
        bar = tqdm(range(progress.batch, len(batches)), desc=f"epoch {epoch + 1}/{tc.epochs}",
                   disable=not dist.main, leave=False, mininterval=2.0)
        model.train()
        for k in bar:
            local = local_part(batches[k], dist)
            batch = to_device(train_set.batch(local), device)
            noise = draw_training_noise(model, [sample_generator(tc.seed, epoch, i) for i in local]).to(device)
            sums = train_step(module, model, optimizer, batch, noise, area, tc)
            update_ema(ema, model, ema_decay(tc.ema_decay, progress.step))
            progress.step += 1
            progress.batch = k + 1
            progress.count += len(local)
            for name, value in sums.items():
                progress.sums[name] = progress.sums.get(name, 0.0) + value
            bar.set_postfix({n[:5]: f"{progress.sums[n] / progress.count:.3g}" for n in LOSS_TERMS}, refresh=False)
            if stop.agreed(dist):
                progress.elapsed_s += time.perf_counter() - started
                _save_last(opts, normalizer, model, ema, optimizer, progress, signature, dist)
                log.warning("stopped at epoch %d batch %d; %s saved", epoch + 1, k + 1, opts.last)
                return EXIT_PREEMPTED
        bar.close()
        totals = torch.tensor([progress.sums.get(n, 0.0) for n in LOSS_TERMS] + [progress.count], dtype=torch.float64)
        totals = all_reduce_sum(totals, dist)
        train_means = {n: float(totals[i] / max(float(totals[-1]), 1.0)) for i, n in enumerate(LOSS_TERMS)}
        sample = (epoch + 1) % max(tc.sample_every, 1) == 0 or epoch + 1 == tc.epochs
        val = validate(ema, val_set, area, tc, dist, device, sample)
        score = selection_score(val, tc.loss_weights)
        progress.elapsed_s += time.perf_counter() - started
        progress.history.append({"epoch": epoch + 1, "step": progress.step, "train": train_means, "validate": val,
                                 "score": score, "elapsed_s": round(progress.elapsed_s, 2)})
        if tc.selection == "last" or progress.best_score is None or score < progress.best_score:
            progress.best_score, progress.best_epoch = score, epoch + 1
            if dist.main:
                best = checkpoint_payload(opts, normalizer, model, ema)
                best.update(epoch=epoch + 1, selection={"rule": SELECTION_RULES[tc.selection], "score": score,
                                                        "validate": val})
                checkpoint.save(opts.best, best)
        log.info("epoch %d/%d: train recon %.4g v %.4g | val recon %.4g v %.4g%s | %.1f s", epoch + 1, tc.epochs,
                 train_means["reconstruction"], train_means["diffusion"], val["reconstruction"], val["diffusion"],
                 f" sampling {val['sampling']:.4g} (persistence {val['persistence']:.4g})" if sample else "",
                 time.perf_counter() - started)
        progress.epoch, progress.batch, progress.sums, progress.count = epoch + 1, 0, {}, 0
        _save_last(opts, normalizer, model, ema, optimizer, progress, signature, dist)
        if dist.main and opts.running_log:
            write_log(opts.running_log, progress.history)

    if dist.main:
        _finish(opts, progress, hardware(device, dist))
    if dist.active:
        torch.distributed.barrier()
    return 0


def _finish(opts: TrainOptions, progress: Progress, hw: str) -> None:
    """Declared outputs: log, loss curve, model card, then the selected checkpoint (last, so
    that a checkpoint under its final name means every output is there)."""
    payload = checkpoint.read(opts.best, "mdiff checkpoint (best.pt)")
    if opts.log_file:
        write_log(opts.log_file, progress.history)
    if opts.curve:
        plot_loss_curve(opts.curve, progress.history, progress.best_epoch)
    if opts.model_card:
        write_model_card(opts.model_card, opts, payload, progress, hw, opts.curve)
    write_json(opts.workdir / "resolved_model.json", {"model": payload["model_config"], "train": payload["train_config"]})
    with atomic_path(opts.output) as tmp:
        shutil.copyfile(opts.best, tmp)
    if opts.running_log:
        opts.running_log.unlink(missing_ok=True)
    log.info("selected epoch %d (score %.4g): %s", progress.best_epoch, progress.best_score, opts.output)


# ------------------------------------------------------------------------------ command


def run(opts: TrainOptions) -> int:
    """What `mdiff train` does: the statistics checked first (a missing or truncated file is one
    clear line), SIGTERM saves ``last.pt`` and stops (Slurm pre-emption), and a DDP process
    group is closed at the end."""
    checks.read_statistics(opts.stats, opts.model_file.model.normalization)
    stop = _StopFlag()
    stop.install()
    try:
        return train(opts, stop)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
