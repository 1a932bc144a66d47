"""The submission root (`mdiff package`): dataset card, licence, weights, sha256 manifest."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from test_aimip_fixtures import make_config, run_mdiff, settings_json, write_rollout

from mdiff import config as C
from mdiff.aimip import drs
from mdiff.aimip import package as P
from mdiff.aimip.varmap import load_variable_map

SCORES = {"source": "synthetic", "scores": {
    "perfect.response.tas.aimip-p4k.pattern_correlation": {"value": 0.93, "units": "1", "description": "resp"},
    "perfect.response.pr.aimip-p4k.amplitude_ratio": {"value": 0.41, "units": "1",
                                                      "description": "amplitude of the pr response"},
    "perfect.enso.pr.pattern_correlation_emulator": {"value": 0.55, "units": "1", "description": "enso pr"},
    "perfect.enso.pr.pattern_correlation_truth": {"value": 0.9, "units": "1", "description": "ceiling"},
    "perfect.variance_ratio.tas": {"value": 1.02, "units": "1", "description": "variance"},
    "perfect.enso.tas.amplitude_ratio_emulator": {"value": 0.62, "units": "1", "description": "amp em"},
    "perfect.enso.tas.amplitude_ratio_truth": {"value": 0.7, "units": "1", "description": "amp truth"},
    "e1.bias_rms.tas.1979-2014": {"value": 0.5, "units": "K", "description": "not a perfect score"},
}}
MODEL_CARD = """# Model card
- Parameters: 277,884 (complex spectral weights counted once).
## Training and selection
- Selection rule: lowest validation score = reconstruction + diffusion, evaluated after every epoch.
- Chosen epoch: **7** of 9.
- Training time: 3.8 min on CPU, 2 threads; 1320 optimizer steps.
- Code version: mdiff 0.1.0 (git abc1234),
  torch 2.13.0+cpu; checkpoint format 1.
