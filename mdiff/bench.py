"""`mdiff bench <what>`: benchmarks whose latest figures live in docs/benchmarks.md.

Each benchmark is a function ``bench_<what>(args)`` that prints progress and, as its
last line, ``<metric>=<number>``. Timings on a shared machine are noisy: compare ratios
measured in one run.
"""

from __future__ import annotations

import time


def bench_world(args) -> None:
    """46.25 years (1978-10..2024-12) of the synthetic world, written to a temp folder."""
    import tempfile
    from pathlib import Path

    from mdiff.data.synthetic import write_world
    from mdiff.grid import LatLonGrid

    grid = LatLonGrid(*map(int, args.grid.split("x")))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_world(grid, "1978-10", "2024-12", 0, 1, 0.0, Path(tmp) / "prepared", None, progress=False)
        seconds = time.perf_counter() - t0
    print(f"synthetic world {grid.nlat}x{grid.nlon}, 555 months, prepared files written: {seconds:.1f} s")
    print(f"world_seconds={seconds:.2f}")


def bench_train(args) -> None:
    """Joint training steps (forward + backward + AdamW + EMA) on random data at a model's size;
    with ``--published-code``, alternately with the published code's step in the same process."""
    import torch

    from mdiff.train import choose_device

    device = choose_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    ours = _our_training(args, device)
    published = _published(args, device, "train")
    figures: list[tuple[float, float | None]] = []
    for _ in range(args.rounds):
        mine = ours()
        theirs = published() if published else None
        figures.append((mine, theirs))
        print(f"ours {mine:.3f} samples/s" + (f", published code {theirs:.3f} samples/s, ratio "
                                              f"{mine / theirs:.2f}" if theirs else ""))
    _summary(figures, "samples_per_s", higher_is_better=True)


def _our_training(args, device):
    """A function timing ``args.steps`` joint training steps of our model: samples/s."""
    import copy

    import torch

    from mdiff import variables as V
    from mdiff.config import load_model_file
    from mdiff.grid import LatLonGrid
    from mdiff.nn.model import build_model, draw_training_noise, parameter_count
    from mdiff.train import configure_objective, ema_decay, sample_generator, train_step, update_ema

    model_file = load_model_file(args.model)
    tc = model_file.train
    if args.batch_size:
        tc.batch_size = args.batch_size
    grid = LatLonGrid(*map(int, args.grid.split("x")))
    torch.manual_seed(0)
    model = build_model(model_file.model, grid).to(device)
    configure_objective(model, tc)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    area = torch.as_tensor(grid.area_weights, dtype=torch.float32, device=device)
    b, shape = tc.batch_size, grid.shape
    batch = {"state": torch.randn(b, V.N_STATE, *shape), "state_next": torch.randn(b, V.N_STATE, *shape),
             "forcing": torch.randn(b, V.N_FORCING, *shape), "forcing_next": torch.randn(b, V.N_FORCING, *shape),
             "month": torch.arange(b) % 12 + 1, "month_next": (torch.arange(b) + 1) % 12 + 1}
    batch = {k: v.to(device) for k, v in batch.items()}
    print(f"{args.model}: {parameter_count(model):,} parameters, grid {grid.nlat}x{grid.nlon}, batch {b}, {device}, "
          f"{torch.get_num_threads()} threads; {args.steps} timed steps after {args.warmup} warm-up")
    done = 0

    def step():
        nonlocal done
        noise = draw_training_noise(model, [sample_generator(0, done, i) for i in range(b)]).to(device)
        train_step(model, model, optimizer, batch, noise, area, tc)
        update_ema(ema, model, ema_decay(tc.ema_decay, done))
        done += 1

    def timed() -> float:
        for _ in range(args.warmup):
            step()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        _sync(device)
        return b * args.steps / (time.perf_counter() - t0)

    return timed


def _published(args, device, what: str):
    """A function timing the published code's training step or month step (None without
    ``--published-code``)."""
    if not args.published_code:
        return None
    from mdiff import bench_published as published

    model = published.published_model(args.published_code, device, args.published_truncation)
    print(f"published code ({args.published_code}, {args.published_truncation} SHT truncation): "
          f"{published.parameter_count(model):,} parameters (complex counted once), grid 121x240")
    if what == "train":
        batch = args.batch_size or 4
        return lambda: published.time_training_step(model, batch, args.steps, args.warmup, device)
    return lambda: published.time_month_step(model, args.members, args.months, device)


