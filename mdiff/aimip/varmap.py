"""The declarative map from rollout variables to AI-MIP variables (``variables.yaml``).

Conversions are small named functions of numpy arrays; each input array carries the
units of ``mdiff.variables`` and the result carries the map's ``units``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import yaml

from mdiff import variables as V
from mdiff.aimip.tables import LEVEL_AXES, LEVEL_AXIS

MAP_FILE = Path(__file__).with_name("variables.yaml")

G0 = 9.80665  # standard gravity, m s-2 (WMO): geopotential height = geopotential / g0
# Saturation vapour pressure over water, Tetens form with Buck's (1981) constants as in
# the ECMWF IFS (Cy47r3, Part IV, eq. 7.5): e = a1 exp(a3 (Td - T0) / (Td - a4)).
SVP_A1_PA = 611.21
SVP_A3 = 17.502
SVP_A4_K = 32.19
SVP_T0_K = 273.16
EPSILON = 0.621981  # R_dry / R_vapour


def identity(x: np.ndarray) -> np.ndarray:
    return x


def geopotential_to_height(z: np.ndarray) -> np.ndarray:
    """Geopotential (m2 s-2) -> geopotential height (m)."""
    return z / G0


def specific_humidity_from_dewpoint(tdas: np.ndarray, ps: np.ndarray) -> np.ndarray:
    """2 m specific humidity (1) from 2 m dewpoint (K) and surface pressure (Pa).

    The vapour pressure is the saturation vapour pressure at the dewpoint,
    ``e = 611.21 Pa * exp(17.502 (Td - 273.16 K) / (Td - 32.19 K))``, and
    ``q = eps e / (p - (1 - eps) e)`` with ``eps = 0.621981``: the formula ECMWF gives
    for deriving specific humidity from ERA5's d2m and sp.
    """
    td = np.asarray(tdas, dtype=np.float64)
    p = np.asarray(ps, dtype=np.float64)
    e = SVP_A1_PA * np.exp(SVP_A3 * (td - SVP_T0_K) / (td - SVP_A4_K))
    return EPSILON * e / (p - (1.0 - EPSILON) * e)


CONVERSIONS: dict[str, Callable[..., np.ndarray]] = {
    f.__name__: f for f in (identity, geopotential_to_height, specific_humidity_from_dewpoint)
}


@dataclass(frozen=True)
class VarSpec:
    name: str  # AI-MIP variable (CMOR table entry)
    sources: tuple[str, ...]  # rollout variables
    conversion: str
    units: str
    level: str | None = None  # level axis of a single-level field (e.g. zg: plev1aimip)

    @property
    def level_axis(self) -> str | None:
        """CMOR level axis: ``level`` if given, the 7-level axis for pressure-level families,
        None for 2-D fields."""
        if self.level:
            return self.level
        return LEVEL_AXIS if self.sources[0] in V.PRESSURE_VARIABLES else None

    @property
    def has_plev(self) -> bool:
        """Written with a plev dimension (time, plev, lat, lon)."""
        return self.level_axis is not None

    @property
    def levels_pa(self) -> tuple[float, ...]:
        """The plev values (Pa) of the level axis; () for 2-D fields."""
        return LEVEL_AXES[self.level_axis] if self.level_axis else ()

    def convert(self, *arrays: np.ndarray) -> np.ndarray:
        return np.asarray(CONVERSIONS[self.conversion](*arrays), dtype=np.float32)


class VariableMapError(ValueError):
    user_facing = True


@cache
def load_variable_map(path: str | Path = MAP_FILE) -> dict[str, VarSpec]:
    """Parse and check the map: sources are rollout variables, conversions exist."""
    with open(path) as f:
        raw = yaml.safe_load(f)
    known = set(V.variables(V.STATE))
    out = {}
    for name, entry in raw.items():
        where = f"{path}: {name}"
        extra = set(entry) - {"from", "conversion", "units", "level"}
        if extra:
            raise VariableMapError(f"{where}: unknown key(s) {sorted(extra)}")
        sources = tuple(entry["from"])
        bad = [s for s in sources if s not in known]
        if bad:
            raise VariableMapError(f"{where}: {bad} are not rollout variables; known: {sorted(known)}")
        if entry["conversion"] not in CONVERSIONS:
            raise VariableMapError(f"{where}: conversion {entry['conversion']!r} unknown; "
                                   f"expected one of {sorted(CONVERSIONS)}")
        spec = VarSpec(name, sources, entry["conversion"], str(entry["units"]), entry.get("level"))
        if spec.level is not None and spec.level not in LEVEL_AXES:
            raise VariableMapError(f"{where}: level {spec.level!r} unknown; expected one of {sorted(LEVEL_AXES)}")
        if spec.conversion == "identity":
            src_units = source_units(sources[0])
            if src_units != spec.units:
                raise VariableMapError(f"{where}: identity map from {sources[0]} ({src_units}) "
                                       f"cannot produce units {spec.units!r}")
        out[name] = spec
    return out


def source_units(variable: str) -> str:
    """Units of a rollout variable, from the one table."""
    return next(c.units for c in V.STATE if c.variable == variable)