"""


def make_run(tmp: Path, grids=("gn",)):
    """A fake finished run: the tree's files (placeholders), a passed validation report,
    a checkpoint, the model card, loss curve, scores and rollout files (member seeds)."""
    cfg = make_config(tmp, experiments=("aimip", "aimip-p4k"), grids=list(grids))
    root = tmp / "results" / "aimip"
    for g in grids:
        for e in cfg.rollout.experiments:
            for k in (1, 2):
                for f in drs.member_files(cfg.aimip, cfg.periods, load_variable_map(), e, k, g):
                    (root / f.relpath).parent.mkdir(parents=True, exist_ok=True)
                    (root / f.relpath).write_bytes(f"{f.relpath}".encode())
    inputs = {"report": tmp / "validation.json", "checkpoint": tmp / "checkpoint.pt",
              "model_card": tmp / "model_card.md", "loss_curve": tmp / "loss_curve.png",
              "scores": tmp / "scores.json"}
    inputs["report"].write_text(json.dumps({"passed": True, "files": 52, "warnings": [], "errors": []}))
    inputs["checkpoint"].write_bytes(b"weights" * 1000)
    inputs["model_card"].write_text(MODEL_CARD)
    inputs["loss_curve"].write_bytes(b"\x89PNG fake")
    inputs["scores"].write_text(json.dumps(SCORES))
    rollouts = [write_rollout(cfg, e, 1, 2, tmp / f"rollout/{e}/members_001-002.nc", seed=i)
                for i, e in enumerate(cfg.rollout.experiments)]
    return cfg, root, inputs, rollouts


def test_package_writes_card_licence_weights_and_a_manifest_of_every_file(tmp_path):
    cfg, root, inputs, rollouts = make_run(tmp_path, grids=("gn", "gr"))
    manifest = P.package(cfg, root, rollouts=rollouts, **inputs)
    base = root / "mdiff" / "mdiff-MD15"
    assert manifest == base / "MANIFEST.sha256"
    for name in ("README.md", "LICENSE", "weights/checkpoint.pt", "weights/model_card.md", "weights/loss_curve.png"):
        assert (base / name).is_file(), name
    assert (base / "weights/checkpoint.pt").read_bytes() == inputs["checkpoint"].read_bytes()
    license_text = (base / "LICENSE").read_text()
    assert "Creative Commons Attribution 4.0 International Public License" in license_text
    assert "Section 8 -- Interpretation." in license_text
    # The manifest lists every file of the root but itself, and `sha256sum -c` agrees.
    listed = P.read_checksums(manifest)
    files = {p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()} - {"MANIFEST.sha256"}
    assert set(listed) == files and len(files) == 13 * 2 * 2 * 2 + 5
    check = subprocess.run(["sha256sum", "--check", "--quiet", "MANIFEST.sha256"], cwd=base,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_dataset_card_is_generated_from_the_run(tmp_path):
    cfg, root, inputs, rollouts = make_run(tmp_path, grids=("gn", "gr"))
    P.package(cfg, root, rollouts=rollouts, **inputs)
    card = (root / "mdiff" / "mdiff-MD15" / "README.md").read_text()
    for section in ("## Model", "## Training data and periods", "## Model selection", "## Experiments and members",
                    "## Grids", "## Variables", "## Validation", "## Known limitations", "## How to cite"):
        assert section in card, section
    assert "Parameters: 277,884" in card and "Chosen epoch: 7 of 9" in card
    p = cfg.periods  # training and selection periods
    assert f"months {p.train[0]} .. {p.train[1]}; model selection on {p.validate[0]} .. {p.validate[1]}" in card
    assert "| `aimip-p4k` | +4 K | 2 | r1i1p1f1: 1001, r2i1p1f1: 1002 |" in card  # seeds from the rollout files
    assert "| `gr` |" in card and "100 km" in card and "| `zg` | geopotential_height | m | 500 hPa |" in card
    assert "Demonstration data" in card  # source synthetic
    # Known limitations: the flagged perfect-model scores, and only those.
    limits = card.split("## Known limitations")[1].split("Perfect-model scores")[0]
    assert "perfect.response.pr.aimip-p4k.amplitude_ratio` = 0.41" in limits
    assert "perfect.enso.pr.pattern_correlation_emulator` = 0.55" in limits
    assert "variance_ratio.tas" not in limits and "pattern_correlation_truth" not in limits
    assert "amplitude_ratio_emulator" not in limits  # 0.62 is 0.89 of the truth's 0.7: fine
    assert "e1.bias_rms" not in card
    assert "CC BY 4.0" in card and "arXiv:2605.06944" in card
    assert "sha256sum -c MANIFEST.sha256" in card


def test_package_refuses_a_failed_validation_or_a_stray_file(tmp_path):
    cfg, root, inputs, rollouts = make_run(tmp_path)
    inputs["report"].write_text(json.dumps({"passed": False, "errors": [{}]}))
    with pytest.raises(P.PackageError, match="did not pass"):
        P.package(cfg, root, rollouts=rollouts, **inputs)
    inputs["report"].write_text(json.dumps({"passed": True}))
    stray = root / "mdiff" / "mdiff-MD15" / "notes.txt"
    stray.write_text("x")
    with pytest.raises(P.PackageError, match="notes.txt"):
        P.package(cfg, root, rollouts=rollouts, **inputs)
    assert not (root / "mdiff" / "mdiff-MD15" / "MANIFEST.sha256").exists()


def test_malformed_manifest_line_names_file_and_line(tmp_path):
    path = tmp_path / "MANIFEST.sha256"
    path.write_text("0" * 64 + "  a.nc\nnot a checksum line\n")
    with pytest.raises(P.PackageError, match=r"MANIFEST.sha256:2: expected"):
        P.read_checksums(path)


def test_cli(tmp_path):
    cfg, root, inputs, rollouts = make_run(tmp_path)
    settings = json.loads(settings_json(cfg))
    settings["source"] = "era5"
    run_mdiff(["package", "--settings", json.dumps(settings), "--root", str(root), "--report", str(inputs["report"]),
               "--checkpoint", str(inputs["checkpoint"]), "--model-card", str(inputs["model_card"]),
               "--loss-curve", str(inputs["loss_curve"]), "--scores", str(inputs["scores"]),
               "--rollout", *map(str, rollouts)])
    card = (root / "mdiff" / "mdiff-MD15" / "README.md").read_text()
    assert "Demonstration data" not in card and "10.5281/zenodo.16782372" in card
    assert C.from_dict(C.Config, settings).source == "era5"
