"""`mdiff rollout`: the inputs of a run, the loop that ties stepper, writer and resume
together, the command, and its benchmark."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mdiff import checkpoint
from mdiff import variables as V
from mdiff.data import checks
from mdiff.data import prepared as P
from mdiff.data.normalize import Normalizer
from mdiff.fileio import sha256_file
from mdiff.grid import LatLonGrid
from mdiff.protocol import SST_OFFSET_K

from .resume import (
    RolloutIntegrityError,
    RolloutJob,
    load_resume,
    partial_path,
    remove_stale_temporaries,
    restore_verified,
    resume_path,
    verify_output,
)
from .stepper import EnsembleStepper, member_generators
from .writer import MonthWriter, RolloutGuardError, create_output

log = logging.getLogger("mdiff.rollout")


class RolloutInputError(ValueError):
    user_facing = True


def parse_members(text: str) -> list[int]:
    """'1-5' or '003-004' -> [1, ..., 5] (1-based, inclusive)."""
    try:
        first, last = (int(p) for p in text.split("-"))
    except ValueError:
        raise RolloutInputError(f"--members {text!r}: expected FIRST-LAST, e.g. 1-5") from None
    if not 1 <= first <= last:
        raise RolloutInputError(f"--members {text!r}: expected 1 <= FIRST <= LAST")
    return list(range(first, last + 1))


def experiment_forcing(forcing_path: str | Path, grid: LatLonGrid, months: np.ndarray,
                       experiment: str, lsm: np.ndarray | None = None,
                       lsm_source: str = "the statics") -> tuple[np.ndarray, np.ndarray]:
    """Physical SST (K, NaN over land) and sea ice (T, H, W) of ``months`` for ``experiment``:
    the prepared monthly-mean forcing with the experiment's SST offset added over ocean only.
    Checked plausible, and (given the land fraction ``lsm``) defined over all open ocean.

    float64, so the offset is exact (+2.0 or +4.0 K to the last bit)."""
    if experiment not in SST_OFFSET_K:
        raise RolloutInputError(f"unknown experiment {experiment!r}; expected one of {list(SST_OFFSET_K)}")
    ds = P.open_checked(forcing_path, grid)
    times = P.times_of(ds)
    index = {t: i for i, t in enumerate(times)}
    missing = [str(m) for m in months if m not in index]
    if missing:
        raise P.PreparedDataError(
            f"{forcing_path}: forcing lacks {len(missing)} month(s) of the run {months[0]}..{months[-1]} "
            f"(first missing {missing[0]}); it covers {times[0] if times.size else 'nothing'}.."
            f"{times[-1] if times.size else ''}")
    ds = ds.isel(time=[index[m] for m in months])
    x = checks.check_forcing_dataset(ds, str(forcing_path), grid, lsm, lsm_source).astype(np.float64)
    sst, ice = x[:, 0], x[:, 1]
    ocean = np.isfinite(sst)
    if not ocean.any():
        raise P.PreparedDataError(f"{forcing_path}: variable 'sst' is NaN everywhere; expected SST over ocean")
    sst = np.where(ocean, sst + SST_OFFSET_K[experiment], np.nan)
    return sst, ice


def initial_state(state_path: str | Path, grid: LatLonGrid, month: np.datetime64) -> np.ndarray:
    """Physical state (37, H, W) of ``month`` from a prepared state file."""
    ds = P.open_checked(state_path, grid)
    hits = np.flatnonzero(P.times_of(ds) == month)
    if hits.size != 1:
        times = P.times_of(ds)
        held = f"{times[0]}..{times[-1]}" if times.size else "no months"
        raise P.PreparedDataError(f"{state_path}: variable 'time' has no month {month} (the initial state of "
                                  f"the run, periods.run_start); the file holds {held}")
    x = P.dataset_to_channels(ds.isel(time=int(hits[0])), V.STATE, str(state_path))
    checks.check_plausible(x, V.STATE, f"{state_path} (month {month})", lat=grid.lat, lon=grid.lon)
    return x


def run_rollout(job: RolloutJob, model, normalizer: Normalizer, forcing: np.ndarray,
                state0: np.ndarray, output: str | Path, device: str | torch.device = "cpu",
                bf16: bool = False, progress: bool = True,
                on_month: Callable[[int], None] | None = None,
                initial_forcing: np.ndarray | None = None) -> Path:
    """Run one rollout file. ``forcing``: normalised (T, 3, H, W) of the experiment;
    ``state0``: normalised (37, H, W) of ``job.months[0]``, encoded (and month 0 decoded) with
    ``initial_forcing`` (3, H, W), the forcing it was observed under (default ``forcing[0]``).
    Resumes from ``{output}.resume.pt`` when it matches and the months it vouches for verify."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    ppath, rpath = partial_path(output), resume_path(output)
    remove_stale_temporaries(output)
    stepper = EnsembleStepper(model, forcing, job.months, torch.device(device), bf16)
    generators = member_generators(job.base_seed, job.members)
    resume = load_resume(job, output)
    if resume is not None and not restore_verified(job, output, resume):
        resume = None
    if resume is None:
        rpath.unlink(missing_ok=True)  # a stale state must never vouch for the new file
        latent, decoded0 = stepper.initial(state0, len(job.members), initial_forcing)
        create_output(ppath, job.grid, job.months, job.members, job.seeds, job.attrs())
        start, checksums = 1, []
    else:
        latent = resume["latent"].to(stepper.device)
        for g, s in zip(generators, resume["generator_states"], strict=True):
            g.set_state(s)
        start, checksums = int(resume["next_index"]), list(resume["month_sha256"])
        log.info("resuming %s at month %s (%d of %d written and verified)", output.name, job.months[start],
                 start, job.months.size)
    total = job.months.size
    writer = MonthWriter(ppath, normalizer, job.months, job.members, sync_every=job.resume_every,
                         checksums=checksums)
    ok = False
    try:
        if resume is None:
            writer.put(0, decoded0.cpu().numpy())
        bar = _progress(total, start, f"{job.experiment} members {job.members[0]}-{job.members[-1]}", progress)
        t0 = time.perf_counter()
        for index, month_latent, state in stepper.steps(latent, generators, start):
            writer.put(index, state.cpu().numpy())
            if (index + 1) % job.resume_every == 0 and index + 1 < total:
                writer.save_resume(rpath, {"fingerprint": job.fingerprint(), "next_index": index + 1,
                                           "latent": month_latent.cpu().clone(),
                                           "generator_states": [g.get_state() for g in generators]})
            bar.update(1)
            if on_month is not None:
                on_month(index)
        bar.close()
        writer.close()
        elapsed = time.perf_counter() - t0
        steps = max(total - start, 1)
        log.info("%d months x %d members in %.1f s: %.1f ms per member-month", steps, len(job.members),
                 elapsed, 1000 * elapsed / steps / len(job.members))
        ok = True
    except RolloutGuardError:
        # Resuming would reproduce the failure: remove the partial output and the resume state.
        with contextlib.suppress(Exception):
            writer.close()
        for p in (ppath, rpath):
            p.unlink(missing_ok=True)
        raise
    finally:
        if not ok:
            with contextlib.suppress(BaseException):
                writer.close()
    import netCDF4

    with netCDF4.Dataset(ppath, "a") as nc:
        nc.setncattr("months_written", total)
    try:  # publish only what reads back exactly as written
        verify_output(ppath, writer.checksums, job.months)
    except RolloutIntegrityError:
        for p in (ppath, rpath):
            p.unlink(missing_ok=True)
        raise
    ppath.replace(output)
    rpath.unlink(missing_ok=True)
    return output


