"""The rollout file: its layout, the per-month guard, and the background writer."""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mdiff import variables as V
from mdiff.data import prepared as P
from mdiff.data.normalize import Normalizer
from mdiff.grid import LatLonGrid


class RolloutGuardError(ValueError):
    """A decoded month is not finite or not physical: the message names month, variable, member."""

    user_facing = True


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
        # the stepping thread hands each month's array over (a fresh one every month)
        values = self.normalizer.denormalize(state, V.STATE_NAMES, P.month_of_year(self.months[index]), overwrite=True)
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
