"""Shared tools of the fault tests (tests/test_faults_*.py; no tests here).

Kill trials run a real `mdiff` command in a subprocess, SIGKILL it at a random moment, rerun
it to completion and compare with an uninterrupted run. How many kills each test makes comes
from the environment (`make faults` raises them; the normal suite runs a few):

    MDIFF_FAULT_ROLLOUT_KILLS (default 2), MDIFF_FAULT_TRAIN_KILLS (1), MDIFF_FAULT_SUBMIT_KILLS (2),
    MDIFF_FAULT_SEED (default 12): the seed of the kill moments (printed in the summary).

Every test records what it saw in ``RECORD``; conftest.py prints the summary line at the end
of the session and, when MDIFF_FAULT_SUMMARY names a file, writes it there as JSON.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_KILLS = {"rollout": 2, "train": 1, "submit": 2}


def kills(kind: str) -> int:
    return int(os.environ.get(f"MDIFF_FAULT_{kind.upper()}_KILLS", DEFAULT_KILLS[kind]))


def seed() -> int:
    return int(os.environ.get("MDIFF_FAULT_SEED", "12"))


def rng(kind: str) -> random.Random:
    return random.Random(f"{seed()}-{kind}")


@dataclass
class KillRecord:
    """What the kill trials of one command saw."""

    kills: int = 0  # processes killed while running
    finished_before_kill: int = 0  # the process ended before its kill moment came
    reruns: int = 0  # completing reruns
    exact: int = 0  # reruns whose result equals the uninterrupted run's
    silent_corruptions: int = 0  # a rerun ended 0 but its result differs
    failed_reruns: int = 0  # a rerun ended non-zero
    incomplete_final: int = 0  # after a kill: a file under a final name that is not complete
    leftovers: int = 0  # after a completed rerun: temporaries or partial files still there
    phases: Counter = field(default_factory=Counter)  # where the kills landed
    seconds: float = 0.0
    problems: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: (dict(v) if isinstance(v, Counter) else v) for k, v in self.__dict__.items()}

    def killed(self, trial: int, phase: str, damage: str | None) -> None:
        """A kill landed in ``phase``; ``damage``: what is wrong under a final name (None: nothing)."""
        self.kills += 1
        self.phases[phase] += 1
        if damage:
            self.incomplete_final += 1
            self.problems.append(f"trial {trial}: after the kill: {damage}")

    def reran(self, trial: int, rc: int, log: Path, difference: Callable[[], str | None], folder: Path) -> bool:
        """The completing rerun ended with ``rc``; ``difference()``: how its result differs from
        the uninterrupted run's (None: identical). Returns whether it was exact and clean."""
        self.reruns += 1
        if rc != 0:
            self.failed_reruns += 1
            self.problems.append(f"trial {trial}: rerun exited {rc}: {log.read_text()[-1500:]}")
            return False
        differs = difference()
        if differs is None:
            self.exact += 1
        else:
            self.silent_corruptions += 1
            self.problems.append(f"trial {trial}: rerun ended 0 but {differs}")
        leftovers = stale_files(folder)
        if leftovers:
            self.leftovers += 1
            self.problems.append(f"trial {trial}: left {leftovers}")
        return differs is None and not leftovers


@dataclass
class BadInputRecord:
    classes: list = field(default_factory=list)  # names of the bad-input classes checked
    clear: int = 0  # ended with exit 1 and a clear one-line error
    lines: dict = field(default_factory=dict)  # class -> the error line it got


RECORD: dict = {"rollout": KillRecord(), "train": KillRecord(), "submit": KillRecord(),
                "bad_inputs": BadInputRecord(), "secret_scans": 0, "secret_leaks": 0}


def record_bad_input(name: str, line: str) -> None:
    record = RECORD["bad_inputs"]
    record.classes.append(name)
    record.clear += 1
    record.lines[name] = line


