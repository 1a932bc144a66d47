"""The map from rollout variables to AI-MIP variables, derived from the variable table
(``Channel.cmip`` of mdiff.variables): one entry per CMIP variable, written by one generic
writer (mdiff.aimip.cmorize).

Conversions are small named functions of numpy arrays; each input array carries the
units of ``mdiff.variables`` and the result carries the CMIP variable's ``units``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mdiff import variables as V
from mdiff.aimip.tables import LEVEL_AXES, LEVEL_AXIS, single_level_axis, table_units
from mdiff.protocol import G0

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
    level_axis: str | None = None  # CMOR level axis; None for 2-D fields

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


def _spec(ch: V.Channel, check_table: bool) -> VarSpec:
    """The AI-MIP variable of ``ch``'s rollout variable (``check_table``: its units checked
    against the committed CMOR table)."""
    cmip = ch.cmip
    where = f"mdiff.variables: channel {ch.name} (CMIP {cmip.name})"
    known = set(V.variables(V.STATE))
    sources = (ch.variable, *cmip.also_from)
    bad = [s for s in sources if s not in known]
    if bad:
        raise VariableMapError(f"{where}: {bad} are not rollout variables; known: {sorted(known)}")
    if cmip.conversion not in CONVERSIONS:
        raise VariableMapError(f"{where}: conversion {cmip.conversion!r} unknown; expected one of "
                               f"{sorted(CONVERSIONS)} (mdiff.aimip.varmap)")
    units = cmip.units or ch.units
    if cmip.conversion == "identity" and units != ch.units:
        raise VariableMapError(f"{where}: identity map from {ch.variable} ({ch.units}) cannot produce units {units!r}")
    if check_table:
        try:
            expected = table_units(cmip.name)
        except KeyError:
            raise VariableMapError(f"{where}: no entry {cmip.name!r} in the AI-MIP CMOR table; add it "
                                   "(mdiff/aimip/derive_tables.py; docs/variables.md)") from None
        if units != expected:
            raise VariableMapError(f"{where}: units {units!r}, but the CMOR table says {expected!r}")
    if ch.variable in V.PRESSURE_VARIABLES:
        axis = LEVEL_AXIS
    elif ch.level_hpa is not None:  # one level (zg at 500 hPa): a plev dimension of length 1
        axis = single_level_axis(ch.level_hpa)
    else:
        axis = None
    return VarSpec(cmip.name, sources, cmip.conversion, units, axis)


def load_variable_map(check_table: bool = True) -> dict[str, VarSpec]:
    """{AI-MIP variable: how it is made}, in table order, for every state channel with a CMIP
    variable (a pressure family's channels share one). ``check_table``: each must have the
    CMOR table's units (off only while deriving the tables)."""
    out: dict[str, VarSpec] = {}
    for ch in V.STATE:
        if ch.cmip is not None and ch.cmip.name not in out:
            out[ch.cmip.name] = _spec(ch, check_table)
    return out


def source_units(variable: str) -> str:
    """Units of a rollout variable, from the one table."""
    return next(c.units for c in V.STATE if c.variable == variable)