def _summary(figures: list[tuple[float, float | None]], metric: str, higher_is_better: bool) -> None:
    """The median of our figures (the last line: ``metric=value``) and of the ratios to the
    published code's, each pair measured back to back."""
    import statistics

    ours = statistics.median(m for m, _ in figures)
    if all(t is not None for _, t in figures):
        theirs = statistics.median(t for _, t in figures)
        ratio = statistics.median(m / t for m, t in figures)
        print(f"published code: median {theirs:.3f}; ours / published, median of {len(figures)} "
              f"pair(s): {ratio:.3f} ({'higher' if higher_is_better else 'lower'} is better)")
        print(f"ratio_to_published={ratio:.3f}")
    print(f"{metric}={ours:.3f}" if higher_is_better else f"{metric}={ours:.1f}")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_rollout(args) -> None:
    """Ensemble rollout speed at a model's size, random weights (mdiff.rollout.benchmark); with
    ``--published-code``, alternately with the published code's month step in the same process."""
    import torch

    from mdiff.rollout import benchmark, resolve_device

    device = resolve_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    published = _published(args, device, "rollout")
    figures: list[tuple[float, float | None]] = []
    for _ in range(args.rounds):
        mine = benchmark(args)
        theirs = published() if published else None
        figures.append((mine, theirs))
        print(f"ours {mine:.1f} ms per member-month" + (f", published code {theirs:.1f}, ratio "
                                                        f"{mine / theirs:.3f}" if theirs else ""))
    _summary(figures, "ms_per_member_month", higher_is_better=False)


def _era5_like_year(root, nlat: int, year: int) -> dict:
    """Raw files of one year (all groups) and the invariants at an ERA5-like native grid."""
    import numpy as np
    import xarray as xr

    from mdiff.data import era5 as E

    lat = np.linspace(90.0, -90.0, nlat).astype(np.float64)
    lon = np.arange(2 * (nlat - 1)) * (360.0 / (2 * (nlat - 1)))
    la, lo = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    wave = (np.cos(la) ** 2 + 0.1 * np.sin(3 * lo) * np.cos(la)).astype(np.float32)
    land = (np.sin(2 * lo) * np.cos(la) > 0.6) | (la < np.deg2rad(-70))
    files = {}
    for group, (_dataset, channels, levels) in E.GROUPS.items():
        months = [1] if group == E.INVARIANT else list(range(1, 13))
        times = np.array([f"{year}-{m:02d}" for m in months], dtype="datetime64[M]").astype("datetime64[ns]")
        coords = {"valid_time": times, "latitude": ("latitude", lat, {"units": "degrees_north"}),
                  "longitude": ("longitude", lon, {"units": "degrees_east"})}
        shape = (len(months), nlat, lon.size)
        if levels:
            coords["pressure_level"] = ("pressure_level", np.array(levels, float), {"units": "hPa"})
            shape = (len(months), len(levels), nlat, lon.size)
        data = {}
        for ch in channels:
            if ch.era5_short in data:
                continue
            values = np.broadcast_to(wave, shape).astype(np.float32) + np.float32(1.0)
            if ch.name == "lsm":
                values = np.broadcast_to(land, shape).astype(np.float32)
            if ch.name in ("sst", "siconc"):
                values = np.where(land, np.float32(np.nan), values * (0.5 if ch.name == "siconc" else 280.0))
            dims = ("valid_time", "pressure_level", "latitude", "longitude") if levels else \
                ("valid_time", "latitude", "longitude")
            data[ch.era5_short] = (dims, values, {"units": ch.units})
        path = root / f"{group}.nc"
        xr.Dataset(data, coords=coords).to_netcdf(path)
        files[group] = str(path)
        del data
    return files