def _progress(total: int, start: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc=desc, unit="month", disable=not enabled,
                mininterval=2.0, smoothing=0.1)


def compile_if_asked(model, device: torch.device, compile: bool) -> None:
    """rollout.compile: torch.compile the real-valued tails of the denoiser and decoder blocks
    (on a GPU; the spectral parts are complex matmuls and FFTs that stay eager)."""
    if compile and device.type == "cuda":
        model.compile_block_tails()
    elif compile:
        log.info("rollout.compile applies on a GPU only; running eagerly on %s", device)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RolloutInputError("rollout.device = cuda, but no CUDA device is available")
    return torch.device(name)


def rollout_file(cfg, checkpoint_path: str | Path, forcing_path: str | Path, initial_state_path: str | Path,
                 experiment: str, members: list[int], output: str | Path,
                 progress: bool = True, statics: str | Path | None = None) -> Path:
    """One rollout file of ``experiment`` and ``members`` (what `mdiff rollout` does) with the
    model and statistics of the checkpoint; ``statics``: its land fraction checks that the
    forcing's SST is defined over all open ocean."""
    grid = LatLonGrid(cfg.grid.nlat, cfg.grid.nlon)
    months = P.month_range(cfg.periods.run_start, cfg.periods.run_end)
    device = resolve_device(cfg.rollout.device)
    trained = checkpoint.load(checkpoint_path, device)
    model, normalizer = trained.model, trained.normalizer
    if tuple(c.name for c in trained.channels) != V.STATE_NAMES:
        raise RolloutInputError(f"{checkpoint_path}: trained on the state channels {[c.name for c in trained.channels]}; "
                                f"this mdiff's variable table has {list(V.STATE_NAMES)}: a rollout writes the "
                                "table's channels (retrain, or roll out with the mdiff that trained it)")
    if (model.grid.nlat, model.grid.nlon) != (grid.nlat, grid.nlon):
        raise RolloutInputError(f"{checkpoint_path}: model grid {model.grid.nlat}x{model.grid.nlon}; "
                                f"the config's grid is {grid.nlat}x{grid.nlon}")
    moy = P.month_of_year(months)
    lsm = checks.land_fraction(statics, grid) if statics else None
    sst, ice = experiment_forcing(forcing_path, grid, months, experiment, lsm, str(statics))
    forcing = normalizer.forcing(sst, ice, months=moy)
    # The initial state is encoded with the forcing it was observed under (no SST offset), so
    # aimip, aimip-p2k and aimip-p4k start from the same latent; the offset acts from month 1.
    initial_forcing = normalizer.forcing(*experiment_forcing(forcing_path, grid, months[:1], "aimip"),
                                         months=moy[:1])[0]
    state0 = normalizer.normalize(initial_state(initial_state_path, grid, months[0]), V.STATE_NAMES, moy[0])
    job = RolloutJob(experiment, members, cfg.rollout.seed, months, grid, sha256_file(checkpoint_path),
                     cfg.rollout.resume_every)
    compile_if_asked(model, device, cfg.rollout.compile)
    return run_rollout(job, model, normalizer, forcing, state0, output, device, cfg.rollout.bf16,
                       progress=progress, initial_forcing=initial_forcing)


