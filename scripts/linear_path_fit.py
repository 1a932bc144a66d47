"""The linear forcing path's own +4K tas response against the truth, in seconds (docs/science.md).

The emulator's forced response is its linear forcing path's response: the path's response
to +4 K alone, computed from a checkpoint without any rollout, gives the rollout's pattern
correlation to three digits. So the path can be studied on its own:

    source .venv/bin/activate
    # score a trained model's linear path (RUN: a run folder of `mdiff bench science`)
    python scripts/linear_path_fit.py WORLD --checkpoint RUN/model/checkpoint.pt
    # fit the path alone (its least-squares loss, as in training) and score it every 10 epochs
    python scripts/linear_path_fit.py WORLD --epochs 30 --lr 2e-2 --set model.linear_forcing_kernel=isotropic

WORLD is a world folder of `mdiff bench science` (results/science/world_37x72_seed0_<version>).
An exploration tool: the decisions rest on the full benchmark (`mdiff bench science`).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr
import yaml

from mdiff import checkpoint
from mdiff import config as C
from mdiff import variables as V
from mdiff.data import prepared as P
from mdiff.data.dataset import MonthPairDataset, load_statics
from mdiff.data.normalize import Normalizer
from mdiff.evaluate import metrics as M
from mdiff.grid import LatLonGrid
from mdiff.nn.model import build_model, weighted_mse
from mdiff.rollout.command import experiment_forcing

BANDS = {"tropics": (0, 30), "midlatitudes": (30, 60), "polar": (60, 91)}


def response_scores(model, normalizer: Normalizer, grid: LatLonGrid, world: Path) -> dict[str, float]:
    """The path's time-mean tas response to +4 K over 1979-2014 against truth/response.nc."""
    months = P.month_range("1979-01", "2014-12")
    moy = P.month_of_year(months)
    tas = list(V.STATE_NAMES).index("tas")
    mean = {}
    for experiment in ("aimip", "aimip-p4k"):
        sst, ice = experiment_forcing(world / "prepared" / "forcing.nc", grid, months, experiment)
        forcing = torch.as_tensor(normalizer.forcing(sst, ice, months=moy))
        with torch.no_grad():
            response = model.conditioning(forcing, torch.as_tensor(moy)).response[:, tas]
        mean[experiment] = response.mean(0).numpy() * normalizer.stats["tas"].anomaly_std
    emulated = mean["aimip-p4k"] - mean["aimip"]
    truth = xr.open_dataset(world / "truth" / "response.nc")["tas"].sel(experiment="aimip-p4k").values
    lat = np.abs(grid.lat)[:, None] * np.ones(grid.shape)
    scores = {"corr": M.pattern_correlation(grid, emulated, truth),
              "corr_lat60": M.pattern_correlation(grid, emulated, truth, lat <= 60),
              "amplitude": grid.mean(emulated) / grid.mean(truth)}
    for name, (lo, hi) in BANDS.items():
        band = ((lat >= lo) & (lat < hi)).astype(float)
        scores[name] = grid.mean(emulated, mask=band) / grid.mean(truth, mask=band)
    return scores


def show(scores: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.3f}" for k, v in scores.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("world", type=Path)
    ap.add_argument("--checkpoint", type=Path, help="score this model's linear path (no fitting)")
    ap.add_argument("--model", default="config/model/small.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="model.KEY=VALUE")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=2e-2)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--batch", type=int, default=8, help="months per step")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.checkpoint:
        ck = checkpoint.load(args.checkpoint)
        print(show(response_scores(ck.model, ck.normalizer, ck.grid, args.world)))
        return
    model_keys = yaml.safe_load(Path(args.model).read_text())["model"]
    for pair in args.set:
        key, value = pair.split("=", 1)
        model_keys[key.removeprefix("model.")] = yaml.safe_load(value)
    config = C.ModelConfig(**model_keys)
    grid = LatLonGrid(37, 72)
    normalizer = Normalizer.load(args.world / "stats" / "normalization.nc", config.normalization)
    files = sorted((args.world / "prepared" / "state").glob("*.nc"))
    train = MonthPairDataset(files, normalizer, grid, "1985-01", "2014-12")
    torch.manual_seed(args.seed)
    model = build_model(config, grid)
    model.set_statics(load_statics(args.world / "prepared" / "statics.nc", grid, normalizer))
    params = list(model.linear_forcing.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    ema = copy.deepcopy(model).requires_grad_(False)
    area = torch.as_tensor(grid.area_weights, dtype=torch.float32)
    n, step, started = len(train.months), 0, time.perf_counter()
    for epoch in range(args.epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
        for i in range(0, n - args.batch + 1, args.batch):
            idx = order[i: i + args.batch]
            response = model.conditioning(train.forcing[idx], train.month_of_year[idx]).response
            loss = weighted_mse(response, train.state[idx], area).mean()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            step += 1
            with torch.no_grad():  # the EMA of training (decay 0.99 after its warm-up)
                for e, p in zip(ema.linear_forcing.parameters(), params, strict=True):
                    e.lerp_(p, 1 - min(0.99, (1 + step) / (10 + step)))
        if (epoch + 1) % args.every == 0 or epoch + 1 == args.epochs:
            scores = response_scores(ema, normalizer, grid, args.world)
            print(f"epoch {epoch + 1}: {show(scores)} ({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
