"""A torch Dataset of month pairs (t, t + 1) from the prepared state files, normalised.

Monthly data are small (360 months at 121x240 are ~1.6 GB in float32; the 5-degree
default is 40 MB), so everything is loaded once into memory. Items are dicts of float32
tensors ``state`` (37, H, W), ``state_next``, ``forcing`` (3, H, W), ``forcing_next``
(the training forcing: the state files' ERA5-like monthly-mean ``sst``/``siconc`` through
``Normalizer.forcing``), and ints ``month``, ``month_next`` (1..12 of t and t + 1).
Both months of a pair lie in the period.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mdiff import variables as V
from mdiff.data import prepared as P
from mdiff.data.normalize import Normalizer
from mdiff.grid import LatLonGrid

log = logging.getLogger(__name__)



def _read_months(path: Path, grid: LatLonGrid, wanted: set) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(months, state (T, 37, H, W), sst+siconc (T, 2, H, W)) of the wanted months of one file."""
    ds = P.open_checked(path, grid)
    if "time" not in ds.coords:
        raise P.PreparedDataError(f"{path}: no 'time' coordinate; expected monthly prepared state")
    months = P.times_of(ds)
    keep = np.array([m in wanted for m in months.tolist()], dtype=bool)
    ds = ds.isel(time=np.flatnonzero(keep))
    state = P.dataset_to_channels(ds, V.STATE, source=str(path))
    # SST and sea ice are NaN over land by contract
    ocean = P.dataset_to_channels(ds, V.PREPARED_FORCING, source=str(path), allow_nan=True)
    return months[keep], state, ocean


def load_period(state_files: Sequence[str | Path], grid: LatLonGrid, first: str, last: str):
    """Months first..last from the state files, checked complete and contiguous."""
    wanted = P.month_range(first, last)
    wanted_set = set(wanted.tolist())
    found: dict = {}
    for path in state_files:
        months, state, ocean = _read_months(Path(path), grid, wanted_set)
        for i, month in enumerate(months.tolist()):
            if month in found:
                raise P.PreparedDataError(f"{path}: month {month} also in {found[month][0]}; expected each month once")
            found[month] = (path, state[i], ocean[i])
    missing = [m.strftime('%Y-%m') for m in wanted.tolist() if m not in found]
    if missing:
        raise P.PreparedDataError(
            f"prepared state files {[str(p) for p in state_files][:3]}...: months {missing[:6]}"
            f"{'...' if len(missing) > 6 else ''} of the period {first}..{last} are missing "
            f"(variable 'time'); expected every month of the period")
    state = np.stack([found[m][1] for m in wanted.tolist()])
    ocean = np.stack([found[m][2] for m in wanted.tolist()])
    return wanted, state, ocean


def load_statics(path: str | Path, grid: LatLonGrid, normalizer: Normalizer) -> torch.Tensor:
    """Standardised statics (5, H, W) from ``prepared/statics.nc``."""
    ds = P.open_checked(path, grid)
    statics = P.dataset_to_channels(ds, V.STATIC, source=str(path))
    try:
        return torch.from_numpy(normalizer.normalize(statics, V.STATIC_NAMES))
    except KeyError as err:
        raise P.PreparedDataError(f"normalisation statistics: {err}; expected entries for {V.STATIC_NAMES}") from None


class MonthPairDataset(torch.utils.data.Dataset):
    """Pairs (t, t + 1) with t, t + 1 in [first, last]: len = months - 1."""

    def __init__(self, state_files: Sequence[str | Path], normalizer: Normalizer, grid: LatLonGrid,
                 first: str, last: str):
        months, state, ocean = load_period(state_files, grid, first, last)
        if len(months) < 2:
            raise P.PreparedDataError(f"period {first}..{last} has {len(months)} month(s); expected at least 2")
        moy = P.month_of_year(months)
        try:
            self.state = torch.from_numpy(normalizer.normalize(state, V.STATE_NAMES, moy))
            self.forcing = torch.from_numpy(normalizer.forcing(ocean[:, 0], ocean[:, 1], months=moy))
        except KeyError as err:
            raise P.PreparedDataError(f"normalisation statistics: {err}") from None
        self.months = months
        self.month_of_year = torch.from_numpy(moy.astype(np.int64))
        self.period = (first, last)
        log.info("loaded %d months %s..%s (%d pairs, %.0f MB)", len(months), first, last, len(self),
                 (self.state.numel() + self.forcing.numel()) * 4 / 1e6)

    def __len__(self) -> int:
        return len(self.months) - 1

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return {
            "state": self.state[index], "state_next": self.state[index + 1],
            "forcing": self.forcing[index], "forcing_next": self.forcing[index + 1],
            "month": self.month_of_year[index], "month_next": self.month_of_year[index + 1],
        }

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Stack items (in memory, no worker processes needed)."""
        items = [self[int(i)] for i in indices]
        return {key: torch.stack([item[key] for item in items]) for key in items[0]}
