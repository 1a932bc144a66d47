"""Fault tests, rollout (issue 12, finding 1): a resumed rollout never appends to the file a
killed process wrote, verifies every month it keeps against the sha256 recorded with the
resume state, and publishes only a file that reads back as written; `mdiff rollout` killed
with SIGKILL at random moments and rerun equals an uninterrupted run."""

from __future__ import annotations

import json
import logging
import time
from functools import partial
from pathlib import Path

import fault_tools as FT
import numpy as np
import pytest
import torch
from small_model import save_checkpoint, small_model

from mdiff import variables as V
from mdiff.data import prepared as P
from mdiff.rollout import (
    MonthWriter,
    RolloutJob,
    experiment_forcing,
    initial_state,
    partial_path,
    resume_path,
    run_rollout,
)

pytestmark = pytest.mark.faults



@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tiny_world, tmp_path_factory):
    """A small random model on the tiny world (saved as a checkpoint too) and the run's inputs."""
    grid = tiny_world.grid
    model, normalizer = small_model(tiny_world)
    months = P.month_range("1978-10", "1980-06")
    moy = P.month_of_year(months)
    sst, ice = experiment_forcing(tiny_world.forcing, grid, months, "aimip")
    state0 = normalizer.normalize(initial_state(tiny_world.prepared / "state" / "1978.nc", grid, months[0]),
                                  V.STATE_NAMES, moy[0])
    root = tmp_path_factory.mktemp("faults_rollout")
    return dict(grid=grid, model=model, normalizer=normalizer, months=months,
                forcing=normalizer.forcing(sst, ice, months=moy), state0=state0,
                checkpoint=save_checkpoint(root / "checkpoint.pt", model, normalizer))


def _job(setup, resume_every=4):
    return RolloutJob("aimip", [1, 2], 1234, setup["months"], setup["grid"], "0" * 64, resume_every)


def _run(setup, target, **kwargs):
    return run_rollout(_job(setup), setup["model"], setup["normalizer"], setup["forcing"], setup["state0"],
                       target, progress=False, **kwargs)


def read_all(path: Path) -> dict[str, np.ndarray]:
    import netCDF4

    with netCDF4.Dataset(path) as nc:
        nc.set_auto_maskandscale(False)
        return {v: nc.variables[v][:] for v in V.variables(V.STATE)}


def max_difference(a: Path, b: Path) -> float:
    x, y = read_all(a), read_all(b)
    return max(float(np.max(np.abs(x[v].astype(np.float64) - y[v]))) for v in x)


class Killed(Exception):
    pass


def kill_at(index):
    def hook(i):
        if i == index:
            raise Killed

    return hook


@pytest.fixture(scope="module")
def straight(setup, tmp_path_factory):
    return _run(setup, tmp_path_factory.mktemp("straight") / "members_001-002.nc")


# ------------------------------------------------------------------ finding 1, in process


def test_resume_copies_verified_months_into_a_fresh_file(setup, straight, tmp_path):
    """A damaged month before the resume point is found by its sha256 (the run starts
    afresh), and the resumed run writes into a new file, never into the killed run's."""
    import netCDF4

    target = tmp_path / "members_001-002.nc"
    with pytest.raises(Killed):
        _run(setup, target, on_month=kill_at(10))
    ppath = partial_path(target)
    assert torch.load(resume_path(target), weights_only=True)["next_index"] == 8
    with netCDF4.Dataset(ppath, "a") as nc:  # as a hard kill might leave it: month 3 damaged
        nc.variables["ta"][1, 3] = 1.0e5
    killed_inode = ppath.stat().st_ino
    seen = []
    out = _run(setup, target, on_month=lambda i: seen.append(ppath.stat().st_ino))
    assert seen and killed_inode not in seen  # never wrote into the killed run's file
    assert max_difference(out, straight) == 0.0


