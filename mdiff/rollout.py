"""`mdiff rollout`: ensemble rollout of one experiment and member batch, streamed to NetCDF.

From the encoded state of ``periods.run_start`` (1978-10) the model steps month by month to
``periods.run_end`` (2024-12): per month, the diffusion sampler draws next month's latent
for every member and the decoder maps it back to the model grid. Design choices:

* **Initial condition**: all members start from the encoder mean ``mu`` of the run_start
  state (no initial perturbation), so members differ only by the diffusion noise (METHOD.md)
  and ``aimip``, ``aimip-p2k``, ``aimip-p4k`` share the same initial state (AIMIP.md). The
  first written month is the decoded initial latent (the model's own view of 1978-10).
* **Members**: member k draws its noise from its own CPU ``torch.Generator`` seeded with
  ``member_seed(rollout.seed, k)``, so member k is the same alone or in a batch of 50, on
  any device (noise is drawn on the CPU, then moved).
* **Forcing** means what it meant in training: ``prepared/forcing.nc`` (monthly means)
  through ``Normalizer.forcing`` with the experiment's SST offset over ocean only.
* **Speed**: members are batched, the conditioning of a month is computed once for all
  members (METHOD.md defect 7), everything runs under ``torch.inference_mode``, and a
  background thread denormalises, checks and writes each month while the next is sampled.
* **Guards**: inputs are checked where they enter (plausible ranges of the variable table,
  SST defined over open ocean: ``mdiff.data.checks``); a NaN/Inf or a value outside its
  channel's plausible range in a decoded month stops the run with an error naming month,
  variable and member; the partial output is then removed.
* **Resume**: the output grows in ``{output}.partial`` and is renamed onto ``{output}``
  only when complete and read back intact (every month against the sha256 recorded when it
  was written). Every ``rollout.resume_every`` months, once everything before is on disk,
  the latent, the generator states, the month index and the sha256 of every month written
  so far go atomically to ``{output}.resume.pt``. A restarted run never appends to the file
  a killed process wrote (HDF5 gives no guarantee for it): it copies the months the resume
  state vouches for into a fresh file, verifying each against its sha256, and continues
  from there; if any month does not verify it starts afresh. Either way its file equals an
  uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.nn import functional as F

from mdiff import checkpoint
from mdiff import variables as V
from mdiff.data import checks
from mdiff.data import prepared as P
from mdiff.data.normalize import Normalizer
from mdiff.fileio import sha256_file
from mdiff.grid import LatLonGrid
from mdiff.protocol import SST_OFFSET_K

log = logging.getLogger(__name__)

RESUME_FORMAT = 2  # 2: resume states carry the sha256 of every month written

class RolloutGuardError(ValueError):
    """A decoded month is not finite or not physical: the message names month, variable, member."""

    user_facing = True


class RolloutInputError(ValueError):
    user_facing = True


class RolloutIntegrityError(ValueError):
    """The finished file does not read back as written: it is removed, never published."""

    user_facing = True


# ------------------------------------------------------------------------ members


_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def member_seed(base_seed: int, member: int) -> int:
    """Seed (0 <= seed < 2**63, fits int64) of member ``member`` (1-based): a fixed integer
    mix of (base seed, member), no salted ``hash()``, the same on every machine and run."""
    if member < 1:
        raise ValueError(f"member {member}: members are numbered from 1")
    return _splitmix64(_splitmix64(base_seed & _MASK64) ^ member) >> 1


def member_generators(base_seed: int, members: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator(device="cpu").manual_seed(member_seed(base_seed, k)) for k in members]


def parse_members(text: str) -> list[int]:
    """'1-5' or '003-004' -> [1, ..., 5] (1-based, inclusive)."""
    try:
        first, last = (int(p) for p in text.split("-"))
    except ValueError:
        raise RolloutInputError(f"--members {text!r}: expected FIRST-LAST, e.g. 1-5") from None
    if not 1 <= first <= last:
        raise RolloutInputError(f"--members {text!r}: expected 1 <= FIRST <= LAST")
    return list(range(first, last + 1))


# ------------------------------------------------------------------------ inputs


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


# ------------------------------------------------------------------------ stepping


class Kernels(Protocol):
    """The four model calls a rollout needs: ``MonthlyDiffusion`` itself (the reference) or
    ``FastKernels`` (the same arithmetic arranged for inference)."""

    def conditioning(self, forcing: torch.Tensor, month: torch.Tensor): ...
    def encode(self, state: torch.Tensor, cond): ...
    def sample_next(self, latent: torch.Tensor, cond, generators: list[torch.Generator]) -> torch.Tensor: ...
    def decode(self, latent: torch.Tensor, cond) -> torch.Tensor: ...


class EnsembleStepper:
    """Month-by-month stepping of a batch of members; yields one month at a time.

    ``forcing``: normalised (T, 3, H, W) from ``Normalizer.forcing``; ``months``: (T,)
    datetime64[M]. The conditioning of a month is computed once, at batch 1, and
    broadcast to all members.
    """

    def __init__(self, kernels: Kernels, forcing: np.ndarray, months: np.ndarray, device: torch.device,
                 bf16: bool = False):
        if forcing.shape[0] != months.shape[0]:
            raise ValueError(f"forcing has {forcing.shape[0]} months, the run {months.shape[0]}")
        self.kernels, self.device = kernels, torch.device(device)
        self.forcing = torch.from_numpy(np.ascontiguousarray(forcing, dtype=np.float32))
        self.months = months
        self.month_of_year = torch.as_tensor(P.month_of_year(months), dtype=torch.long)
        self.bf16 = bf16 and self.device.type == "cuda"

    def _autocast(self):
        if self.bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def conditioning(self, index: int):
        forcing = self.forcing[index: index + 1].to(self.device, non_blocking=True)
        month = self.month_of_year[index: index + 1].to(self.device)
        return self.kernels.conditioning(forcing, month)

    @torch.inference_mode()
    def initial(self, state: np.ndarray, members: int,
                forcing: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent (B, C, h, w) of month 0 for every member (the encoder mean) and the decoded
        month 0 (B, 37, H, W), normalised. ``forcing`` (3, H, W): the forcing the initial state
        was observed under (default: the run's own month 0)."""
        with self._autocast():
            if forcing is None:
                cond = self.conditioning(0)
            else:
                x = torch.from_numpy(np.asarray(forcing, dtype=np.float32))[None].to(self.device)
                cond = self.kernels.conditioning(x, self.month_of_year[:1].to(self.device))
            x = torch.from_numpy(np.asarray(state, dtype=np.float32))[None].to(self.device)
            mu, _ = self.kernels.encode(x, cond)
            decoded = self.kernels.decode(mu, cond)
        latent = mu.float().expand(members, -1, -1, -1).contiguous()
        return latent, decoded.float().expand(members, -1, -1, -1)

    @torch.inference_mode()
    def steps(self, latent: torch.Tensor, generators: list[torch.Generator],
              start: int = 1) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Yield (month index, latent, normalised state) for months start..T-1; ``latent`` is
        the latent of month ``start - 1``."""
        if len(generators) != latent.shape[0]:
            raise ValueError(f"{len(generators)} generators for {latent.shape[0]} members")
        for index in range(start, self.months.shape[0]):
            with self._autocast():
                cond = self.conditioning(index)  # month t + 1: sampled and decoded with it
                latent = self.kernels.sample_next(latent, cond, generators).float()
                state = self.kernels.decode(latent, cond).float()
            yield index, latent, state


# ------------------------------------------------------------------------ guards


def check_month(values: np.ndarray, month: np.datetime64, members: Sequence[int]) -> None:
    """Raise ``RolloutGuardError`` if physical ``values`` (B, 37, H, W) hold a NaN/Inf or a
    value outside its channel's plausible range; names the first bad member and variable."""
    # each channel's plausible_range from the variable table (also checked on inputs): outside
    # means a broken run, not climate
    ranges = np.array([c.plausible_range for c in V.STATE], dtype=np.float64)
    lo, hi = ranges[None, :, 0], ranges[None, :, 1]
    vmin, vmax = values.min(axis=(-2, -1)), values.max(axis=(-2, -1))  # NaN propagates
    ok = (vmin >= lo) & (vmax <= hi)
    if ok.all():
        return
    b, c = (int(i) for i in np.argwhere(~ok)[0])
    ch = V.STATE[c]
    field = values[b, c]
    where = f"month {str(month)}, variable {ch.variable!r} (channel {ch.name}), member {members[b]}"
    bad = ~np.isfinite(field)
    if bad.any():
        j, i = np.argwhere(bad)[0]
        raise RolloutGuardError(f"rollout stopped at {where}: {int(bad.sum())} NaN/Inf value(s), first at "
                                f"lat index {j}, lon index {i}; expected finite values")
    low, high = ch.plausible_range
    value = float(vmin[b, c] if vmin[b, c] < low else vmax[b, c])
    raise RolloutGuardError(f"rollout stopped at {where}: value {value:.6g} {ch.units} outside the physical "
                            f"range [{low:g}, {high:g}] {ch.units}")


