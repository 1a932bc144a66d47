"""`mdiff validate`: check every file of the AI-MIP tree and write a report.

Four checkers, run concurrently (each over all files):
  - ``prepare``: CMOR's PrePARE against the run's tables (in the CMOR interpreter; we
    count the files it scanned, because it exits 0 when it finds none);
  - ``cfchecks``: cfchecker with offline tables (no downloads);
  - ``compliance``: ``compliance-checker --test cf:1.7`` (high-priority failures are errors);
  - ``aimip``: our own checks of what the tools do not check (folder == file name ==
    attributes, float32, plev values in Pa, units, the run's months with contiguous
    bounds, no NaN except declared missing values, the expected set of files).
Writes ``report.json`` and ``report.md``; exits 1 on any error, naming file and check.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mdiff import protocol
from mdiff.aimip import drs
from mdiff.aimip.cmor_env import PREPARE_CODE, cmor_python
from mdiff.aimip.tables import BASE, read_base, write_run_tables
from mdiff.aimip.varmap import load_variable_map
from mdiff.config import Config
from mdiff.grid import ONE_DEGREE, LatLonGrid, RegularGrid

log = logging.getLogger("mdiff.aimip.validate")
CHUNK = 100  # files per checker process (keeps command lines short)


@dataclass
class Finding:
    file: str  # path relative to the tree root
    check: str  # prepare | cfchecks | compliance | aimip:<what>
    message: str
    level: str = "error"


# --------------------------------------------------------------------- own checks


def grid_of(label: str, cfg: Config) -> LatLonGrid | RegularGrid:
    """The horizontal grid of a grid label: the model's (gn) or the 1-degree one (gr)."""
    return LatLonGrid(cfg.grid.nlat, cfg.grid.nlon) if label == "gn" else ONE_DEGREE


