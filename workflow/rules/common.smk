# Shared definitions: the typed config, result paths and the settings passed to mdiff.
import json
import os

from mdiff import config as C
from mdiff import protocol as P
from mdiff.aimip import drs
from mdiff.aimip.varmap import load_variable_map

# Strict typed view of the (schema-validated) config: unknown keys and bad values fail here.
CFG = C.from_dict(C.Config, config, source="workflow config")
RESULTS = CFG.results
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"

YEARS = list(range(int(CFG.periods.run_start[:4]), int(CFG.periods.run_end[:4]) + 1))
PREPARED_STATE = expand(f"{RESULTS}/prepared/state/{{year}}.nc", year=YEARS)
PREPARED_FORCING = f"{RESULTS}/prepared/forcing.nc"
PREPARED_STATICS = f"{RESULTS}/prepared/statics.nc"
NORMALIZATION = f"{RESULTS}/stats/normalization.nc"
AIMIP_ROOT = f"{RESULTS}/aimip"
AIMIP_VARIABLES = list(load_variable_map())


def state_files(*periods):
    """Prepared state files of the years that the given [first, last] month periods touch:
    a stage depends only on the years it reads, so a data update reruns only what it must."""
    years = set()
    for first, last in periods:
        years.update(range(int(first[:4]), int(last[:4]) + 1))
    return [f"{RESULTS}/prepared/state/{year}.nc" for year in sorted(years) if year in YEARS]


def settings(*sections, drop=()):
    """JSON of the resolved config sections a stage depends on, passed as a params entry, so
    changing one of them reruns that rule and what depends on it, and nothing else.
    ``drop``: "section.key" entries the stage does not use (their defaults apply)."""
    out = {}
    for name in sections:
        value = getattr(CFG, name)
        out[name] = C.to_dict(value) if hasattr(value, "__dataclass_fields__") else value
    for entry in drop:
        section, key = entry.split(".")
        out[section].pop(key)
    return json.dumps(out, sort_keys=True)


def aimip_files(grid, experiment="{experiment}", member="{member}"):
    """The AI-MIP files of one member on one grid (wildcard patterns by default)."""
    return [
        f"{AIMIP_ROOT}/{f.relpath}"
        for f in drs.member_files(CFG.aimip, CFG.periods, AIMIP_VARIABLES, experiment, member, grid)
    ]


def rollout_file(experiment, first, last):
    """The rollout file of one experiment's member batch first..last."""
    return f"{RESULTS}/rollout/{experiment}/{P.batch_label(first, last)}.nc"


def cmorize_listing(grid, experiment="{experiment}", member="{member}"):
    suffix = "" if grid == "gn" else f"_{grid}"
    return f"{RESULTS}/cmorize/{experiment}/r{member}i1p1f1{suffix}.json"


# Targets of `all`; each rule file appends what it contributes.
ALL_TARGETS = []
