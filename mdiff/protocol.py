"""The AI-MIP protocol's facts (docs/aimip.md), in one place: experiments and their SST
offsets, the run's months, member batches, the training limit, standard gravity.

Pure Python, importing nothing of mdiff: the data preparation, the CMOR environment
(numpy 1.x, no torch), the evaluation and the Snakemake rules all read it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Experiment:
    name: str  # experiment_id
    sst_offset_k: float  # uniform SST offset over the ocean (sea ice unchanged)
    description: str  # the CMOR vocabulary's ``experiment`` text


EXPERIMENT_TABLE: tuple[Experiment, ...] = (
    Experiment("aimip", 0.0, "AI-MIP AMIP-style run forced by observed SST and sea ice"),
    Experiment("aimip-p2k", 2.0, "AI-MIP run with SST uniformly +2 K over the ocean (sea ice unchanged)"),
    Experiment("aimip-p4k", 4.0, "AI-MIP run with SST uniformly +4 K over the ocean (sea ice unchanged)"),
)
EXPERIMENTS: tuple[str, ...] = tuple(e.name for e in EXPERIMENT_TABLE)
SST_OFFSET_K: dict[str, float] = {e.name: e.sst_offset_k for e in EXPERIMENT_TABLE}
CONTROL = "aimip"  # the run the warmed ones are compared with
WARMED: tuple[str, ...] = tuple(e for e in EXPERIMENTS if e != CONTROL)

# The run: from the ERA5 state of October 1978 to December 2024; Oct-Dec 1978 is spin-up.
RUN = ("1978-10", "2024-12")
ANALYSIS = ("1979-01", "2024-12")
# Train, tune and select on ERA5 within 1979-2014 only; 2015-2024 is held out.
TRAINING_LIMIT = "2014-12"
TRAINING_ERA = (ANALYSIS[0], TRAINING_LIMIT)
HELD_OUT = ("2015-01", ANALYSIS[1])

G0 = 9.80665  # standard gravity (m s-2, WMO): geopotential height = geopotential / G0


def parse_month(month: str) -> tuple[int, int]:
    """'YYYY-MM' -> (year, month); a malformed month is a ValueError naming it."""
    try:
        year, number = (int(part) for part in month.split("-"))
    except ValueError:
        raise ValueError(f"{month!r} is not a month of the form YYYY-MM") from None
    if not 1 <= number <= 12 or len(month.split("-")[0]) != 4:
        raise ValueError(f"{month!r} is not a month of the form YYYY-MM")
    return year, number


def months(first: str, last: str) -> list[str]:
    """Every month first..last inclusive, as 'YYYY-MM' ([] when last < first)."""
    y0, m0 = parse_month(first)
    y1, m1 = parse_month(last)
    return [f"{y0 + (m0 - 1 + k) // 12:04d}-{(m0 - 1 + k) % 12 + 1:02d}"
            for k in range(max(0, (y1 - y0) * 12 + m1 - m0 + 1))]


def member_batches(members: int, batch: int) -> list[tuple[int, int]]:
    """(first, last) of each rollout batch: consecutive blocks of ``batch`` out of members 1..members."""
    return [(first, min(first + batch - 1, members)) for first in range(1, members + 1, batch)]


def member_batch(member: int, members: int, batch: int) -> tuple[int, int]:
    """(first, last) of the rollout batch holding ``member``."""
    if not 1 <= member <= members:
        raise ValueError(f"member {member} outside 1..{members}")
    return next(b for b in member_batches(members, batch) if b[0] <= member <= b[1])


def batch_label(first: int, last: int) -> str:
    """The member part of a rollout file's name: members_{first:03d}-{last:03d}."""
    return f"members_{first:03d}-{last:03d}"
