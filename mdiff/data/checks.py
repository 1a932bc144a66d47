"""Checks of data where they enter mdiff: preparation, statistics, rollout inputs.

Every check raises ``PreparedDataError`` with one line that names the file, the variable
(and channel), the offending value, where it is (time, lat, lon) and what was expected, so
bad data stop the stage that reads them instead of surfacing later as a strange error in
another stage (a bare 1e20 fill value in SST making the statistics' SST mean 8e18, and
the rollout then blaming ``ta1000``).

- ``check_plausible``: every value within its channel's ``plausible_range`` (the one table
  of variables, ``mdiff.variables``); NaN is left to the NaN rules below.
- ``check_open_ocean``: SST and sea ice may be undefined (NaN) over land only: a NaN where
  the land fraction is 0 is an error.
- ``check_months``: every month of a period present exactly once across the year files.
- ``check_state_files``: all of the above for prepared state files (``mdiff stats``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from mdiff import variables as V
from mdiff.grid import LatLonGrid

from . import prepared as P
from .prepared import PreparedDataError

# SST may be undefined only where some land is: a NaN in a cell without land is bad data.
OPEN_OCEAN_LSM = 1e-6


# ----------------------------------------------------------------------------- helpers


def _place(index: Sequence[int], times, lat, lon) -> str:
    """'time 1979-03, lat -77.5, lon 160' for an index (t, j, i) or (j, i)."""
    parts = []
    if len(index) == 3:
        t = int(index[0])
        parts.append(f"time {np.datetime64(times[t], 'M')}" if times is not None else f"time index {t}")
    j, i = int(index[-2]), int(index[-1])
    parts.append(f"lat {float(lat[j]):g}" if lat is not None else f"lat index {j}")
    parts.append(f"lon {float(lon[i]):g}" if lon is not None else f"lon index {i}")
    return ", ".join(parts)


def _hint(ch: V.Channel, value: float) -> str:
    """A likely cause of an implausible value, or ''."""
    lo, hi = ch.plausible_range
    if not np.isfinite(value) or abs(value) >= 1e15:
        return " (a fill value without a _FillValue or missing_value attribute?)"
    if ch.units == "K" and -100.0 < value < 100.0:
        return " (degrees Celsius labelled K?)"
    if ch.units == "Pa" and 100.0 < value < 1200.0:
        return " (hPa labelled Pa?)"
    if ch.units == "1" and hi <= 1.0 and 1.0 < value <= 100.0:
        return " (percent labelled 1?)"
    if ch.variable == "hus" and hi < value < 50.0:
        return " (g/kg labelled kg kg-1?)"
    if ch.variable == "pr" and value > hi:
        return " (mm/day or mm/month labelled kg m-2 s-1?)"
    if ch.variable == "z500" and 1e3 < value < lo:
        return " (geopotential height in m labelled m2 s-2? expected geopotential)"
    return ""


def check_plausible(values: np.ndarray, channels: Sequence[V.Channel], where: str, *, times=None,
                    lat=None, lon=None, slack: float = 0.0) -> None:
    """Raise if a value of ``values`` ((T,) C, H, W) lies outside its channel's plausible range.

    NaN is ignored here (whether NaN is allowed is another rule); +-Inf is outside.
    ``slack``: tolerance as a fraction of the range's width (interpolation overshoot).
    """
    values = np.asarray(values)
    if values.shape[-3] != len(channels):
        raise ValueError(f"{values.shape[-3]} channels of values, {len(channels)} channels given")
    for c, ch in enumerate(channels):
        lo, hi = ch.plausible_range
        tol = slack * (hi - lo)
        x = values[..., c, :, :]
        with np.errstate(invalid="ignore"):
            # NaN compares False: only real values (and Inf) can fail
            outside = (x < lo - tol) | (x > hi + tol)
        if not outside.any():
            continue
        first = tuple(int(i) for i in np.argwhere(outside)[0])
        value = float(x[first])
        raise PreparedDataError(
            f"{where}: variable {ch.variable!r} (channel {ch.name}) has value {value:.6g} {ch.units} at "
            f"{_place(first, times, lat, lon)} ({int(outside.sum())} of {x.size} values outside); expected "
            f"a plausible monthly mean in [{lo:g}, {hi:g}] {ch.units}{_hint(ch, value)}")


def check_open_ocean(sst: np.ndarray, siconc: np.ndarray | None, lsm: np.ndarray, where: str,
                     lsm_source: str, *, times=None, lat=None, lon=None) -> None:
    """Raise if SST (or sea ice) is NaN where the land fraction ``lsm`` (H, W) is 0 (open ocean)."""
    ocean = lsm <= OPEN_OCEAN_LSM
    for name, x in (("sst", sst), ("siconc", siconc)):
        if x is None:
            continue
        bad = ~np.isfinite(x) & ocean
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise PreparedDataError(
                f"{where}: variable {name!r} is NaN at {_place(first, times, lat, lon)} ({int(bad.sum())} "
                f"value(s)) where the land fraction of {lsm_source} is 0 (open ocean); expected {name} "
                f"defined over all ocean (NaN over land only)")


def check_months(found: dict[str, np.ndarray], period: Sequence[str], what: str) -> None:
    """Every month of ``period`` exactly once in the files ``found`` (path -> months held)."""
    wanted = P.month_range(*period)
    where: dict = {}
    for path, months in found.items():
        for m in np.asarray(months).astype("datetime64[M]").tolist():
            if m in where:
                raise PreparedDataError(f"{path}: variable 'time' holds month {m:%Y-%m}, also held by {where[m]}; "
                                        f"expected each month in one file once")
            where[m] = path
    missing = [m for m in wanted.tolist() if m not in where]
    if not missing:
        return
    first = missing[0]
    same_year = sorted({p for m, p in where.items() if m.year == first.year})
    holder = same_year[0] if same_year else f"state files {sorted(found)[:3]}"
    raise PreparedDataError(
        f"{holder}: variable 'time' lacks month {first:%Y-%m} of the {what} {period[0]}..{period[1]} "
        f"({len(missing)} month(s) missing); expected every month of the period")


def land_fraction(statics: str | Path, grid: LatLonGrid) -> np.ndarray:
    """The land fraction (H, W) of a prepared statics file, checked."""
    ds = P.open_checked(statics, grid)
    x = P.dataset_to_channels(ds, V.STATIC, str(statics))
    check_plausible(x, V.STATIC, str(statics), lat=grid.lat, lon=grid.lon)
    return x[V.STATIC_NAMES.index("lsm")].astype(np.float64)


def check_state_dataset(ds, where: str, grid: LatLonGrid, lsm: np.ndarray | None = None,
                        lsm_source: str = "the statics") -> None:
    """A prepared state dataset: plausible values, SST/sea ice defined over open ocean."""
    times = P.times_of(ds) if "time" in ds.coords else None
    state = P.dataset_to_channels(ds, V.STATE, where)
    check_plausible(state, V.STATE, where, times=times, lat=grid.lat, lon=grid.lon)
    check_forcing_dataset(ds, where, grid, lsm, lsm_source)


def check_forcing_dataset(ds, where: str, grid: LatLonGrid, lsm: np.ndarray | None = None,
                          lsm_source: str = "the statics") -> np.ndarray:
    """SST and sea ice of a prepared dataset, checked; returns them (T, 2, H, W), NaN over land."""
    times = P.times_of(ds) if "time" in ds.coords else None
    x = P.dataset_to_channels(ds, V.PREPARED_FORCING, where, allow_nan=True)
    check_plausible(x, V.PREPARED_FORCING, where, times=times, lat=grid.lat, lon=grid.lon)
    if lsm is not None:
        check_open_ocean(x[..., 0, :, :], x[..., 1, :, :], lsm, where, lsm_source, times=times,
                         lat=grid.lat, lon=grid.lon)
    return x


def check_state_files(state_files: Iterable[str | Path], grid: LatLonGrid, period: Sequence[str],
                      statics: str | Path, what: str = "statistics period") -> None:
    """Prepared state files that feed a stage over ``period``: every month of the period once;
    in the period's months every value plausible, SST and sea ice defined over open ocean
    (land fraction of ``statics``)."""
    lsm = land_fraction(statics, grid)
    first, last = (P.parse_month(m) for m in period)
    found = {}
    for path in sorted(map(str, state_files)):
        ds = P.open_checked(path, grid)
        if "time" not in ds.coords:
            raise PreparedDataError(f"{path}: no coordinate 'time'; expected monthly prepared state")
        months = P.times_of(ds)
        found[path] = months
        inside = np.flatnonzero((months >= first) & (months <= last))
        if inside.size:  # only the months the stage reads
            check_state_dataset(ds.isel(time=inside), path, grid, lsm, str(statics))
        ds.close()
    check_months(found, period, what)


def read_json(path: str | Path, what: str, required: Sequence[str] = ()) -> dict:
    """A JSON file that a stage reads (e.g. the normalisation statistics), checked readable."""
    path = Path(path)
    if not path.exists():
        raise PreparedDataError(f"{path}: {what} file does not exist")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PreparedDataError(f"{path}: cannot be read as the {what} ({type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else 'empty'}); truncated or corrupt? "
                                f"expected the JSON written by mdiff") from None
    if not isinstance(data, dict):
        raise PreparedDataError(f"{path}: the {what} is a JSON {type(data).__name__}; expected an object")
    missing = [k for k in required if k not in data]
    if missing:
        raise PreparedDataError(f"{path}: the {what} lacks key(s) {missing}; expected {list(required)}")
    return data


def read_statistics(path: str | Path, mode: str = "global"):
    """The normalisation statistics of ``mdiff stats`` as a ``Normalizer`` (``mode``: the model's
    normalisation), with a one-line error naming the file when it is missing, truncated or
    malformed."""
    from .normalize import Normalizer

    if not Path(path).exists():
        raise PreparedDataError(f"{path}: normalisation statistics file does not exist; run `mdiff stats`")
    try:
        return Normalizer.load(path, mode)
    except PreparedDataError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, json.JSONDecodeError) as err:
        raise PreparedDataError(f"{path}: normalisation statistics malformed ({type(err).__name__}: {err}); "
                                "expected the file written by `mdiff stats`") from None
