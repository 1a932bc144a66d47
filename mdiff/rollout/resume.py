"""Resumable rollouts: what identifies a job, its resume state, and verified restarts.

A restarted run never appends to the file a killed process wrote (HDF5 gives no guarantee
for it): it copies the months the resume state vouches for into a fresh file, verifying
each against its sha256, and continues from there; if any month does not verify it starts
afresh. Either way its file equals an uninterrupted run's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mdiff.grid import LatLonGrid
from mdiff.protocol import SST_OFFSET_K

from .stepper import member_seed
from .writer import create_output, month_sha256, read_month

log = logging.getLogger("mdiff.rollout")

RESUME_FORMAT = 2  # 2: resume states carry the sha256 of every month written


class RolloutIntegrityError(ValueError):
    """The finished file does not read back as written: it is removed, never published."""

    user_facing = True


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


def load_resume(job: RolloutJob, output: Path) -> dict | None:
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


def restore_verified(job: RolloutJob, output: Path, resume: dict) -> bool:
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
