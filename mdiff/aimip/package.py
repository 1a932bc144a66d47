"""`mdiff package`: the submission root beside the validated AI-MIP files.

The submission root is the model's folder of the tree (``<institution>/<source>/`` for
layout ``aimip``). Beside the experiments' folders it gets what groups publish with their
data (the protocol asks for documentation of training, tuning and selection, and open
weights):

- ``README.md``: a dataset card generated from the run (model, training data and
  periods, selection, experiments, members and seeds, grids, variables, validation,
  known limitations from the evaluation's perfect-model scores, how to cite);
- ``LICENSE``: the Creative Commons Attribution 4.0 International legal code;
- ``weights/``: the checkpoint, its model card and loss curve;
- ``MANIFEST.sha256``: the sha256 of every file of the root (``sha256sum -c`` format),
  written last; `mdiff submit` checks the upload against it.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from mdiff.aimip import drs
from mdiff.aimip.tables import LICENSE_ID, nominal_resolution, read_base
from mdiff.aimip.varmap import load_variable_map
from mdiff.config import Config
from mdiff.fileio import sha256_file
from mdiff.grid import ONE_DEGREE, LatLonGrid
from mdiff.protocol import SST_OFFSET_K, months

log = logging.getLogger("mdiff.aimip.package")
LICENSE_FILE = Path(__file__).with_name("cc-by-4.0.txt")
AIMIP_PAPER = "arXiv:2605.06944"
FORCING_DOI = "10.5281/zenodo.16782372 (version 2, record 17065758)"
# Perfect-model scores outside these ranges are listed as known limitations.
CORRELATION_MIN = 0.7  # pattern correlations
RATIO_RANGE = (0.7, 1.3)  # amplitude and variance ratios (1 = right)
TRUTH_GAP = 0.2  # an emulator correlation this far below the truth realisations' ceiling


class PackageError(ValueError):
    user_facing = True


def manifest_files(base: Path) -> list[Path]:
    """Every file of the submission root except the manifest itself, sorted."""
    return sorted(p for p in base.rglob("*") if p.is_file() and p.relative_to(base).as_posix() != drs.CHECKSUMS)


def write_checksums(base: Path) -> dict[str, str]:
    """Write ``MANIFEST.sha256`` (``<sha256>  <path>``, paths relative to ``base``)."""
    from mdiff.fileio import atomic_path

    sums = {p.relative_to(base).as_posix(): sha256_file(p) for p in manifest_files(base)}
    with atomic_path(base / drs.CHECKSUMS) as tmp:
        tmp.write_text("".join(f"{sha}  {rel}\n" for rel, sha in sums.items()))
    return sums


def read_checksums(path: str | Path) -> dict[str, str]:
    """{relative path: sha256} of a ``MANIFEST.sha256``; malformed lines are errors."""
    path = Path(path)
    if not path.exists():
        raise PackageError(f"{path}: no checksum manifest; run `snakemake package_submission` first")
    out = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        m = re.fullmatch(r"([0-9a-f]{64})  (\S.*)", line)
        if not m:
            raise PackageError(f"{path}:{i}: expected '<sha256>  <path>', got {line[:80]!r}")
        out[m[2]] = m[1]
    return out


# ------------------------------------------------------------------ the card's facts


def member_seeds(rollouts: list[Path]) -> dict[str, dict[int, int]]:
    """{experiment: {member: seed}} from the rollout files (attribute experiment_id,
    variables member and member_seed)."""
    import netCDF4

    out: dict[str, dict[int, int]] = {}
    for path in rollouts:
        with netCDF4.Dataset(path) as nc:
            nc.set_auto_mask(False)
            exp = str(getattr(nc, "experiment_id", "?"))
            members = [int(m) for m in nc.variables["member"][:]]
            seeds = ([int(s) for s in nc.variables["member_seed"][:]] if "member_seed" in nc.variables
                     else [None] * len(members))
        out.setdefault(exp, {}).update(zip(members, seeds, strict=True))
    return out


def model_card_facts(text: str) -> dict[str, str]:
    """The lines of the model card the dataset card quotes (None-safe: '' when absent)."""
    def line(prefix: str) -> str:
        m = re.search(rf"^- {re.escape(prefix)}\s*(.+?)$", text, flags=re.M)
        return m[1].strip().rstrip(".") if m else ""

    code = re.search(r"^- Code version: (.+?)(?:\n\s+(.+?))?$", text, flags=re.M)
    return {"parameters": line("Parameters:"), "selection": line("Selection rule:"),
            "chosen": line("Chosen epoch:").replace("**", ""), "time": line("Training time:"),
            "code": " ".join(g for g in (code.groups() if code else ()) if g).rstrip(".")}


def limitations(scores: dict) -> tuple[list[str], list[list[str]]]:
    """(flagged perfect-model scores as sentences, table rows of every perfect-model score)."""
    items = scores.get("scores", {})
    flagged, rows = [], []
    for name, item in items.items():
        if not name.startswith("perfect."):
            continue
        value = item.get("value")
        verdict = ""
        if value is None:
            verdict = "undefined"
        elif name.endswith("_truth"):
            verdict = "truth realisations (the ceiling)"
        elif "pattern_correlation" in name:
            ceiling = items.get(name.replace("_emulator", "_truth"), {}).get("value") \
                if name.endswith("_emulator") else None
            if value < CORRELATION_MIN:
                verdict = f"below {CORRELATION_MIN}"
            elif ceiling is not None and value < ceiling - TRUTH_GAP:
                verdict = f"{ceiling - value:.2f} below the truth realisations ({ceiling:.2f})"
        elif "ratio" in name:
            # an emulator amplitude is judged against the truth realisations' (both are
            # attenuated by noise in the index), any other ratio against 1
            ceiling = items.get(name.replace("_emulator", "_truth"), {}).get("value") \
                if name.endswith("_emulator") else None
            rel = value / ceiling if ceiling else value
            if not RATIO_RANGE[0] <= rel <= RATIO_RANGE[1]:
                verdict = (f"{rel:.2f} of the truth realisations' {ceiling:.2f}" if ceiling else
                           f"outside {RATIO_RANGE[0]}..{RATIO_RANGE[1]}")
        rows.append([f"`{name}`", "n/a" if value is None else f"{value:.3g}", item.get("units", ""),
                     verdict or "ok" if ("ratio" in name or "correlation" in name) else "-"])
        if verdict and verdict not in ("undefined", "truth realisations (the ceiling)"):
            flagged.append(f"`{name}` = {value:.3g} ({verdict}): {item.get('description', '')}")
    return flagged, rows


def _table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def dataset_card(cfg: Config, validation: dict, scores: dict, model_card: str, seeds: dict,
                 checkpoint_sha256: str) -> str:
    a, p = cfg.aimip, cfg.periods
    native = LatLonGrid(cfg.grid.nlat, cfg.grid.nlon)
    facts = model_card_facts(model_card)
    varmap = load_variable_map()
    table = read_base("CMIP6_Amon.json")["variable_entry"]
    n_months = len(months(p.run_start, p.run_end))
    synthetic = cfg.source == "synthetic"
    data = ("the embedded **synthetic ERA5-like world** of mdiff (a demonstration: these files are "
            "not a scientific AI-MIP submission)" if synthetic else
            "ERA5 monthly means (Copernicus Climate Change Service), regridded conservatively with CDO")
    forcing = ("the synthetic world's SST and sea ice" if synthetic else
               f"the AI-MIP SST and sea-ice forcing, Zenodo DOI {FORCING_DOI}, converted to monthly means")
    exp_rows = []
    for exp in cfg.rollout.experiments:
        members = seeds.get(exp, {})
        exp_rows.append([f"`{exp}`", f"+{SST_OFFSET_K[exp]:g} K", len(members) or cfg.rollout.members,
                         ", ".join(f"r{k}i1p1f1: {s}" for k, s in sorted(members.items())) or "not recorded"])
    grid_rows = [["`gn`", f"native equiangular grid with both poles, {native.nlat} x {native.nlon}, "
                          f"{native.resolution:g} degrees",
                  nominal_resolution(native.lat_bounds, native.lon_bounds)]]
    if "gr" in a.grids:
        grid_rows.append(["`gr`", f"regular 1 degree, {ONE_DEGREE.nlat} x {ONE_DEGREE.nlon}, cell centres at "
                                  "±0.5°; first-order conservative regridding of gn with CDO remapcon",
                          nominal_resolution(ONE_DEGREE.lat_bounds, ONE_DEGREE.lon_bounds)])
    var_rows = [[f"`{name}`", table[name]["standard_name"], table[name]["units"],
                 ", ".join(f"{lv / 100:g}" for lv in spec.levels_pa) + " hPa" if spec.has_plev else "-",
                 table[name]["cell_methods"]] for name, spec in varmap.items()]
    flagged, rows = limitations(scores)
    if flagged:
        limits = "\n".join(f"- {s}" for s in flagged)
    elif rows:
        limits = "- None of the perfect-model scores falls outside the thresholds below."
    else:
        limits = ("- No perfect-model scores (real data has no known truth): see the evaluation's E1–E5 "
                  "scores against ERA5.")
    perfect = (_table(["score", "value", "units", "verdict"], rows) if rows else "(none: real data)")
    spinup = (f" October–December 1978 is spin-up; the analysis period is 1979-01 .. {p.run_end}."
              if p.run_start == "1978-10" else "")
    runs = [seeds.get(exp) for exp in cfg.rollout.experiments]
    same = (" The warmed runs use the same member seeds as `aimip`."
            if len(runs) > 1 and all(r and r == runs[0] for r in runs) else "")
    return f"""# {a.source_id}: AI-MIP monthly output

