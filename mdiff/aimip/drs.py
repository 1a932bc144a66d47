"""AI-MIP folder and file names (the data reference syntax), computed without CMOR.

The workflow declares the exact files each cmorize job writes from these, and the
validator compares every file's folder and name with its global attributes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mdiff.aimip.tables import TABLE_ID
from mdiff.config import AimipConfig, PeriodsConfig

FREQUENCY = "mon"  # the frequency attribute; the folder level says the table (Amon)
GRID_LABELS = ("gn", "gr")  # native grid; 1-degree regridded (mdiff.aimip.regrid_gr)
# Beside the AI-MIP files, the submission root (<institution>/<source>/) holds a dataset
# card, the licence, the weights and a checksum manifest (mdiff.aimip.package).
PACKAGE_FILES = ("README.md", "LICENSE", "weights/checkpoint.pt", "weights/model_card.md",
                 "weights/loss_curve.png")
CHECKSUMS = "MANIFEST.sha256"
# <var>_<table>_<source_id>_<experiment_id>_<member>_<grid>_<YYYYMM>-<YYYYMM>.nc
FILENAME = re.compile(
    r"^(?P<variable_id>[A-Za-z0-9]+)_(?P<table_id>[A-Za-z0-9]+)_(?P<source_id>[A-Za-z0-9-]+)_"
    r"(?P<experiment_id>[A-Za-z0-9-]+)_(?P<variant_label>r\d+i\d+p\d+f\d+)_(?P<grid_label>g[a-z0-9]+)_"
    r"(?P<first>\d{6})-(?P<last>\d{6})\.nc$"
)


def variant_label(member: int | str) -> str:
    return f"r{member}i1p1f1"


def root_parts(aimip: AimipConfig) -> tuple[str, ...]:
    """Folder levels down to the submission root (the model's folder)."""
    head = ("institution_id", "source_id")
    return head if aimip.layout == "aimip" else ("mip_era", "activity_id", *head)


def folder_parts(aimip: AimipConfig) -> tuple[str, ...]:
    """Names of the folder levels, as global attribute names. Both layouts name the table
    (``Amon``) as the organisers' folders do (``.../r1i1p1f1/Amon/ta/gn/v20260101/``)."""
    return (*root_parts(aimip), "experiment_id", "variant_label", "table_id", "variable_id",
            "grid_label", "version")


def submission_root(aimip: AimipConfig) -> Path:
    """The model's folder under the tree root: the AI-MIP files plus PACKAGE_FILES."""
    a = attributes(aimip, "", "", 1)
    return Path(*(a[p] for p in root_parts(aimip)))


def cmor_path_template(aimip: AimipConfig) -> str:
    """CMOR's output_path_template for the layout (CMOR calls variant_label _member_id)."""
    names = {"variant_label": "_member_id", "table_id": "table"}
    return "".join(f"<{names.get(p, p)}>" for p in folder_parts(aimip))


@dataclass(frozen=True)
class SubmissionFile:
    variable: str
    experiment: str
    member: int | str
    relpath: Path  # under the aimip root
    grid: str = "gn"  # grid_label

    @property
    def name(self) -> str:
        return self.relpath.name


def attributes(aimip: AimipConfig, variable: str, experiment: str, member: int | str,
               grid: str = "gn") -> dict[str, str]:
    return {"mip_era": "CMIP6", "activity_id": "AIMIP", "institution_id": aimip.institution_id,
            "source_id": aimip.source_id, "experiment_id": experiment,
            "variant_label": variant_label(member), "frequency": FREQUENCY, "table_id": TABLE_ID,
            "variable_id": variable, "grid_label": grid, "version": aimip.version}


def submission_file(aimip: AimipConfig, periods: PeriodsConfig, variable: str, experiment: str,
                    member: int | str, grid: str = "gn") -> SubmissionFile:
    if grid not in GRID_LABELS:
        raise ValueError(f"grid label {grid!r}: expected one of {list(GRID_LABELS)}")
    a = attributes(aimip, variable, experiment, member, grid)
    span = f"{periods.run_start.replace('-', '')}-{periods.run_end.replace('-', '')}"
    name = f"{variable}_{TABLE_ID}_{aimip.source_id}_{experiment}_{a['variant_label']}_{grid}_{span}.nc"
    return SubmissionFile(variable, experiment, member,
                          Path(*(a[p] for p in folder_parts(aimip))) / name, grid)


def member_files(aimip: AimipConfig, periods: PeriodsConfig, variables, experiment: str,
                 member: int | str, grid: str = "gn") -> list[SubmissionFile]:
    return [submission_file(aimip, periods, v, experiment, member, grid) for v in variables]


def tree_root(path: str | Path, aimip: AimipConfig) -> str:
    """The root of the AI-MIP tree, from the path of one of its files."""
    return str(Path(path).parents[len(folder_parts(aimip))])