# ------------------------------------------------------------------------ writing


def _variable_layout(variable: str) -> tuple[tuple[str, ...], dict]:
    """Dims and attributes of a rollout variable, from the prepared contract's helper."""
    shape = (1, 1, len(V.PRESSURE_LEVELS_HPA), 1, 1) if variable in V.PRESSURE_VARIABLES else (1, 1, 1, 1)
    da = P.variable_array(variable, np.zeros(shape, np.float32), leading=("member", "time"))
    return da.dims, dict(da.attrs)


def create_output(path: Path, grid: LatLonGrid, months: np.ndarray, members: Sequence[int],
                  seeds: Sequence[int], attrs: dict) -> None:
    """An empty rollout file: coordinates, bounds, member seeds and the data variables."""
    import netCDF4
    import xarray as xr

    ds = P.skeleton(grid, months, attrs)
    ds = ds.assign_coords(
        member=xr.DataArray(np.asarray(members, np.int32), dims="member",
                            attrs={"long_name": "ensemble member number (1-based)"}),
        plev=P.plev_coord())
    ds["member_seed"] = xr.DataArray(np.asarray(seeds, np.int64), dims="member", attrs={
        "long_name": "seed of the member's torch.Generator (diffusion noise)"})
    P.write(ds, path)
    with netCDF4.Dataset(path, "a") as nc:
        for variable in V.variables(V.STATE):
            dims, var_attrs = _variable_layout(variable)
            chunks = [1, 1] + [len(nc.dimensions[d]) for d in dims[2:]]
            var = nc.createVariable(variable, "f4", dims, chunksizes=chunks, fill_value=False)
            var.setncatts(var_attrs)
        nc.setncattr("months_written", 0)