{a.source}. Produced by {a.institution} (`{a.institution_id}`); contact: {a.contact}.
Data version `{a.version}`. Licence: {LICENSE_ID} (`LICENSE`).
{"" if not synthetic else chr(10) + "> **Demonstration data.** Trained and evaluated on a synthetic world, not ERA5." + chr(10)}
## Contents
| path | content |
|---|---|
| `<experiment>/r<N>i1p1f1/Amon/<variable>/<grid>/{a.version}/` | one NetCDF file per variable, member, experiment and grid (CMOR-written, CF-1.7 CMIP-6.2) |
| `weights/checkpoint.pt` | the model weights (EMA) with config, normalisation statistics and variable table; sha256 `{checkpoint_sha256}` |
| `weights/model_card.md`, `weights/loss_curve.png` | the model card: architecture, training, selection, losses |
| `LICENSE` | Creative Commons Attribution 4.0 International |
| `MANIFEST.sha256` | sha256 of every file here; check with `sha256sum -c MANIFEST.sha256` |

## Model
- Monthly latent-diffusion emulator (the Monthly Diffusion / MD-1.5 method): a spherical
  (SFNO-style) conditional VAE and a latent diffusion model trained jointly; one step is
  one month, conditioned on the month's SST and sea ice, the season and static fields.
