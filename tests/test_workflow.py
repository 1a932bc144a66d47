"""The workflow itself: lint, the DAG of the default config, and a tiny end-to-end run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return env


def snakemake(*args, cwd=REPO, check=True) -> subprocess.CompletedProcess:
    out = subprocess.run([SNAKEMAKE, *args], cwd=cwd, env=_env(), capture_output=True, text=True)
    if check and out.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def test_lint_is_clean():
    out = snakemake("--lint", check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Lints for" not in out.stdout + out.stderr


def copy_workflow(dst: Path) -> Path:
    for name in ("Snakefile", "workflow", "config", "profiles", "envs"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / name)
    if (REPO / ".venv-cmor").exists():  # the CMOR interpreter the aimip rules look for
        (dst / ".venv-cmor").symlink_to(REPO / ".venv-cmor")
    return dst


def test_default_dag_reaches_every_stage(tmp_path):
    # results in a fresh folder: the DAG must not depend on what a developer already ran
    out = snakemake("-n", "--quiet", "rules", "--config", f"results={tmp_path / 'results'}", "--", "all").stdout
    for rule in ("synthesize_world", "normalization_stats", "train", "rollout", "cmorize",
                 "validate_submission", "evaluate", "package_submission"):
        assert rule in out
    assert "cmorize_gr" not in out and "evaluate_gr" not in out and "submit_aimip" not in out


def test_grids_gn_gr_dag_adds_the_one_degree_tree_and_its_scores(tmp_path):
    out = snakemake("all", "-n", "--quiet", "rules", "--config", f"results={tmp_path / 'results'}",
                    'aimip={"grids": ["gn", "gr"]}').stdout
    counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts["cmorize_gr"] == counts["cmorize"] == 15  # 3 experiments x 5 members
    assert counts["evaluate_gr"] == 1 and counts["validate_submission"] == 1


def test_bad_config_key_fails_with_the_key(tmp_path):
    wf = copy_workflow(tmp_path)
    cfg = yaml.safe_load((wf / "config" / "config.yaml").read_text())
    cfg["rollout"]["membres"] = 3
    (wf / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = snakemake("-n", cwd=wf, check=False)
    assert out.returncode != 0
    assert "membres" in out.stdout + out.stderr


def tiny_workflow(wf: Path, **sections) -> Path:
    """The workflow at ``wf`` made tiny: a 9 x 16 grid, 2 truth realisations, 2 members, one
    epoch (and one prefit epoch) of the small model; ``sections``: further config sections."""
    cfg = yaml.safe_load((wf / "config" / "config.yaml").read_text())
    cfg.update(grid={"nlat": 9, "nlon": 16}, **sections)
    cfg["synthetic"]["realizations"] = 2
    cfg["rollout"].update(members=2, member_batch=2)
    (wf / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    model = yaml.safe_load((wf / "config" / "model" / "small.yaml").read_text())
    model["train"].update(epochs=1, linear_forcing_prefit_epochs=1)
    (wf / "config" / "model" / "small.yaml").write_text(yaml.safe_dump(model))
    return wf


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The default workflow (`make run`) on a tiny grid: synthetic world -> ... -> `all`, in a
    copy of the workflow whose config/config.yaml is made tiny, so results land where the
    docs say (results/synthetic) and the documented commands work as pasted after it."""
    wf = tiny_workflow(copy_workflow(tmp_path_factory.mktemp("tiny")))
    snakemake("all", "--cores", "2", cwd=wf)
    return wf, wf / "results" / "synthetic"


@pytest.mark.slow
def test_tiny_end_to_end_run(tiny_run):
    """Every stage ran; a second run has nothing to do."""
    wf, results = tiny_run
    assert (results / "report" / "index.html").exists() and (results / "validation" / "report.json").exists()
    assert json.loads((results / "validation" / "report.json").read_text())["passed"]
    assert len(list((results / "aimip").rglob("*.nc"))) == 13 * 3 * 2
    second = snakemake("all", "--cores", "2", "-n", cwd=wf)
    assert "Nothing to be done" in second.stdout + second.stderr


@pytest.mark.slow
def test_tree_has_amon_folders_and_opens_in_the_organisers_loader(tiny_run):
    """Folders name the table (Amon), the frequency attribute stays mon, and the minimal
    re-implementation of the organisers' open_aimip_data (tests/aimip_loader.py) opens every
    experiment x member x variable, selecting plev=[50000.] on every 3-D variable (zg too)."""
    import netCDF4
    from aimip_loader import EVALUATION_VARIABLES, open_everything

    _, results = tiny_run
    root = results / "aimip"
    files = sorted(root.rglob("*.nc"))
    for f in files:
        parts = f.relative_to(root).parts  # inst/source/exp/member/Amon/var/grid/version/file
        assert parts[4] == "Amon" and parts[6] == "gn" and f.name.startswith(f"{parts[5]}_Amon_"), f
    with netCDF4.Dataset(files[0]) as nc:
        assert nc.frequency == "mon" and nc.table_id == "Amon"
    opened = open_everything(root)
    assert sorted(opened) == [(e, f"r{k}i1p1f1") for e in ("aimip", "aimip-p2k", "aimip-p4k") for k in (1, 2)]
    for ds in opened.values():
        assert set(ds.data_vars) == set(EVALUATION_VARIABLES)
        assert ds.sizes["time"] == 555 and ds["plev"].values.tolist() == [50000.0]
        assert ds["zg"].dims == ("time", "plev", "lat", "lon") and float(ds["zg"].mean()) > 1000.0  # metres
        ds.close()


