"""A fake state variable added the way docs/variables.md says: one table line (the channel),
its synthetic generator and its CMOR table entry, and nothing else. `test_fake_channel`
installs it in the test process; the CMOR step runs this file in the CMOR interpreter:

    .venv-cmor/bin/python tests/fake_channel.py TABLES_DIR <mdiff arguments>
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from mdiff import variables as V
from mdiff.aimip import tables

# The table line: a 2-D field in K that AI-MIP receives as it is (identity conversion).
FAKE = V.Channel("tfake", "tfake", None, "K", "air_temperature", "Fake near-surface temperature", "state", "none",
                 "", "", "", "conservative_normalised", V.TEMPERATURE_RANGE_K, V.CmipVariable("tfake"))


def generate(world, fields: dict, months: slice):
    """Its synthetic generator: 1 K above the 2 m temperature."""
    return fields["tas"] + 1.0


def extend_table(set_attribute: Callable = setattr) -> None:
    """The variable table with FAKE as its last state channel (every derived name too)."""
    for name, value in V.derived(V.STATE + (FAKE,), V.FORCING, V.STATIC).items():
        set_attribute(V, name, value)


def write_tables(dest: Path) -> Path:
    """A copy of the AI-MIP CMOR tables with FAKE's Amon entry (shaped like ts's)."""
    shutil.copytree(tables.BASE, dest)
    path = dest / "CMIP6_Amon.json"
    amon = json.loads(path.read_text())
    amon["variable_entry"][FAKE.name] = dict(amon["variable_entry"]["ts"], out_name=FAKE.name,
                                             standard_name=FAKE.standard_name, long_name=FAKE.long_name,
                                             comment="a test's fake variable")
    path.write_text(json.dumps(amon, indent=4))
    return dest


def use_tables(dest: Path, set_attribute: Callable = setattr) -> None:
    set_attribute(tables, "BASE", Path(dest))


if __name__ == "__main__":
    extend_table()
    use_tables(Path(sys.argv[1]))
    from mdiff.cli import main

    sys.exit(main(sys.argv[2:]))
