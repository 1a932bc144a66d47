"""Derive the AI-MIP CMOR tables in ``mdiff/aimip/tables/`` from PCMDI's CMIP6 tables.

A maintainer tool, not part of the workflow: run it when the CMIP6 base tables change,
review the diff and commit the result. Nothing reads the CMIP6 tables at run time.

    mdiff derive-tables /path/to/cmip6-cmor-tables/Tables

What it changes is listed in ``mdiff/aimip/tables/README.md``. The configurable parts of
the vocabulary (institution_id, source_id) are left empty here and filled per run by
:func:`mdiff.aimip.tables.write_run_tables`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from mdiff.aimip.tables import LEVEL_AXES, LEVEL_AXIS, LICENSE_REGEX
from mdiff.aimip.varmap import load_variable_map
from mdiff.protocol import EXPERIMENT_TABLE

HERE = Path(__file__).parent / "tables"


def _load(base: Path, name: str) -> dict:
    with open(base / name) as f:
        return json.load(f)


def _dump(obj: dict, name: str) -> None:
    (HERE / name).write_text(json.dumps(obj, indent=4, sort_keys=False) + "\n")


def derive(base: Path) -> None:
    varmap = load_variable_map(check_table=False)  # the table being derived
    amon = _load(base, "CMIP6_Amon.json")
    out = {"Header": dict(amon["Header"], realm="atmos"), "variable_entry": {}}
    for name, spec in varmap.items():
        entry = copy.deepcopy(amon["variable_entry"][name])
        dims = entry["dimensions"].split()
        if "plev19" in dims:
            # ta/hus/ua/va on the 7 AI-MIP levels; zg on a one-level axis at 500 hPa.
            dims = [spec.level_axis if d == "plev19" else d for d in dims]
        entry["dimensions"] = " ".join(dims)
        out["variable_entry"][name] = entry
    _dump(out, "CMIP6_Amon.json")

    coords = _load(base, "CMIP6_coordinate.json")["axis_entry"]
    formula = _load(base, "CMIP6_formula_terms.json")["formula_entry"]
    # CMOR resolves every formula term's dimensions when it loads a table: keep those axes too.
    needed = {"longitude", "latitude", "time", "height2m", "height10m"}
    needed |= {d for entry in formula.values() for d in entry.get("dimensions", "").split()}
    axes = {k: coords[k] for k in coords if k in needed}
    for axis, levels in LEVEL_AXES.items():
        axes[axis] = dict(coords["plev8"], requested=[f"{p:.0f}." for p in levels])
    assert LEVEL_AXIS in axes
    _dump({"axis_entry": axes}, "CMIP6_coordinate.json")

    for name in ("CMIP6_formula_terms.json", "CMIP6_grids.json"):
        _dump(_load(base, name), name)

    cv = _load(base, "CMIP6_CV.json")
    c = cv["CV"]
    amip = c["experiment_id"]["amip"]
    c["activity_id"] = {"AIMIP": "AI Model Intercomparison Project"}
    c["institution_id"] = {}  # filled per run from the config
    c["source_id"] = {}  # filled per run from the config
    c["experiment_id"] = {
        e.name: dict(amip, activity_id=["AIMIP"], experiment=e.description, experiment_id=e.name,
                     additional_allowed_model_components=[])
        for e in EXPERIMENT_TABLE
    }
    c["license"] = [LICENSE_REGEX]
    c["version_metadata"]["note"] = "AI-MIP vocabulary derived by mdiff from the CMIP6 CV above"
    _dump(cv, "CMIP6_CV.json")