@pytest.mark.slow
def test_submission_root_holds_card_licence_weights_and_manifest(tiny_run):
    _, results = tiny_run
    base = results / "aimip" / "mdiff" / "mdiff-MD15"
    for name in ("README.md", "LICENSE", "MANIFEST.sha256", "weights/checkpoint.pt", "weights/model_card.md",
                 "weights/loss_curve.png"):
        assert (base / name).is_file(), name
    assert (base / "weights" / "checkpoint.pt").read_bytes() == (results / "model" / "checkpoint.pt").read_bytes()
    card = (base / "README.md").read_text()
    assert "## Known limitations" in card and "perfect." in card  # from the evaluation's scores
    check = subprocess.run(["sha256sum", "--check", "--quiet", "MANIFEST.sha256"], cwd=base, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert len((base / "MANIFEST.sha256").read_text().splitlines()) == 13 * 3 * 2 + 5


@pytest.mark.slow
def test_snakemake_report_builds_with_the_figures(tiny_run):
    """The documented `snakemake --report` commands, as pasted: the zip holds every report()
    output (evaluation figures, validation report, model card, loss curve, dataset card)."""
    import zipfile

    from test_docs_commands import COMMANDS, split

    wf, results = tiny_run
    commands = sorted({c for _, c in COMMANDS if "--report" in c})
    assert any(c.endswith(".zip") for c in commands) and any(c.endswith(".html") for c in commands)
    for command in commands:
        snakemake(*split(command), cwd=wf)
    figures = sorted(p.name for p in (results / "report" / "figures").glob("*.png"))
    assert len(figures) >= 6
    (zip_path,) = [wf / split(c)[-1] for c in commands if c.endswith(".zip")]
    with zipfile.ZipFile(zip_path) as z:
        names = z.namelist()
    for wanted in [*figures, "report.md", "model_card.md", "loss_curve.png", "README.md"]:
        assert any(n.endswith("/" + wanted) for n in names), (wanted, names[:20])
    (html_path,) = [wf / split(c)[-1] for c in commands if c.endswith(".html")]
    html = html_path.read_text()
    assert html_path.stat().st_size > 100_000
    for wanted in [*figures, "model_card.md", "loss_curve.png", "report.md"]:
        assert wanted in html, wanted


@pytest.mark.slow
def test_gn_and_gr_trees_end_to_end(tmp_path):
    """aimip.grids [gn, gr] through the whole workflow on a short run (1978-10..1981-12, 9x16):
    both trees validated by PrePARE, the CF checkers and the own checks; the organisers'
    metrics on the gr tree; the submission root covers both grids."""
    wf = tiny_workflow(copy_workflow(tmp_path), aimip={"grids": ["gn", "gr"]},
                       periods={"run_start": "1978-10", "run_end": "1981-12", "stats": ["1979-01", "1980-12"],
                                "train": ["1980-01", "1980-12"], "validate": ["1979-01", "1979-12"]},
                       evaluate={"analysis": ["1979-01", "1981-12"],
                                 "periods": [["1979-01", "1980-06"], ["1980-07", "1981-12"]]})
    snakemake("all", "--cores", "2", cwd=wf)
    results = wf / "results" / "synthetic"
    report = json.loads((results / "validation" / "report.json").read_text())
    assert report["passed"] and report["files"] == report["prepare_scanned"] == 13 * 3 * 2 * 2
    assert report["cfchecks_checked"] == report["compliance_checked"] == report["files"]
    assert len(list((results / "aimip").rglob("*_gr_197810-198112.nc"))) == 13 * 3 * 2
    scores = json.loads((results / "report" / "aimip_gr" / "scores.json").read_text())["scores"]
    assert scores["organisers.e1.bias_rms.tas.1979-1980"]["value"] > 0
    assert scores["organisers.e5.sensitivity.tas.aimip-p4k"]["value"] is not None
    base = results / "aimip" / "mdiff" / "mdiff-MD15"
    assert "| `gr` |" in (base / "README.md").read_text()
    listed = (base / "MANIFEST.sha256").read_text()
    assert listed.count("_gr_") == listed.count("_gn_") == 13 * 3 * 2
    from aimip_loader import open_everything

    assert len(open_everything(results / "aimip", grid="gr")) == 6