def check_file(path: Path, root: Path, cfg: Config) -> list[Finding]:
    """The AI-MIP checks groups ran before upload, on one file."""
    import cftime
    import netCDF4

    rel = str(path.relative_to(root))
    out: list[Finding] = []

    def err(what: str, msg: str, level: str = "error") -> None:
        out.append(Finding(rel, f"aimip:{what}", msg, level))

    m = drs.FILENAME.match(path.name)
    if not m:
        err("filename", "name does not follow <var>_Amon_<source>_<experiment>_<member>_<grid>_<YYYYMM>-<YYYYMM>.nc")
        return out
    try:
        nc = netCDF4.Dataset(path)
    except OSError as e:
        err("readable", f"cannot be read as NetCDF ({e})")
        return out
    with nc:
        nc.set_auto_mask(False)
        attrs = {k: str(nc.getncattr(k)) for k in nc.ncattrs()}
        # Folder parts == file name parts == global attributes.
        levels = drs.folder_parts(cfg.aimip)
        folders = Path(rel).parent.parts
        if len(folders) != len(levels):
            err("folders", f"folder depth {len(folders)} ({'/'.join(folders)}); expected {len(levels)}: "
                           f"{'/'.join('<' + p + '>' for p in levels)}")
        else:
            for name, part in zip(levels, folders, strict=True):
                if attrs.get(name) != part:
                    err("folders", f"folder <{name}> is {part!r} but the file's {name} attribute is {attrs.get(name)!r}")
        for name in ("variable_id", "table_id", "source_id", "experiment_id", "variant_label", "grid_label"):
            if attrs.get(name) != m[name]:
                err("filename", f"file name part <{name}> is {m[name]!r} but the attribute is {attrs.get(name)!r}")
        # Identity and vocabulary.
        label = m["grid_label"]
        if label not in cfg.aimip.grids:
            err("attributes", f"grid label {label!r} is not in aimip.grids {cfg.aimip.grids}")
            return out
        expected = {"activity_id": "AIMIP", "institution_id": cfg.aimip.institution_id,
                    "source_id": cfg.aimip.source_id, "table_id": "Amon", "frequency": drs.FREQUENCY,
                    "grid_label": label, "version": cfg.aimip.version, "mip_era": "CMIP6"}
        for name, want in expected.items():
            if attrs.get(name) != want:
                err("attributes", f"global attribute {name} = {attrs.get(name)!r}; expected {want!r}")
        experiments = sorted(read_base("CMIP6_CV.json")["CV"]["experiment_id"])
        if attrs.get("experiment_id") not in experiments:
            err("experiment_id", f"experiment_id {attrs.get('experiment_id')!r} is not an AI-MIP experiment "
                                 f"{experiments}")
        elif attrs.get("experiment_id") not in cfg.rollout.experiments:
            err("experiment_id", f"experiment_id {attrs['experiment_id']!r} is not in rollout.experiments")
        if "CC BY 4.0" not in attrs.get("license", ""):
            err("license", f"license does not name CC BY 4.0: {attrs.get('license', '')[:80]!r}")
        grid = grid_of(label, cfg)
        from mdiff.aimip.tables import nominal_resolution

        nominal = nominal_resolution(grid.lat_bounds, grid.lon_bounds)
        if attrs.get("nominal_resolution") != nominal:
            err("attributes", f"nominal_resolution {attrs.get('nominal_resolution')!r}; expected {nominal!r} "
                              f"for the {grid.nlat}x{grid.nlon} grid")
        # Coordinates (PrePARE does not check values): the grid of the label, with its bounds.
        for axis, bounds, want, want_bounds in (("lat", "lat_bnds", grid.lat, grid.lat_bounds),
                                                ("lon", "lon_bnds", grid.lon, grid.lon_bounds)):
            if axis not in nc.variables or bounds not in nc.variables:
                err("grid", f"{axis} or {bounds} missing")
                continue
            got = np.asarray(nc.variables[axis][:], dtype=np.float64)
            got_b = np.asarray(nc.variables[bounds][:], dtype=np.float64)
            if got.shape != want.shape or not np.allclose(got, want, atol=1e-6) or \
                    got_b.shape != want_bounds.shape or not np.allclose(got_b, want_bounds, atol=1e-6):
                err("grid", f"{axis} ({got.size} values {got[:1].tolist()}..{got[-1:].tolist()}) or its bounds "
                            f"differ from the {label} grid ({want.size} values {want[0]:g}..{want[-1]:g})")
        # The variable.
        varmap = load_variable_map()
        name = m["variable_id"]
        if name not in varmap:
            err("variable", f"{name!r} is not an AI-MIP variable {sorted(varmap)}")
            return out
        if name not in nc.variables:
            err("variable", f"variable {name!r} missing; found {sorted(nc.variables)}")
            return out
        var = nc.variables[name]
        spec = varmap[name]
        if var.dtype != np.float32:
            err("float32", f"{name} is {var.dtype}; expected float32")
        if getattr(var, "units", None) != spec.units:
            err("units", f"{name} has units {getattr(var, 'units', None)!r}; expected {spec.units!r}")
        std = read_base("CMIP6_Amon.json")["variable_entry"][name]["standard_name"]
        if getattr(var, "standard_name", None) != std:
            err("standard_name", f"{name} has standard_name {getattr(var, 'standard_name', None)!r}; expected {std!r}")
        want_dims = ("time", "plev", "lat", "lon") if spec.has_plev else ("time", "lat", "lon")
        if var.dimensions != want_dims:
            err("dimensions", f"{name} has dimensions {var.dimensions}; expected {want_dims}")
        # Pressure levels: a plev dimension in Pa, exactly the 7 AI-MIP levels (zg: [50000.]).
        want_plev = list(spec.levels_pa)
        if want_plev:
            if "plev" not in nc.variables:
                err("plev", f"no plev coordinate; expected {want_plev} Pa")
            else:
                plev = np.atleast_1d(np.asarray(nc.variables["plev"][:], dtype=np.float64))
                units = getattr(nc.variables["plev"], "units", None)
                if units != "Pa" or plev.shape != (len(want_plev),) or not np.allclose(plev, want_plev):
                    hint = " (values look like hPa)" if plev.size and plev.max() < 2000 else ""
                    err("plev", f"plev = {plev.tolist()} {units}{hint}; expected {want_plev} Pa")
        if tuple(grid.shape) != tuple(var.shape[-2:]):
            err("grid", f"{name} is on a {var.shape[-2]}x{var.shape[-1]} grid; expected {grid.nlat}x{grid.nlon} "
                        f"({label})")
        # Time: every month of the run, contiguous monthly bounds.
        months = [protocol.parse_month(m) for m in protocol.months(cfg.periods.run_start, cfg.periods.run_end)]
        span = f"{months[0][0]:04d}{months[0][1]:02d}-{months[-1][0]:04d}{months[-1][1]:02d}"
        if f"{m['first']}-{m['last']}" != span:
            err("time", f"file name covers {m['first']}-{m['last']}; expected {span}")
        if "time" not in nc.variables or "time_bnds" not in nc.variables:
            err("time", "time or time_bnds missing")
        else:
            t = nc.variables["time"]
            tv = np.asarray(t[:], dtype=np.float64)
            bnds = np.asarray(nc.variables["time_bnds"][:], dtype=np.float64)
            cal = getattr(t, "calendar", "standard")
            if tv.size != len(months):
                err("time", f"{tv.size} time steps; expected {len(months)} months "
                            f"{cfg.periods.run_start}..{cfg.periods.run_end}")
            elif bnds.shape != (tv.size, 2):
                err("time", f"time_bnds has shape {bnds.shape}; expected ({tv.size}, 2)")
            else:
                starts = cftime.num2date(bnds[:, 0], t.units, cal)
                ends = cftime.num2date(bnds[:, 1], t.units, cal)
                got = [(d.year, d.month) for d in starts]
                if got != months:
                    bad = next(i for i, (a, b) in enumerate(zip(got, months, strict=True)) if a != b)
                    err("time", f"step {bad} starts {got[bad][0]:04d}-{got[bad][1]:02d}; expected "
                                f"{months[bad][0]:04d}-{months[bad][1]:02d} (a missing or extra month?)")
                elif any(d.day != 1 or d.hour != 0 for d in list(starts) + list(ends)) or \
                        [(d.year, d.month) for d in ends[:-1]] != months[1:]:
                    err("time", "time_bnds are not whole calendar months")
                if not np.array_equal(bnds[1:, 0], bnds[:-1, 1]):
                    err("time", "time_bnds are not contiguous")
                if not ((bnds[:, 0] <= tv) & (tv <= bnds[:, 1])).all():
                    err("time", "time values lie outside their bounds")
        # Values: no NaN unless NaN is the declared missing value; report fill values.
        fill = getattr(var, "missing_value", getattr(var, "_FillValue", None))
        n_nan = n_fill = 0
        step = max(1, int(2e7 // max(1, int(np.prod(var.shape[1:])))))
        for i in range(0, var.shape[0], step):
            block = np.asarray(var[i:i + step])
            n_nan += int(np.isnan(block).sum())
            if fill is not None and np.isfinite(fill):
                n_fill += int((block == np.float32(fill)).sum())
        if n_nan and not (fill is not None and np.isnan(fill)):
            err("nan", f"{name} has {n_nan} NaN values and declares missing_value {fill}")
        if n_fill:
            err("missing_values", f"{name} has {n_fill} missing values ({fill})", level="warning")
    return out


# ----------------------------------------------------------------- external tools


def _sibling_or_path(exe: str) -> str | None:
    beside = Path(sys.executable).parent / exe
    return str(beside) if beside.exists() else shutil.which(exe)


def _chunks(items: list, n: int = CHUNK):
    return [items[i:i + n] for i in range(0, len(items), n)]


def run_prepare(files: list[Path], tables: Path, python: str) -> tuple[dict[str, list[str]], int, str]:
    """PrePARE on ``files``: ({file: [errors]}, number of files it scanned, raw output)."""
    results: dict[str, list[str]] = {}
    scanned = 0
    raw = []
    for chunk in _chunks(files):
        proc = subprocess.run([python, "-c", PREPARE_CODE, "--table-path", str(tables), "--all",
                               "--no-text-color", "--hide-progress", "--max-processes", "1",
                               *map(str, chunk)], capture_output=True, text=True)
        text = proc.stdout + proc.stderr
        raw.append(text)
        hit = re.search(r"Number of files scanned: (\d+)", text)
        if hit is None:
            raise RuntimeError(f"PrePARE ({python}) did not run (exit {proc.returncode}):\n{text[-2000:]}")
        scanned += int(hit[1])
        pending: list[str] = []
        for line in text.splitlines():
            s = line.strip()
            ok = re.search(r"CV SUCCESS :: (.+)$", s)
            bad = re.search(r"CV FAIL\s+:: (.+)$", s)
            if ok:
                results[ok[1].strip()] = []
                pending = []
            elif bad:
                results[bad[1].strip()] = pending or ["PrePARE: CV FAIL (no message)"]
                pending = []
            elif s and not s.startswith("=") and not s.startswith("Checking data") and \
                    not s.startswith("Number of file"):
                pending.append(s)
    return results, scanned, "\n".join(raw)


def run_cfchecks(files: list[Path], exe: str) -> dict[str, list[str]]:
    """cfchecks with offline tables: {file: [ERROR/FATAL lines]}."""
    from compliance_checker import __file__ as cc_file

    names = Path(cc_file).parent / "data" / "cf-standard-name-table.xml"
    results: dict[str, list[str]] = {}
    for chunk in _chunks(files):
        proc = subprocess.run([exe, "-v", "auto", "-s", str(names), "-a", str(BASE / "cf-area-types.xml"),
                               "-r", str(BASE / "cf-regions.xml"), *map(str, chunk)],
                              capture_output=True, text=True)
        text = proc.stdout + proc.stderr
        blocks = re.split(r"^CHECKING NetCDF FILE: ", text, flags=re.M)[1:]
        if len(blocks) != len(chunk):
            raise RuntimeError(f"cfchecks checked {len(blocks)} of {len(chunk)} files (exit {proc.returncode}):\n"
                               f"{text[-2000:]}")
        for block in blocks:
            name, _, body = block.partition("\n")
            errors = [ln.strip() for ln in body.splitlines() if re.match(r"\s*(ERROR|FATAL)\b", ln)]
            n = re.search(r"ERRORS detected: (\d+)", body)
            if n and int(n[1]) and not errors:
                errors = [f"ERRORS detected: {n[1]}"]
            results[name.strip()] = errors
    return results


def run_compliance(files: list[Path], exe: str) -> dict[str, tuple[list[str], list[str]]]:
    """compliance-checker cf:1.7: {file: (high-priority failures, medium-priority failures)}."""
    results: dict[str, tuple[list[str], list[str]]] = {}
    for chunk in _chunks(files):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "cc.json"
            proc = subprocess.run([exe, "--test", "cf:1.7", "-f", "json_new", "-o", str(out), *map(str, chunk)],
                                  capture_output=True, text=True)
            if not out.exists():
                raise RuntimeError(f"compliance-checker wrote no report (exit {proc.returncode}):\n"
                                   f"{(proc.stdout + proc.stderr)[-2000:]}")
            report = json.loads(out.read_text())
        for name, tests in report.items():
            r = tests.get("cf:1.7", {})
            if "errors" in r and r["errors"]:
                results[name] = ([f"checker error: {r['errors']}"], [])
                continue

            def failed(items):
                return [f"{c['name']}: {'; '.join(c.get('msgs') or ['failed'])}"
                        for c in items if c["value"][0] < c["value"][1]]

            results[name] = (failed(r.get("high_priorities", [])), failed(r.get("medium_priorities", [])))
    return results


# --------------------------------------------------------------------- the report


def expected_tree(cfg: Config) -> list[Path]:
    varmap = load_variable_map()
    return [f.relpath for g in cfg.aimip.grids for e in cfg.rollout.experiments
            for k in range(1, cfg.rollout.members + 1)
            for f in drs.member_files(cfg.aimip, cfg.periods, varmap, e, k, g)]


def package_files(cfg: Config) -> set[Path]:
    """Files of the submission root besides the AI-MIP files (written after validation by
    `mdiff package`): tolerated in the tree, never required here."""
    base = drs.submission_root(cfg.aimip)
    return {base / name for name in (*drs.PACKAGE_FILES, drs.CHECKSUMS)}


def validate(cfg: Config, root: str | Path, prepare_python: str | None = None, cfchecks: str | None = None,
             compliance: str | None = None, jobs: int = 2) -> dict:
    """Check the tree at ``root``; ``prepare_python``: the interpreter with CMOR's PrePARE
    (default: the CMOR environment's, mdiff.aimip.cmor_env)."""
    from tqdm import tqdm

    prepare_python = prepare_python or cmor_python()
    root = Path(root).resolve()  # PrePARE reports absolute paths: compare like with like
    cfchecks = cfchecks or _sibling_or_path("cfchecks")
    compliance = compliance or _sibling_or_path("compliance-checker")
    for what, exe in (("cfchecks", cfchecks), ("compliance-checker", compliance)):
        if not exe:
            raise FileNotFoundError(f"{what} not found beside {sys.executable} nor on PATH")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: AI-MIP tree does not exist")
    findings: list[Finding] = []
    found = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    expected = expected_tree(cfg)
    for rel in sorted(set(expected) - set(found)):
        findings.append(Finding(str(rel), "aimip:tree", "expected file is missing"))
    for rel in sorted(set(found) - set(expected) - package_files(cfg)):
        findings.append(Finding(str(rel), "aimip:tree", "unexpected file in the tree (it would be uploaded)"))
    files = [root / rel for rel in found if rel.suffix == ".nc"]
    with tempfile.TemporaryDirectory() as tmp:
        tables = write_run_tables(cfg.aimip, Path(tmp) / "tables")
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            fut_prepare = pool.submit(run_prepare, files, tables, prepare_python)
            fut_cf = pool.submit(run_cfchecks, files, cfchecks)
            fut_cc = pool.submit(run_compliance, files, compliance)
            for path in tqdm(files, desc="aimip checks", unit="file"):
                findings += check_file(path, root, cfg)
            prepared, scanned, _ = fut_prepare.result()
            cf = fut_cf.result()
            cc = fut_cc.result()
    if scanned != len(files):
        findings.append(Finding(".", "prepare", f"PrePARE scanned {scanned} files; expected {len(files)}"))
    for path in files:
        rel, key = str(path.relative_to(root)), str(path)
        if key not in prepared:
            findings.append(Finding(rel, "prepare", "PrePARE reported no result for this file"))
        for msg in prepared.get(key, []):
            findings.append(Finding(rel, "prepare", msg))
        if key not in cf:
            findings.append(Finding(rel, "cfchecks", "cfchecks reported no result for this file"))
        for msg in cf.get(key, []):
            findings.append(Finding(rel, "cfchecks", msg))
        high, medium = cc.get(key, (["compliance-checker reported no result for this file"], []))
        findings += [Finding(rel, "compliance", msg) for msg in high]
        findings += [Finding(rel, "compliance", msg, "warning") for msg in medium]
    errors = [f for f in findings if f.level == "error"]
    return {
        "passed": not errors,
        "root": str(root),
        "files": len(files),
        "expected_files": len(expected),
        "prepare_scanned": scanned,
        "cfchecks_checked": len(cf),
        "compliance_checked": len(cc),
        "errors": [asdict(f) for f in errors],
        "warnings": [asdict(f) for f in findings if f.level != "error"],
        "failed_files": sorted({f.file for f in errors}),
    }


def report_markdown(report: dict) -> str:
    status = "PASSED" if report["passed"] else "FAILED"
    lines = [f"# AI-MIP validation: {status}", "",
             f"- tree: `{report['root']}`",
             f"- files: {report['files']} found, {report['expected_files']} expected",
             f"- PrePARE scanned {report['prepare_scanned']}, cfchecks checked {report['cfchecks_checked']}, "
             f"compliance-checker (cf:1.7) checked {report['compliance_checked']}",
             f"- errors: {len(report['errors'])}, warnings: {len(report['warnings'])}", ""]
    for title, items in (("Errors", report["errors"]), ("Warnings", report["warnings"])):
        if items:
            lines += [f"## {title}", "", "| file | check | message |", "|---|---|---|"]
            lines += [f"| `{f['file']}` | {f['check']} | {f['message'].replace('|', '/')} |" for f in items]
            lines.append("")
    return "\n".join(lines)


def write_report(cfg: Config, root: str | Path, report_json: str | Path, report_md: str | Path,
                 **options) -> dict:
    """Validate (``options``: those of ``validate``), write report.json and report.md, and
    print the errors to stderr; returns the report."""
    from mdiff.fileio import atomic_path, write_json

    report = validate(cfg, root, **options)
    write_json(report_json, report)
    with atomic_path(report_md) as tmp:
        tmp.write_text(report_markdown(report))
    if report["passed"]:
        log.info("validation passed: %d files, %d warnings", report["files"], len(report["warnings"]))
        return report
    print(f"mdiff validate: {len(report['errors'])} error(s) in {len(report['failed_files'])} file(s) "
          f"(report: {report_md})", file=sys.stderr)
    for f in report["errors"][:200]:
        print(f"  {f['file']}: {f['check']}: {f['message']}", file=sys.stderr)
    return report