def test_resume_keeps_verified_months_and_continues(setup, straight, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mdiff.rollout")
    target = tmp_path / "members_001-002.nc"
    with pytest.raises(Killed):
        _run(setup, target, on_month=kill_at(13))
    assert torch.load(resume_path(target), weights_only=True)["next_index"] == 12
    killed_inode = partial_path(target).stat().st_ino
    first = []
    out = _run(setup, target, on_month=lambda i: first.append((i, partial_path(target).stat().st_ino)))
    assert first[0][0] == 12 and first[0][1] != killed_inode  # continued at the resume point, fresh file
    assert "12 of 21 written and verified" in caplog.text
    assert max_difference(out, straight) == 0.0


def test_unreadable_partial_or_resume_state_starts_afresh(setup, straight, tmp_path):
    for damage in ("partial", "resume"):
        target = tmp_path / damage / "members_001-002.nc"
        with pytest.raises(Killed):
            _run(setup, target, on_month=kill_at(10))
        victim = partial_path(target) if damage == "partial" else resume_path(target)
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
        out = _run(setup, target)
        assert max_difference(out, straight) == 0.0


def test_stale_temporaries_of_a_killed_run_are_removed(setup, tmp_path):
    target = tmp_path / "members_001-002.nc"
    stale = [tmp_path / ".members_001-002.nc.partial.a1b2c3d4.part", tmp_path / "members_001-002.nc.partial.new",
             tmp_path / ".members_001-002.nc.resume.pt.e5f6g7h8.part"]
    for p in stale:
        p.write_bytes(b"left by a killed run")
    _run(setup, target)
    assert not any(p.exists() for p in stale)
    assert FT.stale_files(tmp_path) == []


def test_a_month_that_does_not_read_back_is_never_published(setup, tmp_path, monkeypatch):
    """The finished file is read back against the recorded sha256 before it is renamed."""
    from mdiff.rollout import RolloutIntegrityError

    original = MonthWriter._write

    def damaging_write(self, index, state):
        original(self, index, state)
        if index == 5:  # the data on disk silently differ from what was handed over
            self.nc.variables["ua"][0, 5] = 0.0

    monkeypatch.setattr(MonthWriter, "_write", damaging_write)
    target = tmp_path / "members_001-002.nc"
    with pytest.raises(RolloutIntegrityError, match=r"month 1979-03 reads back differently"):
        _run(setup, target)
    assert not target.exists() and not partial_path(target).exists() and not resume_path(target).exists()


# ------------------------------------------------------------ kill -9 at random moments


RUN = {"grid": {"nlat": 17, "nlon": 32},
       "periods": {"run_start": "1978-10", "run_end": "1990-12", "stats": ["1979-01", "1990-12"],
                   "train": ["1979-01", "1990-12"], "validate": ["1979-01", "1990-12"]},
       "rollout": {"members": 3, "member_batch": 3, "seed": 5, "resume_every": 4}}


def rollout_cmd(setup, tiny_world, output: Path) -> list[str]:
    return FT.mdiff_cmd("rollout", "--settings", json.dumps(RUN), "--checkpoint", str(setup["checkpoint"]),
                        "--forcing", str(tiny_world.forcing), "--initial-state",
                        str(tiny_world.prepared / "state" / "1978.nc"), "--statics", str(tiny_world.statics), "--experiment", "aimip", "--members", "1-3",
                        "--output", str(output), "--no-progress", "--threads", "1")


def difference(output: Path, reference: Path) -> str | None:
    """How a rerun's file differs from the uninterrupted run's (None: it does not)."""
    diff = max_difference(output, reference)
    return None if diff <= 1e-6 else f"differs from the uninterrupted run by {diff}"


def phase(output: Path) -> str:
    """Where a kill landed, from what it left."""
    folder = output.parent
    temporary = " (an atomic write in progress)" if list(folder.glob(".*.part")) else ""
    if output.exists():
        return "after the file was published"
    if output.with_name(output.name + ".partial.new").exists():
        return "copying verified months into a fresh file" + temporary
    if partial_path(output).exists():
        what = "after a resume state" if resume_path(output).exists() else "before the first resume state"
        return f"stepping and writing, {what}" + temporary
    return "starting up" + temporary


def test_rollout_killed_at_random_moments_resumes_exactly(setup, tiny_world, tmp_path):
    record: FT.KillRecord = FT.RECORD["rollout"]
    target_kills = FT.kills("rollout")
    draw = FT.rng("rollout")
    started = time.perf_counter()
    ref_dir = tmp_path / "reference"
    ref_dir.mkdir()
    reference = ref_dir / "members_001-003.nc"
    # the uninterrupted run, timing when it starts writing
    total, seen = FT.timeline(rollout_cmd(setup, tiny_world, reference), ref_dir / "log",
                              {"write": partial_path(reference), "published": reference})
    # the window where files are written: from just before the partial file appears (or a
    # resumed run copies its verified months) to the rename onto the final name
    window = (0.9 * seen.get("write", 0.5 * total), seen.get("published", total) + 0.05)

    def delay() -> float:
        if draw.random() < 0.9:  # mostly while writing, the interesting part
            return draw.uniform(*window)
        return draw.uniform(0.0, 1.02 * total)

    trial = 0
    while record.kills < target_kills and trial < max(3 * target_kills, target_kills + 5):
        trial += 1
        folder = tmp_path / f"trial{trial:03d}"
        folder.mkdir()
        output = folder / "members_001-003.nc"
        cmd, log = rollout_cmd(setup, tiny_world, output), folder / "log"
        for _ in range(2):  # kill the first run and, usually, the resumed one too
            if record.kills >= target_kills:
                break
            if FT.run_killed(cmd, delay(), log):
                damaged = output.exists() and max_difference(output, reference) > 1e-6
                record.killed(trial, phase(output), f"{output} under its final name differs" if damaged else None)
            else:
                record.finished_before_kill += 1
        if record.reran(trial, FT.run_complete(cmd, log), log, partial(difference, output, reference), folder) \
                and not record.problems:
            output.unlink()  # keep the disk small; failed trials stay for inspection
    record.seconds += time.perf_counter() - started
    assert record.kills >= target_kills, f"only {record.kills} kills landed in {trial} trials"
    assert not record.problems, "\n".join(record.problems)
    assert record.silent_corruptions == record.incomplete_final == record.failed_reruns == 0