def bench_regrid(args) -> None:
    """One year of all channels from an ERA5-like 0.25-degree grid to the model grid (CDO)."""
    import tempfile
    from pathlib import Path

    from mdiff.data import era5 as E
    from mdiff.data import regrid as R
    from mdiff.grid import LatLonGrid

    grid = LatLonGrid(*map(int, args.grid.split("x")))
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        files = _era5_like_year(root, args.native_nlat, 1979)
        size = sum(Path(f).stat().st_size for f in files.values()) / 1e9
        print(f"synthetic ERA5-like year at {args.native_nlat}x{2 * (args.native_nlat - 1)}: {size:.2f} GB "
              f"written in {time.perf_counter() - t0:.1f} s")
        weights = {norm: str(root / f"w_{norm}.nc") for norm in ("fracarea", "destarea")}
        t0 = time.perf_counter()
        for norm, path in weights.items():
            R.make_weights(files[E.INVARIANT], grid, path, norm)
        t_weights = time.perf_counter() - t0
        t0 = time.perf_counter()
        R.prepare_statics([files[E.INVARIANT]], grid, weights, root / "statics.nc")
        t_statics = time.perf_counter() - t0
        t0 = time.perf_counter()
        R.prepare_state_year([files[g] for g in E.YEARLY_GROUPS], "1979-01", "1979-12", grid, weights,
                             root / "statics.nc", root / "1979.nc")
        seconds = time.perf_counter() - t0
    print(f"weights (gencon, 2 normalisations): {t_weights:.1f} s; statics: {t_statics:.1f} s")
    print(f"one year, {len(E.GROUPS) - 1} raw files, 39 channels x 12 months -> {grid.nlat}x{grid.nlon}: "
          f"{seconds:.1f} s (checks, CDO remap, harmonisation, masks, prepared write)")
    print(f"regrid_year_seconds={seconds:.2f}")


def bench_science(args) -> None:
    """The perfect-model benchmark (mdiff.science)."""
    from mdiff.science import bench_science as run

    run(args)


def _science_arguments() -> list:
    from mdiff.science import ARGUMENTS

    return ARGUMENTS


# Timing the published code beside ours (mdiff.bench_published), in one process.
COMPARISON = [
    (("--published-code",), {"metavar": "DIR", "help": "a checkout of kjhall01/monthly-diffusion: time its "
                                                        "step at MD-1.5 size too, alternately with ours"}),
    (("--published-truncation",), {"choices": ["published", "installed"], "default": "published",
                                    "help": "its SHTs' default degrees: torch-harmonics 0.7's (lmax = nlat, as "
                                            "it ran) or the installed version's ((nlat + 1) // 2)"}),
    (("--rounds",), {"type": int, "default": 1, "help": "measurements of each (medians are printed)"}),
]

# name -> (function, help, extra arguments)
BENCHMARKS: dict[str, tuple] = {
    "science": (bench_science, "perfect-model scores of a trained emulator on the synthetic world",
                _science_arguments()),
    "world": (bench_world, "time 46.25 years of the synthetic world at 1.5 deg",
              [(("--grid",), {"default": "121x240", "help": "NLATxNLON"})]),
    "train": (bench_train, "joint training throughput (samples/s) on random data",
              [(("--model",), {"default": "config/model/md15.yaml", "help": "model config YAML"}),
               (("--grid",), {"default": "121x240", "help": "NLATxNLON"}),
               (("--batch-size",), {"type": int, "help": "override train.batch_size"}),
               (("--steps",), {"type": int, "default": 5, "help": "timed steps"}),
               (("--warmup",), {"type": int, "default": 1, "help": "untimed steps first"}),
               (("--device",), {"default": "auto", "help": "auto|cpu|cuda"}),
               (("--threads",), {"type": int, "default": 0, "help": "torch threads (0: default)"})]
              + COMPARISON),
    "regrid": (bench_regrid, "one year of all channels from 0.25 deg (721x1440) to the model grid with CDO",
               [(("--grid",), {"default": "121x240", "help": "model grid NLATxNLON"}),
                (("--native-nlat",), {"type": int, "default": 721, "help": "native rows (721: 0.25 deg)"}),
                (("--tmpdir",), {"default": None, "help": "where the ~2 GB of raw files go"})]),
    "rollout": (bench_rollout, "ensemble rollout speed (ms per member-month) with random weights",
                [(("--model", "--config"), {"dest": "model", "default": "config/model/md15.yaml",
                                            "help": "model config YAML"}),
                 (("--members",), {"type": int, "default": 5, "help": "members stepped together"}),
                 (("--months",), {"type": int, "default": 6, "help": "months stepped (after 1 warm-up)"}),
                 (("--grid",), {"default": "121x240", "help": "NLATxNLON"}),
                 (("--device",), {"default": "auto", "help": "auto|cpu|cuda"}),
                 (("--bf16",), {"action": "store_true",
                                "help": "bf16 autocast (the spectral transforms stay fp32)"}),
                 (("--compile",), {"action": "store_true", "help": "torch.compile (GPU)"}),
                 (("--threads",), {"type": int, "default": 0, "help": "torch threads (0: default)"})]
                + COMPARISON),
}