def summary_line() -> str | None:
    r = RECORD
    parts = []
    for kind in ("rollout", "train", "submit"):
        k = r[kind]
        if k.kills or k.reruns:
            parts.append(f"{kind}: {k.kills} kills, {k.reruns} reruns, {k.exact} exact, "
                         f"{k.silent_corruptions} silent corruptions, {k.incomplete_final} incomplete under "
                         f"a final name, {k.failed_reruns} failed reruns, {k.leftovers} leftovers")
    b = r["bad_inputs"]
    if b.classes:
        parts.append(f"bad inputs: {len(set(b.classes))} classes, {b.clear} clear one-line errors")
    if r["secret_scans"]:
        parts.append(f"secret scans: {r['secret_scans']} ({r['secret_leaks']} leaks)")
    if not parts:
        return None
    return f"mdiff faults (seed {seed()}): " + "; ".join(parts)


def summary_dict() -> dict:
    return {"seed": seed(), "line": summary_line(),
            **{k: (v.as_dict() if hasattr(v, "as_dict") else getattr(v, "__dict__", v)) for k, v in RECORD.items()}}


def mdiff_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mdiff.cli", *args]


def subprocess_env(extra: dict | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           **(extra or {})}
    return env


def run_killed(cmd: list[str], delay_s: float, log: Path, env: dict | None = None,
               anchor: str | None = None) -> bool:
    """Start ``cmd``; SIGKILL it ``delay_s`` after it starts (or, with ``anchor``, after it
    first prints that text) unless it ended before. True if killed."""
    offset = log.stat().st_size if log.exists() else 0
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env or subprocess_env(), stdout=out, stderr=subprocess.STDOUT)
        while anchor is not None and proc.poll() is None and not printed(log, anchor, offset):
            time.sleep(0.02)
        try:
            proc.wait(timeout=delay_s)
            return False
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True


def printed(log: Path, text: str, offset: int = 0) -> bool:
    """Whether ``text`` appears in ``log`` after byte ``offset``."""
    with open(log, "rb") as f:
        f.seek(offset)
        return text.encode() in f.read()


def run_complete(cmd: list[str], log: Path, env: dict | None = None, timeout_s: float = 600) -> int:
    with open(log, "ab") as out:
        return subprocess.run(cmd, cwd=ROOT, env=env or subprocess_env(), stdout=out, stderr=subprocess.STDOUT,
                              timeout=timeout_s).returncode


def timed(cmd: list[str], log: Path, env: dict | None = None) -> float:
    started = time.perf_counter()
    rc = run_complete(cmd, log, env)
    if rc != 0:
        raise AssertionError(f"{' '.join(cmd[:4])} failed ({rc}):\n{log.read_text()[-3000:]}")
    return time.perf_counter() - started


def timeline(cmd: list[str], log: Path, watch: dict, env: dict | None = None) -> tuple[float, dict]:
    """Run ``cmd`` to completion: (seconds, {name: seconds until ``watch[name]`` first existed});
    a watch is a path, or a function that says whether the moment has come."""
    seen: dict[str, float] = {}
    started = time.perf_counter()
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env or subprocess_env(), stdout=out, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            for name, path in watch.items():
                if name not in seen and (path() if callable(path) else path.exists()):
                    seen[name] = time.perf_counter() - started
            time.sleep(0.02)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[:4])} failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
    return time.perf_counter() - started, seen


def stale_files(folder: Path) -> list[Path]:
    """Temporaries and partial files a finished stage must not leave."""
    pats = ("*.part", "*.partial", "*.partial.new", "*.resume.pt", "*.running", ".*.part")
    return sorted({p for pat in pats for p in folder.rglob(pat)})


def one_error_line(stderr: str, command: str) -> str:
    """The single 'mdiff <command>: error: ...' line of ``stderr`` (asserting there is one and
    no traceback)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(f"mdiff {command}: error:")]
    assert len(errors) == 1, f"expected one error line, got:\n{stderr[-3000:]}"
    assert lines[-1] == errors[0], f"the error goes on over several lines:\n{stderr[-3000:]}"
    return errors[0]