def month_arrays(values: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(variable, float32 C-contiguous data (B, [plev,] H, W)) of one month of physical
    ``values`` (B, 37, H, W), in file order: what the writer stores and the checksum covers."""
    out = []
    for variable in V.variables(V.STATE):
        idx = [i for i, c in enumerate(V.STATE) if c.variable == variable]
        data = values[:, idx] if variable in V.PRESSURE_VARIABLES else values[:, idx[0]]
        out.append((variable, np.ascontiguousarray(data, dtype=np.float32)))
    return out


def month_sha256(arrays: Sequence[tuple[str, np.ndarray]]) -> str:
    h = hashlib.sha256()
    for _, data in arrays:
        h.update(np.ascontiguousarray(data, dtype="<f4").tobytes())
    return h.hexdigest()


def read_month(nc, index: int) -> list[tuple[str, np.ndarray]]:
    """The stored arrays of month ``index`` of an open rollout file (raw, unmasked)."""
    out = []
    for variable in V.variables(V.STATE):
        var = nc.variables[variable]
        var.set_auto_maskandscale(False)
        out.append((variable, np.ascontiguousarray(var[:, index], dtype=np.float32)))
    return out


class MonthWriter:
    """Background writer: denormalise, check and write each month; save resume states.

    The stepping thread hands over normalised states with ``put``; errors raised here (guard
    failures, I/O) are re-raised in the stepping thread by ``raise_if_failed``/``close``.
    ``checksums``: the sha256 of every month written, in order (those of a verified resume
    first); resume states carry them.
    """

    def __init__(self, path: Path, normalizer: Normalizer, months: np.ndarray, members: Sequence[int],
                 sync_every: int, max_pending: int = 3, checksums: Sequence[str] = ()):
        import netCDF4

        self.path, self.normalizer, self.months, self.members = path, normalizer, months, list(members)
        self.sync_every = sync_every
        self.checksums: list[str] = list(checksums)
        self.nc = netCDF4.Dataset(path, "a")
        self.queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self.error: BaseException | None = None
        self.written = len(self.checksums)
        self.thread = threading.Thread(target=self._run, name="rollout-writer", daemon=True)
        self.thread.start()

    # --- stepping thread
    def put(self, index: int, state: np.ndarray) -> None:
        self.raise_if_failed()
        self._put(("month", index, state))

    def save_resume(self, resume_path: Path, payload: dict) -> None:
        """Write ``payload`` (+ the checksums of its months) to ``resume_path`` once every
        month handed over so far is on disk."""
        self._put(("resume", resume_path, payload))

    def _put(self, item) -> None:
        while True:  # wake up now and then so a failed writer cannot block the stepping forever
            try:
                self.queue.put(item, timeout=1.0)
                return
            except queue.Full:
                self.raise_if_failed()

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        if self.nc.isopen():
            self.nc.close()
        self.raise_if_failed()

    # --- writer thread
    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue  # drain after a failure
            try:
                if item[0] == "month":
                    self._write(item[1], item[2])
                else:
                    self._sync()
                    payload = item[2]
                    n = payload["next_index"]
                    if n > len(self.checksums):
                        raise RuntimeError(f"resume state at month {n}, but {len(self.checksums)} written")
                    from mdiff.fileio import atomic_path

                    with atomic_path(item[1]) as tmp:
                        torch.save({**payload, "month_sha256": self.checksums[:n]}, tmp)
            except BaseException as err:  # noqa: BLE001 -- handed to the stepping thread
                self.error = err

    def _write(self, index: int, state: np.ndarray) -> None:
        if index != len(self.checksums):
            raise RuntimeError(f"month index {index} handed over after {len(self.checksums)} months")
        values = self.normalizer.denormalize(state, V.STATE_NAMES, P.month_of_year(self.months[index]))
        check_month(values, self.months[index], self.members)
        arrays = month_arrays(values)
        for variable, data in arrays:
            self.nc.variables[variable][:, index] = data
        self.checksums.append(month_sha256(arrays))
        self.written = index + 1
        if (index + 1) % self.sync_every == 0:
            self._sync()

    def _sync(self) -> None:
        self.nc.setncattr("months_written", self.written)
        self.nc.sync()


# ------------------------------------------------------------------------ the job


@dataclass
class RolloutJob:
    """Everything one rollout file depends on."""

    experiment: str
    members: list[int]
    base_seed: int
    months: np.ndarray  # datetime64[M], run_start..run_end
    grid: LatLonGrid
    checkpoint_sha256: str
    resume_every: int = 12

    @property
    def seeds(self) -> list[int]:
        return [member_seed(self.base_seed, k) for k in self.members]

    def fingerprint(self) -> dict:
        """What must match for a resume state to continue this job."""
        return {"format": RESUME_FORMAT, "experiment": self.experiment, "members": list(self.members),
                "seeds": self.seeds, "months": [str(self.months[0]), str(self.months[-1]), int(self.months.size)],
                "grid": [self.grid.nlat, self.grid.nlon], "checkpoint_sha256": self.checkpoint_sha256}

    def attrs(self) -> dict:
        from mdiff import __version__

        return {"title": f"mdiff ensemble rollout, {self.experiment}, members {self.members[0]}-{self.members[-1]}",
                "experiment_id": self.experiment, "sst_offset_K": float(SST_OFFSET_K[self.experiment]),
                "checkpoint_sha256": self.checkpoint_sha256, "mdiff_version": __version__,
                "base_seed": str(self.base_seed),
                "initial_condition": f"encoder mean of the prepared state of {self.months[0]} (all members)",
                "source": "mdiff rollout"}


def partial_path(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def resume_path(output: Path) -> Path:
    return output.with_name(output.name + ".resume.pt")


def _fresh_partial_path(output: Path) -> Path:
    """Where a resume copies the verified months before the copy replaces ``.partial``."""
    return output.with_name(output.name + ".partial.new")


def remove_stale_temporaries(output: Path) -> None:
    """Temporaries a killed run of ``output`` leaves: the resume copy in progress and the
    ``atomic_path`` files of the output, its partial file, its copy and its resume state."""
    from mdiff.fileio import remove_stale_temporaries as remove

    fresh = _fresh_partial_path(output)
    fresh.unlink(missing_ok=True)
    remove(output, partial_path(output), fresh, resume_path(output))


def _load_resume(job: RolloutJob, output: Path) -> dict | None:
    """The resume state of ``output`` if there is one for this job (else None: start afresh)."""
    rpath, ppath = resume_path(output), partial_path(output)
    if not (rpath.exists() and ppath.exists()):
        return None
    try:
        state = torch.load(rpath, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- an unreadable resume state means a fresh start
        log.warning("resume state %s unreadable (%s): starting from the initial state", rpath,
                    str(err).splitlines()[0] if str(err) else type(err).__name__)
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != job.fingerprint():
        log.warning("resume state %s belongs to another job or mdiff version: starting from the initial state",
                    rpath)
        return None
    sums = state.get("month_sha256")
    if not isinstance(sums, list) or len(sums) != state.get("next_index") or not 0 < len(sums) < job.months.size:
        log.warning("resume state %s is inconsistent: starting from the initial state", rpath)
        return None
    return state


def _restore_verified(job: RolloutJob, output: Path, resume: dict) -> bool:
    """Copy the months ``resume`` vouches for from the killed run's ``.partial`` into a fresh
    file, each verified against its recorded sha256, and put that file in its place.

    Never appends to (or otherwise writes) the killed run's file. False (nothing changed but
    the temporary removed) when a month does not verify or the old file cannot be read."""
    import netCDF4

    ppath, fresh = partial_path(output), _fresh_partial_path(output)
    sums = resume["month_sha256"]
    create_output(fresh, job.grid, job.months, job.members, job.seeds, job.attrs())
    try:
        with netCDF4.Dataset(ppath, "r") as old, netCDF4.Dataset(fresh, "a") as new:
            for index, expected in enumerate(sums):
                arrays = read_month(old, index)
                if month_sha256(arrays) != expected:
                    log.warning("%s: month %s does not match its recorded sha256 (damaged by the "
                                "interruption): starting from the initial state", ppath, job.months[index])
                    raise _NotVerified
                for variable, data in arrays:
                    new.variables[variable][:, index] = data
            new.setncattr("months_written", len(sums))
    except Exception as err:  # noqa: BLE001 -- any failure to read the old file means a fresh start
        if not isinstance(err, _NotVerified):
            log.warning("%s unreadable after the interruption (%s): starting from the initial state", ppath,
                        str(err).splitlines()[0] if str(err) else type(err).__name__)
        fresh.unlink(missing_ok=True)
        return False
    fresh.replace(ppath)
    return True


class _NotVerified(Exception):
    pass


def verify_output(path: Path, checksums: Sequence[str], months: np.ndarray) -> None:
    """Raise ``RolloutIntegrityError`` unless every month of ``path`` reads back as written."""
    import netCDF4

    try:
        with netCDF4.Dataset(path, "r") as nc:
            for index, expected in enumerate(checksums):
                if month_sha256(read_month(nc, index)) != expected:
                    raise RolloutIntegrityError(
                        f"{path}: month {months[index]} reads back differently from what was written "
                        f"(sha256 mismatch); expected the written data: the file was removed, rerun the rollout")
    except RolloutIntegrityError:
        raise
    except Exception as err:  # noqa: BLE001
        raise RolloutIntegrityError(f"{path}: cannot be read back after writing ({type(err).__name__}: {err}); "
                                    "expected a readable NetCDF file: the file was removed, rerun the rollout") from err


def run_rollout(job: RolloutJob, kernels, normalizer: Normalizer, forcing: np.ndarray,
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
    stepper = EnsembleStepper(kernels, forcing, job.months, torch.device(device), bf16)
    generators = member_generators(job.base_seed, job.members)
    resume = _load_resume(job, output)
    if resume is not None and not _restore_verified(job, output, resume):
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


# ------------------------------------------------------------------------ the command


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
    kernels = inference_kernels(model, device, compile=cfg.rollout.compile, bf16=cfg.rollout.bf16)
    return run_rollout(job, kernels, normalizer, forcing, state0, output, device, cfg.rollout.bf16,
                       progress=progress, initial_forcing=initial_forcing)


def inference_kernels(model, device: torch.device, compile: bool = False, bf16: bool = False) -> FastKernels:
    """The kernels a rollout steps with: the fast inference form of ``model``. ``bf16`` on a
    CPU: the real pointwise matmuls (MLPs, output convs) in bf16 where the CPU has native
    bf16 matmuls (avx512_bf16/AMX); on a GPU the stepper's autocast does it instead."""
    cpu_bf16 = bf16 and device.type == "cpu"
    if cpu_bf16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        log.info("rollout.bf16: this CPU has no native bf16 matmul; running in fp32")
        cpu_bf16 = False
    kernels = FastKernels(model, bf16=cpu_bf16)
    if compile and device.type == "cuda":
        # the real-valued tail of each block (FiLM norms, MLP, output): the spectral parts
        # are complex matmuls and FFTs that the compiler would hand back to eager anyway
        for block in (kernels.denoiser, kernels.decoder):
            block.finish = torch.compile(block.finish, dynamic=False)
    elif compile:
        log.info("rollout.compile applies on a GPU only; running eagerly on %s", device)
    return kernels