def benchmark(args) -> float:
    """`mdiff bench rollout`: months of an ensemble of a randomly initialised model at a
    config's size, written through the real writer to a temporary file. Statistics put
    every decoded value at its physical range's midpoint, so the guards run but never trip."""
    import tempfile

    from mdiff.config import load_model_file
    from mdiff.data.normalize import ChannelStats, forward_transform
    from mdiff.nn.model import build_model

    grid = LatLonGrid(*map(int, args.grid.split("x")))
    device = resolve_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(load_model_file(args.model).model, grid).to(device).eval()
    stats = {c.name: ChannelStats(float(forward_transform(np.float64(np.mean(c.plausible_range)),
                                                          c.transform)), 1e-6, c.transform) for c in V.STATE}
    normalizer = Normalizer(stats)
    months = P.month_range("1978-10", str(np.datetime64("1978-10") + args.months + 1))
    rng = np.random.default_rng(0)
    forcing = rng.standard_normal((months.size, V.N_FORCING, *grid.shape), dtype=np.float32)
    state0 = rng.standard_normal((V.N_STATE, *grid.shape), dtype=np.float32)
    members = list(range(1, args.members + 1))
    job = RolloutJob("aimip", members, 0, months, grid, "0" * 64, resume_every=10**6)
    compile_if_asked(model, device, args.compile)
    stamps: list[float] = []

    def on_month(index: int) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        run_rollout(job, model, normalizer, forcing, state0, Path(tmp) / "bench.nc", device, args.bf16,
                    progress=False, on_month=on_month)
    # the first stepped month is a warm-up; time the rest
    per_month = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    ms = 1000 * per_month / len(members)
    print(f"rollout: {args.model}, grid "
          f"{grid.nlat}x{grid.nlon}, {len(members)} members, {len(stamps) - 1} timed months, {device}, "
          f"{torch.get_num_threads()} threads: {1000 * per_month:.0f} ms per month")
    return ms
