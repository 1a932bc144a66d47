"""Adding a state variable is one table line, its synthetic generator and its CMOR table entry
(docs/variables.md): a fake channel, added that way only, goes through stats -> train ->
rollout -> cmorize on a tiny grid."""

from __future__ import annotations

import json
import os
import subprocess

import fake_channel
import netCDF4
import numpy as np
import pytest
import xarray as xr
import yaml
from conftest import REPO, skip_unless_ci
from test_aimip_fixtures import CMOR_PYTHON
from test_train import TINY

from mdiff import checkpoint
from mdiff import config as C
from mdiff import variables as V
from mdiff.aimip import drs
from mdiff.cli import main as mdiff
from mdiff.data import synthetic

FAKE = fake_channel.FAKE
PERIODS = {"run_start": "1978-10", "run_end": "1980-06", "stats": ["1979-01", "1980-06"],
           "train": ["1979-07", "1980-06"], "validate": ["1979-01", "1979-06"]}


@pytest.mark.cmor
def test_a_fake_channel_goes_from_the_table_to_the_aimip_files(tmp_path, monkeypatch):
    if not CMOR_PYTHON.exists():
        skip_unless_ci(".venv-cmor missing: run `make setup` (scripts/setup.sh)")
    fake_channel.extend_table(monkeypatch.setattr)
    monkeypatch.setitem(synthetic.GENERATORS, FAKE.variable, fake_channel.generate)
    tables = fake_channel.write_tables(tmp_path / "tables")
    fake_channel.use_tables(tables, monkeypatch.setattr)
    assert V.N_STATE == 38 and V.STATE[-1] == FAKE

    cfg = C.from_dict(C.Config, {"grid": {"nlat": 17, "nlon": 32}, "periods": PERIODS,
                                 "rollout": {"experiments": ["aimip"], "members": 1, "member_batch": 1}})
    settings = json.dumps({k: C.to_dict(getattr(cfg, k)) for k in ("grid", "periods", "rollout", "aimip")})
    prepared, results = tmp_path / "prepared", tmp_path / "results"
    model = tmp_path / "model.yaml"
    model.write_text(yaml.safe_dump({"model": C.to_dict(TINY), "train": {"epochs": 1, "batch_size": 4,
                                                                          "device": "cpu", "sample_every": 1}}))

    assert mdiff(["synthesize", "--settings", settings, "--prepared", str(prepared)]) == 0
    state = sorted(str(p) for p in (prepared / "state").glob("*.nc"))
    with xr.open_dataset(state[1]) as ds:  # the generator's field, in the table's units
        assert ds[FAKE.variable].attrs["units"] == "K"
        np.testing.assert_allclose(ds[FAKE.variable].values, ds["tas"].values + 1.0, rtol=1e-6)
    stats = results / "stats" / "normalization.nc"
    assert mdiff(["stats", "--settings", settings, "--state", *state, "--statics", str(prepared / "statics.nc"),
                  "--output", str(stats)]) == 0
    ckpt = results / "model" / "checkpoint.pt"
    assert mdiff(["train", "--settings", settings, "--model", str(model), "--state", *state,
                  "--statics", str(prepared / "statics.nc"), "--stats", str(stats), "--output", str(ckpt)]) == 0
    trained = checkpoint.load(ckpt)
    assert trained.channels[-1] == FAKE and trained.model.n_state == 38
    assert FAKE.name in trained.normalizer.stats
    rollout = results / "rollout" / "aimip" / "members_001-001.nc"
    assert mdiff(["rollout", "--settings", settings, "--checkpoint", str(ckpt), "--forcing",
                  str(prepared / "forcing.nc"), "--initial-state", state[0], "--experiment", "aimip",
                  "--members", "1-1", "--output", str(rollout), "--no-progress"]) == 0
    with xr.open_dataset(rollout) as ds:
        written = ds[FAKE.variable].values[0]
    lo, hi = FAKE.plausible_range
    assert written.shape == (21, 17, 32) and np.isfinite(written).all() and lo <= written.min() <= written.max() <= hi

    root = results / "aimip"
    proc = subprocess.run([str(CMOR_PYTHON), str(REPO / "tests" / "fake_channel.py"), str(tables), "cmorize",
                           "--settings", settings, "--input", str(rollout), "--experiment", "aimip", "--member", "1",
                           "--output-root", str(root), "--file-list", str(results / "r1.json")],
                          capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = root / drs.submission_file(cfg.aimip, cfg.periods, FAKE.name, "aimip", 1).relpath
    assert str(path) in json.loads((results / "r1.json").read_text())["files"]
    with netCDF4.Dataset(path) as nc:
        var = nc.variables[FAKE.name]
        assert var.units == "K" and var.dimensions == ("time", "lat", "lon")
        np.testing.assert_array_equal(np.asarray(var[:], dtype=np.float32), written.astype(np.float32))


def test_a_table_line_without_its_generator_is_named(monkeypatch):
    fake_channel.extend_table(monkeypatch.setattr)
    world = synthetic.SyntheticWorld(synthetic.LatLonGrid(9, 16), synthetic.P.month_range("1979-01", "1979-02"), 0)
    with pytest.raises(KeyError, match=r"no generator for variable\(s\) \['tfake'\].*GENERATORS"):
        world.block(slice(0, 2), world.drivers(0))


def test_a_table_line_without_its_cmor_entry_is_named(monkeypatch):
    from mdiff.aimip.varmap import VariableMapError, load_variable_map

    fake_channel.extend_table(monkeypatch.setattr)
    with pytest.raises(VariableMapError, match="channel tfake .*no entry 'tfake' in the AI-MIP CMOR table"):
        load_variable_map()