# ------------------------------------------------------------------------ fast inference
#
# The same arithmetic as MonthlyDiffusion.sample_next/decode (tests compare them), arranged
# for inference. A SphereBlock's spectral convolution is linear in its input channels, so
# the parts fed by the conditioning, the learned embedding and the diffusion-time maps are
# computed once per month (or once per run) at batch 1 and only the member channels run per
# member; in the denoiser the prior latent's part is computed once per month, not per step.
# The FiLM modulations depend only on the conditioning: once per month. Fixed weights are
# folded ahead (Legendre analysis x analysis patterns, synthesis patterns x inverse Legendre),
# and 1x1 convolutions run as batched matmuls (oneDNN's 1x1 convs are slow on CPU here).


class _FastSpectral:
    """Inference form of a ``SpectralConv``: ``analyse`` maps input channels to the mixed
    pattern domain g (R, M, B, O), linear, so parts add; ``spectral`` maps g to the output's
    Fourier coefficients y (M, X, B, O), also linear, and ``to_grid`` y to the grid. Parts
    that are fixed for a month or a diffusion step are best added in y: it is R/X times
    smaller than g."""

    def __init__(self, conv):
        with torch.no_grad():
            self.M, self.R, self.O = conv.mmax, conv.rank, conv.out_channels
            self.nlon = conv.isht.nlon
            weights = conv.sht.weights.to(torch.complex64)  # (M, L_in, K_in)
            v = conv._dense(conv.analysis, conv.l_in, conv.m_in, conv.lmax_in)  # (R, L_in, M)
            self.analysis = torch.einsum("mlk,rlm->mrk", weights, v).contiguous()  # (M, R, K_in)
            mix = torch.view_as_complex(conv.mixing.float().contiguous())  # (R, O, I)
            self.mixing = mix.transpose(1, 2).contiguous()  # (R, I, O)
            u = conv._dense(conv.synthesis, conv.l_out, conv.m_out, conv.lmax_out)  # (R, L_out, M)
            pct = conv.isht.pct  # (M, K_out, L_out), real
            k_out, l_out = pct.shape[1:]
            # Fold the inverse Legendre step into the synthesis patterns where that is cheaper
            # (latent grids); onto a fine grid (the decoder) keep it a separate real product.
            self.fused = self.R * k_out <= self.R * l_out + l_out * k_out // 2
            if self.fused:
                self.synthesis = torch.einsum("rlm,mkl->mkr", u, pct.to(torch.complex64)).contiguous()
            else:
                self.synthesis = u.permute(2, 1, 0).contiguous()  # (M, L_out, R)
                self.legendre = pct.contiguous()  # (M, K_out, L_out)

    def analyse(self, x: torch.Tensor, first: int) -> torch.Tensor:
        """Input channels first..first+I-1 given as ``x`` (B, I, K, W) -> g (R, M, B, O)."""
        b, i, k, _ = x.shape
        m, r = self.M, self.R
        f = torch.fft.rfft(x.float(), dim=-1, norm="forward")[..., :m]  # (B, I, K, M)
        f = f.permute(3, 2, 0, 1).reshape(m, k, b * i)
        h = torch.bmm(self.analysis, f)  # (M, R, B*I)
        # (R, M*B, I): a copy in contiguous runs of B*I numbers, not a full transpose
        h = h.transpose(0, 1).reshape(r, m * b, i)
        g = torch.bmm(h, self.mixing[:, first: first + i])  # (R, M*B, O)
        return g.view(r, m, b, self.O)

    def spectral(self, g: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        """g (R, M, B, O) -> y (M, X, B, O) (X: output rows if fused, else degrees) [+ ``add``,
        anything that broadcasts to y, folded into the matmul]."""
        r, m, b, o = g.shape
        g = g.transpose(0, 1).reshape(m, r, b * o)  # contiguous runs of B*O numbers
        if add is None:
            y = torch.bmm(self.synthesis, g)
        else:
            y = torch.baddbmm(add.expand(m, -1, b, o).reshape(m, -1, b * o), self.synthesis, g)
        return y.view(m, -1, b, o)

    def to_grid(self, y: torch.Tensor) -> torch.Tensor:
        """y (M, X, B, O) -> (B, O, K_out, nlon), real."""
        m, x, b, o = y.shape
        if not self.fused:  # real Legendre synthesis of the real and imaginary parts together
            parts = torch.view_as_real(y).reshape(m, x, b * o * 2)
            y = torch.view_as_complex(torch.bmm(self.legendre, parts).view(m, -1, b, o, 2))
        y = y.permute(2, 3, 1, 0).contiguous()  # (B, O, K, M)
        y[..., 0].imag.zero_()  # m = 0 is real
        return torch.fft.irfft(y, n=self.nlon, dim=-1, norm="forward")

    def synthesise(self, g: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        """g (R, M, B, O) -> (B, O, K_out, nlon), real."""
        return self.to_grid(self.spectral(g, add))


def _matrix(conv) -> tuple[torch.Tensor, torch.Tensor]:
    """A 1x1 conv's weight (O, I) and bias (O, 1)."""
    return conv.weight.detach()[:, :, 0, 0].contiguous(), conv.bias.detach()[:, None].contiguous()


def _pointwise(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """1x1 conv of x (B, I, N): a matmul, then the bias in place (baddbmm would first
    materialise the broadcast bias, a full extra pass over the output)."""
    return torch.matmul(weight, x).add_(bias)


class _FastBlock:
    """Inference form of a ``SphereBlock`` whose member inputs are its first channels."""

    def __init__(self, block, bf16: bool = False):
        self.spectral = _FastSpectral(block.spectral)
        self.film_conditioning = block.film_conditioning
        self.dtype = torch.bfloat16 if bf16 else torch.float32
        self.embedding = block.embedding.detach()[None]  # (1, E, H_in, W_in)
        self.norms = [(block.norm1.eps, *_matrix(block.norm1.modulation)),
                      (block.norm2.eps, *_matrix(block.norm2.modulation))]
        self.sqrt_area = block.norm1.area_weights.flatten().sqrt()  # (N_out,)
        self.inner, self.outer, self.output = (
            tuple(t.to(self.dtype) for t in _matrix(conv)) for conv in (block.mlp.inner, block.mlp.outer, block.output))

    def modulations(self, cond_out: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(1 + scale, shift) of both norms, each (1, C, N), from cond_out (1, K, H, W)."""
        c = self.film_conditioning(cond_out.float()).flatten(2)
        out = []
        for _, w, bias in self.norms:
            scale, shift = _pointwise(w, bias, c).chunk(2, dim=1)
            out.append((1 + scale, shift))
        return out

    def shared(self, cond_in: torch.Tensor, first: int) -> torch.Tensor:
        """g of the conditioning and embedding channels (which follow the others): (R, M, 1, O)."""
        return self.spectral.analyse(torch.cat([cond_in.float(), self.embedding], dim=1), first)

    def finish(self, y: torch.Tensor, modulations) -> torch.Tensor:
        """The block after the spectral synthesis: y (M, X, B, O) -> output (B, C_out, H, W)."""
        h = self.spectral.to_grid(y)
        shape = h.shape[-2:]
        h = F.gelu(h.flatten(2))
        h = self._norm(h, 0, modulations[0])
        x = h.to(self.dtype)
        h = h.add_(_pointwise(*self.outer, F.gelu(_pointwise(*self.inner, x))))
        h = self._norm(h, 1, modulations[1]).to(self.dtype)
        return _pointwise(*self.output, h).float().unflatten(2, shape)

    def _norm(self, h: torch.Tensor, which: int, modulation) -> torch.Tensor:
        eps = self.norms[which][0]
        # one contiguous reduction per sample (a norm over dim 1 alone is a slow strided one)
        mean_square = torch.linalg.vector_norm(h * self.sqrt_area, dim=(1, 2)).square_() / h.shape[1]  # (B,)
        scale, shift = modulation
        return h.mul_(torch.rsqrt(mean_square + eps)[:, None, None]).mul_(scale).add_(shift)


# Members go through the fast kernels in chunks of at most this many: the per-member work
# is the same, but a chunk's full-resolution tensors (48 x 121x240 floats = 5.6 MB a member)
# stay closer to the caches; 50 members at once ran ~1.5x slower per member than 5.
MEMBER_CHUNK = 8


class FastKernels:
    """Rollout kernels with the arithmetic of ``MonthlyDiffusion`` arranged for inference
    (see above); conditioning and encoding are the model's own. ``bf16``: the real pointwise
    matmuls in bf16 (not the same arithmetic: ~1e-2 relative differences), spectral parts fp32."""

    def __init__(self, model, bf16: bool = False):
        from mdiff.nn.diffusion import ancestral_sample

        self.model, self._ancestral_sample = model, ancestral_sample
        self.c = model.config.latent_channels
        self.steps = model.config.diffusion_steps
        with torch.no_grad():
            self.denoiser = _FastBlock(model.denoiser, bf16)
            self.decoder = _FastBlock(model.decoder, bf16)
            h, w = model.latent_grid.shape
            t = torch.arange(self.steps + 1, device=model.latent_center.device)
            # time maps (1, T, h, w) per diffusion step, and their spectral part (after x_t, prior)
            emb = model.time_embedding(t).float()
            self.time_maps = [emb[s][None, :, None, None].expand(1, -1, h, w) for s in range(self.steps + 1)]
            # ... carried through the synthesis: y (M, K, 1, O), added per step (see sample_next)
            spec = self.denoiser.spectral
            self.time_y = [spec.spectral(spec.analyse(m, 2 * self.c)) for m in self.time_maps]

    def conditioning(self, forcing, month):
        return self.model.conditioning(forcing, month)

    def encode(self, state, cond):
        return self.model.encode(state, cond)

    def decode(self, latent: torch.Tensor, cond) -> torch.Tensor:
        dec, spec = self.decoder, self.decoder.spectral
        shared_y, modulations = spec.spectral(dec.shared(cond.latent, self.c)), dec.modulations(cond.full)
        state = torch.cat([dec.finish(spec.spectral(spec.analyse(part, 0), add=shared_y), modulations)
                           for part in latent.split(MEMBER_CHUNK)])
        return state if cond.response is None else state + cond.response

    def sample_next(self, latent: torch.Tensor, cond, generators) -> torch.Tensor:
        den, c = self.denoiser, self.c
        # per month at batch 1: the conditioning + embedding part (synthesised, so a step adds
        # it to its output coefficients, not to its g) and the FiLM modulations of every step
        spec = den.spectral
        shared_y = spec.spectral(den.shared(cond.latent, 2 * c + self.time_maps[0].shape[1]))
        steps = {s: (shared_y + self.time_y[s],
                     den.modulations(torch.cat([cond.latent.float(), self.time_maps[s]], dim=1)))
                 for s in range(1, self.steps + 1)}
        if isinstance(generators, torch.Generator):  # one generator for the batch: one chunk
            return self._sample_chunk(latent, steps, generators)
        parts = [self._sample_chunk(part, steps, generators[i: i + part.shape[0]])
                 for i, part in zip(range(0, latent.shape[0], MEMBER_CHUNK), latent.split(MEMBER_CHUNK), strict=True)]
        return torch.cat(parts)

    def _sample_chunk(self, latent: torch.Tensor, steps: dict, generators) -> torch.Tensor:
        model, den, spec = self.model, self.denoiser, self.denoiser.spectral
        # per month and member: the prior latent's part
        month_y = spec.spectral(spec.analyse(model.standardise(latent), self.c))

        def predict_v(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            y_step, modulations = steps[int(t[0])]
            return den.finish(spec.spectral(spec.analyse(x_t, 0), add=month_y + y_step), modulations)

        x0 = self._ancestral_sample(model.schedule, predict_v, tuple(latent.shape), generators, latent.device,
                                    model.config.sampler_variance)
        return model.unstandardise(x0)


# ------------------------------------------------------------------------ benchmark


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
    kernels = model if args.reference else inference_kernels(model, device, compile=args.compile, bf16=args.bf16)
    stamps: list[float] = []

    def on_month(index: int) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        run_rollout(job, kernels, normalizer, forcing, state0, Path(tmp) / "bench.nc", device, args.bf16,
                    progress=False, on_month=on_month)
    # the first stepped month is a warm-up; time the rest
    per_month = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    ms = 1000 * per_month / len(members)
    print(f"rollout {'reference (model API)' if args.reference else 'fast path'}: {args.model}, grid "
          f"{grid.nlat}x{grid.nlon}, {len(members)} members, {len(stamps) - 1} timed months, {device}, "
          f"{torch.get_num_threads()} threads: {1000 * per_month:.0f} ms per month")
    return ms
