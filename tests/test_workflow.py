"""The workflow itself: lint, the DAG of the default config, and a tiny end-to-end run."""

from __future__ import annotations

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
                 "validate_submission", "evaluate"):
        assert rule in out


def test_bad_config_key_fails_with_the_key(tmp_path):
    wf = copy_workflow(tmp_path)
    cfg = yaml.safe_load((wf / "config" / "config.yaml").read_text())
    cfg["rollout"]["membres"] = 3
    (wf / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = snakemake("-n", cwd=wf, check=False)
    assert out.returncode != 0
    assert "membres" in out.stdout + out.stderr


@pytest.mark.slow
def test_tiny_end_to_end_run(tmp_path):
    """synthetic world -> ... -> `all` on a tiny grid, then a second run has nothing to do."""
    wf = copy_workflow(tmp_path)
    cfg = yaml.safe_load((wf / "config" / "config.yaml").read_text())
    cfg.update(results=str(tmp_path / "results"), grid={"nlat": 9, "nlon": 16})
    cfg["synthetic"]["realizations"] = 2
    cfg["rollout"].update(members=2, member_batch=2)
    (wf / "config" / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    model = yaml.safe_load((wf / "config" / "model" / "small.yaml").read_text())
    model["train"]["epochs"] = 1
    (wf / "config" / "model" / "small.yaml").write_text(yaml.safe_dump(model))
    snakemake("--configfile", "config/tiny.yaml", "--cores", "2", "all", cwd=wf)
    results = tmp_path / "results"
    assert (results / "report" / "index.html").exists() and (results / "validation" / "report.json").exists()
    assert len(list((results / "aimip").rglob("*.nc"))) == 13 * 3 * 2
    second = snakemake("--configfile", "config/tiny.yaml", "--cores", "2", "-n", "all", cwd=wf)
    assert "Nothing to be done" in second.stdout + second.stderr
