"""`mdiff bench <what>`: benchmarks whose latest figures live in docs/benchmarks.md.

Each benchmark is a function ``bench_<what>(args)`` that prints progress and, as its
last line, ``<metric>=<number>``. Timings on a shared machine are noisy: compare ratios
measured in one run.
"""

from __future__ import annotations

import argparse
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


# name -> (function, help, extra arguments)
BENCHMARKS: dict[str, tuple] = {
    "world": (bench_world, "time 46.25 years of the synthetic world at 1.5 deg",
              [(("--grid",), {"default": "121x240", "help": "NLATxNLON"})]),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", required=True)
    for name, (_, help_text, extra) in BENCHMARKS.items():
        p = sub.add_parser(name, help=help_text)
        for flags, kwargs in extra:
            p.add_argument(*flags, **kwargs)


def main(args) -> None:
    BENCHMARKS[args.what][0](args)
