"""The AI-MIP CMOR tables: the committed base (``tables/``) plus the per-run vocabulary.

The base tables are derived from PCMDI's CMIP6 tables (see ``tables/README.md``). The
institution and source are configurable, so each job writes a complete table folder
(base + those CV entries) into a folder of its own with :func:`write_run_tables`.
"""

from __future__ import annotations

import json
import shutil
from functools import cache
from pathlib import Path

import numpy as np

from mdiff import variables as V
from mdiff.config import AimipConfig

BASE = Path(__file__).with_name("tables")
TABLE_ID = "Amon"
TABLE_FILES = ("CMIP6_CV.json", "CMIP6_coordinate.json", "CMIP6_Amon.json",
               "CMIP6_formula_terms.json", "CMIP6_grids.json")
LEVEL_AXIS = "plev7aimip"  # the 7 AI-MIP levels (CMIP6 plev8 without 10 hPa)
AIMIP_LEVELS_PA = tuple(float(p) * 100.0 for p in V.PRESSURE_LEVELS_HPA)
# zg at 500 hPa on a plev *dimension* of length 1 (not CMIP6's scalar p500): the
# organisers' loader selects plev=[50000.] along a plev dimension on every 3-D variable.
LEVEL_AXIS_500 = "plev1aimip"
LEVEL_AXES = {LEVEL_AXIS: AIMIP_LEVELS_PA, LEVEL_AXIS_500: (50000.0,)}  # axis -> levels (Pa)
SINGLE_LEVEL_AXES = {500: LEVEL_AXIS_500}  # hPa -> the axis of a field written at that level only
LICENSE_ID = "CC BY 4.0"
# The CV checks the licence with POSIX *basic* regular expressions: "(" is a literal.
LICENSE_REGEX = (
    "^AI-MIP model data produced by .* is licensed under a Creative Commons Attribution 4\\.0 "
    "International License (CC BY 4\\.0; https://creativecommons\\.org/licenses/by/4\\.0/)\\..*$"
)
EARTH_RADIUS_KM = 6371.0
# CMIP6 nominal_resolution: (upper bound of the mean maximum cell-vertex distance, label).
_NOMINAL = ((0.72, "0.5 km"), (1.6, "1 km"), (3.6, "2.5 km"), (7.2, "5 km"), (16, "10 km"),
            (36, "25 km"), (72, "50 km"), (160, "100 km"), (360, "250 km"), (720, "500 km"),
            (1600, "1000 km"), (3600, "2500 km"), (7200, "5000 km"), (float("inf"), "10000 km"))


def license_text(aimip: AimipConfig) -> str:
    return (f"AI-MIP model data produced by {aimip.institution} is licensed under a Creative "
            f"Commons Attribution 4.0 International License ({LICENSE_ID}; "
            "https://creativecommons.org/licenses/by/4.0/). The data producers and data providers "
            "make no warranty, either express or implied, including, but not limited to, "
            "warranties of merchantability and fitness for a particular purpose.")


def _great_circle_km(lat1, lon1, lat2, lon2):
    p1, p2, dl = np.deg2rad(lat1), np.deg2rad(lat2), np.deg2rad(lon2 - lon1)
    h = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def mean_max_vertex_distance_km(lat_bounds: np.ndarray, lon_bounds: np.ndarray) -> float:
    """CMIP6 rule: the mean over all cells of the largest distance between two vertices."""
    la = np.asarray(lat_bounds, dtype=np.float64)[:, None, :]  # (lat, 1, 2)
    lo = np.asarray(lon_bounds, dtype=np.float64)[None, :, :]  # (1, lon, 2)
    shape = (la.shape[0], lo.shape[1])
    vertices = [(np.broadcast_to(la[..., i], shape), np.broadcast_to(lo[..., j], shape))
                for i in (0, 1) for j in (0, 1)]
    dmax = np.zeros(shape)
    for a in range(4):
        for b in range(a + 1, 4):
            dmax = np.maximum(dmax, _great_circle_km(*vertices[a], *vertices[b]))
    return float(dmax.mean())


def nominal_resolution(lat_bounds: np.ndarray, lon_bounds: np.ndarray) -> str:
    """The CMIP6 nominal_resolution label of a grid (1.5 degrees -> "250 km")."""
    d = mean_max_vertex_distance_km(lat_bounds, lon_bounds)
    return next(label for upper, label in _NOMINAL if d < upper)


def read_base(name: str) -> dict:
    with open(BASE / name) as f:
        return json.load(f)


def run_cv(aimip: AimipConfig) -> dict:
    """The CV with this run's institution and source registered."""
    cv = read_base("CMIP6_CV.json")
    c = cv["CV"]
    c["institution_id"] = {aimip.institution_id: aimip.institution}
    c["source_id"] = {aimip.source_id: {
        "activity_participation": ["AIMIP"],
        "cohort": ["Registered"],
        "institution_id": [aimip.institution_id],
        "license_info": {"id": LICENSE_ID, "url": "https://creativecommons.org/licenses/by/4.0/",
                         "license": "Creative Commons Attribution 4.0 International (CC BY 4.0; "
                                    "https://creativecommons.org/licenses/by/4.0/)",
                         "exceptions_contact": "", "history": "", "source_specific_info": ""},
        "source_id": aimip.source_id,
        "source": aimip.source,
    }}
    return cv


def write_run_tables(aimip: AimipConfig, dest: str | Path) -> Path:
    """A complete table folder for this run (CMOR and PrePARE read the same one)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in TABLE_FILES:
        if name != "CMIP6_CV.json":
            shutil.copyfile(BASE / name, dest / name)
    (dest / "CMIP6_CV.json").write_text(json.dumps(run_cv(aimip), indent=1))
    return dest


def single_level_axis(level_hpa: int) -> str:
    """The CMOR axis of a field written at one pressure level only (zg at 500 hPa)."""
    try:
        return SINGLE_LEVEL_AXES[level_hpa]
    except KeyError:
        raise KeyError(f"no single-level axis at {level_hpa} hPa in the AI-MIP tables; expected one of "
                       f"{sorted(SINGLE_LEVEL_AXES)} hPa (add one: mdiff/aimip/derive_tables.py)") from None


@cache
def _variable_entries(base: Path) -> dict:
    with open(base / f"CMIP6_{TABLE_ID}.json") as f:
        return json.load(f)["variable_entry"]


def table_units(variable: str) -> str:
    """Units of a variable of the AI-MIP table (KeyError: the table has no such entry)."""
    return _variable_entries(BASE)[variable]["units"]
