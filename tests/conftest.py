"""Shared fixtures: a tiny synthetic world written once per test session."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from mdiff.grid import LatLonGrid

REPO = Path(__file__).resolve().parents[1]


def skip_unless_ci(reason: str) -> None:
    """Skip a test whose tool is missing on a developer's machine, but fail under CI:
    `make test` installs every tool first, so a missing one there is a broken setup."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI: `make test` should have installed it)")
    pytest.skip(reason)


@dataclass(frozen=True)
class TinyWorld:
    root: Path
    grid: LatLonGrid
    prepared: Path
    truth: Path
    stats: Path
    run_start: str = "1978-10"
    run_end: str = "2024-12"

    @property
    def state_files(self) -> list[Path]:
        return sorted((self.prepared / "state").glob("*.nc"))

    @property
    def statics(self) -> Path:
        return self.prepared / "statics.nc"

    @property
    def forcing(self) -> Path:
        return self.prepared / "forcing.nc"


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> TinyWorld:
    """A 17x32 (11.25 deg) synthetic world, 1978-10..2024-12, 2 realisations, with statistics."""
    from mdiff.data.statistics import compute_statistics, write_statistics
    from mdiff.data.synthetic import write_world

    root = tmp_path_factory.mktemp("tiny_world")
    grid = LatLonGrid(17, 32)
    write_world(grid, "1978-10", "2024-12", seed=7, realizations=2, sst_offset=0.0,
                prepared_dir=root / "prepared", truth_dir=root / "truth", progress=False)
    stats = compute_statistics(sorted((root / "prepared" / "state").glob("*.nc")),
                               root / "prepared" / "statics.nc", grid, ["1979-01", "2014-12"])
    write_statistics(root / "stats" / "normalization.nc", stats, grid)
    return TinyWorld(root, grid, root / "prepared", root / "truth", root / "stats" / "normalization.nc")


@pytest.fixture(scope="module")
def endpoint():
    """A local S3 server (moto) for the upload tests: its endpoint URL."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def pytest_terminal_summary(terminalreporter):
    """The fault tests' summary line (tests/fault_tools.py), also as JSON in $MDIFF_FAULT_SUMMARY."""
    import json
    import sys

    tools = sys.modules.get("fault_tools")
    if tools is None:
        return
    line = tools.summary_line()
    if line is None:
        return
    terminalreporter.write_line(line)
    target = os.environ.get("MDIFF_FAULT_SUMMARY")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(json.dumps(tools.summary_dict(), indent=2) + "\n")
