import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mdiff import config as C

REPO = Path(__file__).resolve().parents[1]


def test_every_shipped_config_loads():
    for path in [REPO / "config" / "config.yaml", *sorted((REPO / "config").glob("era5*.yaml"))]:
        C.load_config(path)
    for path in sorted((REPO / "config" / "model").glob("*.yaml")):
        C.load_model_file(path)


def test_committed_schema_matches_dataclasses():
    committed = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert committed == yaml.safe_load(C.schema_yaml()), "run `mdiff config-schema --output workflow/schemas/config.schema.yaml`"


def test_misspelt_key_names_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid:\n  nlat: 37\n  nlon: 72\nrollout:\n  member: 5\n")
    with pytest.raises(C.ConfigError) as err:
        C.load_config(bad)
    msg = str(err.value)
    assert str(bad) in msg and "rollout.member" in msg and "members" in msg


def test_wrong_type_and_bad_values_are_errors(tmp_path):
    with pytest.raises(C.ConfigError, match="grid"):
        C.from_dict(C.Config, {"grid": {"nlat": 37, "nlon": 70}})
    with pytest.raises(C.ConfigError, match="2014-12"):
        C.from_dict(C.Config, {"periods": {"train": ["1985-01", "2016-12"]}})
    with pytest.raises(C.ConfigError, match="rollout"):
        C.from_dict(C.Config, {"rollout": {"members": "five"}})


def test_schema_rejects_unknown_key_like_snakemake_does():
    import jsonschema

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"rollout": {"membres": 3}}, schema)


def test_cli_reports_bad_config_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("periods:\n  stats: ['1979-01', '2014-12']\n  tarin: ['1985-01', '2014-12']\n")
    out = subprocess.run([sys.executable, "-m", "mdiff.cli", "stats", "--config", str(bad), "--state", "x.nc",
                          "--statics", "y.nc", "--output", str(tmp_path / "s.json")], capture_output=True, text=True)
    assert out.returncode == 1
    assert "periods.tarin" in out.stderr and str(bad) in out.stderr and "Traceback" not in out.stderr


def _leaf_keys(cls, prefix=""):
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _leaf_keys(tp, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}"


def test_config_readme_documents_every_key():
    text = (REPO / "config" / "README.md").read_text()
    missing = [k for cls in (C.Config, C.ModelFile) for k in _leaf_keys(cls) if f"`{k}`" not in text]
    assert not missing, f"config/README.md does not document {missing}"