- Parameters: {facts['parameters'] or 'see weights/model_card.md'}.
- Model config: `{cfg.model}`; code: {facts['code'] or 'see weights/model_card.md'}.

## Training data and periods
- Training data: {data}; model grid {native.nlat} x {native.nlon}.
- Training months {p.train[0]} .. {p.train[1]}; model selection on {p.validate[0]} .. {p.validate[1]};
  normalisation statistics {p.stats[0]} .. {p.stats[1]}. Nothing after 2014 was used for training,
  tuning or selection (AI-MIP rule); 2015–2024 is held out.
- Forcing: {forcing}.

## Model selection
- Rule: {facts['selection'] or 'see weights/model_card.md'}.
- Chosen epoch: {facts['chosen'] or 'see weights/model_card.md'}. Training time: {facts['time'] or '-'}.

## Experiments and members
Every run starts from the state of {p.run_start} and steps monthly to {p.run_end} ({n_months}
months).{spinup} All members start from the same state; they differ by the random generator of
the diffusion sampler, seeded per member from the base seed {cfg.rollout.seed}.{same}

{_table(["experiment", "SST", "members", "member seeds"], exp_rows)}

## Grids
{_table(["grid_label", "grid", "nominal_resolution"], grid_rows)}

## Variables (table `Amon`, monthly means, float32)
{_table(["variable", "standard_name", "units", "levels", "cell_methods"], var_rows)}

`zg` is geopotential height (m) on a `plev` dimension of length 1 (500 hPa); `pr` is a
time-mean rate; `huss` is derived from 2 m dewpoint and surface pressure.

## Validation
{"Passed" if validation.get("passed") else "FAILED"}: {validation.get("files", "?")} files checked with CMOR's PrePARE,
cfchecks, compliance-checker (CF-1.7) and mdiff's own checks (folders, file names, attributes,
levels in Pa, grid coordinates, every month with contiguous bounds); {len(validation.get("warnings", []))} warnings.

## Known limitations
{limits}
- A monthly model: no daily output (AI-MIP E4 cannot be computed).
- No time-varying CO2 or other radiative forcing: trends come from the SST only.

Perfect-model scores of the evaluation (`report/scores.json`; ratios: 1 is right,
correlations: 1 is right; thresholds: correlation ≥ {CORRELATION_MIN}, ratios within
{RATIO_RANGE[0]}..{RATIO_RANGE[1]} (emulator amplitudes: of the truth realisations' amplitude),
emulator within {TRUTH_GAP} of the truth realisations' correlation):

{perfect}

## How to cite
{a.institution} ({a.version[1:5]}): *{a.source_id} monthly output for AI-MIP*, version {a.version},
licensed {LICENSE_ID}. Please also cite the AI-MIP protocol paper ({AIMIP_PAPER}) and, for
the forcing, Zenodo DOI {FORCING_DOI}.
"""


# ------------------------------------------------------------------------ package


def copy_atomic(src: Path, dst: Path) -> None:
    from mdiff.fileio import atomic_path

    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def package(cfg: Config, root: str | Path, report: str | Path, checkpoint: str | Path, model_card: str | Path,
            loss_curve: str | Path, scores: str | Path, rollouts: list[str | Path]) -> Path:
    """Write the submission root's files; return the manifest's path."""
    from mdiff.fileio import atomic_path

    root = Path(root)
    validation = json.loads(Path(report).read_text())
    if not validation.get("passed"):
        raise PackageError(f"{report}: validation did not pass ({len(validation.get('errors', []))} errors); "
                           "no submission root written")
    base = root / drs.submission_root(cfg.aimip)
    if not base.is_dir():
        raise PackageError(f"{base}: submission root does not exist (is {root} the AI-MIP tree?)")
    for path in (checkpoint, model_card, loss_curve, scores, *rollouts):
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: input of the submission root does not exist")
    stale = base / drs.CHECKSUMS
    stale.unlink(missing_ok=True)  # a manifest exists only for a complete root
    weights = base / "weights"
    copy_atomic(Path(checkpoint), weights / "checkpoint.pt")
    copy_atomic(Path(model_card), weights / "model_card.md")
    copy_atomic(Path(loss_curve), weights / "loss_curve.png")
    copy_atomic(LICENSE_FILE, base / "LICENSE")
    card = dataset_card(cfg, validation, json.loads(Path(scores).read_text()), Path(model_card).read_text(),
                        member_seeds([Path(r) for r in rollouts]), sha256_file(weights / "checkpoint.pt"))
    with atomic_path(base / "README.md") as tmp:
        tmp.write_text(card)
    extra = {p.relative_to(base).as_posix() for p in manifest_files(base)} - \
        {n for n in drs.PACKAGE_FILES} - {str(f.relpath.relative_to(drs.submission_root(cfg.aimip)))
                                          for f in _tree(cfg)}
    if extra:
        raise PackageError(f"{base}: unexpected file(s) {sorted(extra)[:5]} in the submission root "
                           "(they would be uploaded); remove them")
    sums = write_checksums(base)
    log.info("submission root %s: %d files in %s", base, len(sums), drs.CHECKSUMS)
    return base / drs.CHECKSUMS


def _tree(cfg: Config):
    varmap = load_variable_map()
    return [f for g in cfg.aimip.grids for e in cfg.rollout.experiments for k in range(1, cfg.rollout.members + 1)
            for f in drs.member_files(cfg.aimip, cfg.periods, varmap, e, k, g)]
