"""`mdiff evaluate --aimip-root`: the organisers' metrics on the 1-degree gr tree, with known
answers (slow: about a gigabyte of 1-degree files is written and read). The reference is the tiny synthetic world remapped to 1 degree (as the command
does); the "emulator" gr files are that reference plus planted differences."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import netCDF4
import numpy as np
import pytest

from mdiff import config as C
from mdiff.aimip import drs
from mdiff.aimip.varmap import load_variable_map
from mdiff.evaluate import aimip_tree as T
from mdiff.grid import ONE_DEGREE

BIAS = {"tas": 1.5, "pr": 2e-6, "zg": 10.0}  # constant biases of the ensemble mean
SENSITIVITY = {"tas": 0.75, "ta": 0.5}  # per K of the +4 K run, everywhere
MEMBER_TREND = 0.3  # K per decade, +/- on members 1/2 of tas (cancels in the ensemble mean)


def make_cfg(tmp: Path, world) -> C.Config:
    return C.from_dict(C.Config, {
        "results": str(tmp), "grid": {"nlat": world.grid.nlat, "nlon": world.grid.nlon},
        "periods": {"run_start": "1978-10", "run_end": "1981-12", "stats": ["1979-01", "1979-12"],
                    "train": ["1979-01", "1979-12"], "validate": ["1979-01", "1979-12"]},
        "rollout": {"experiments": ["aimip", "aimip-p4k"], "members": 2, "member_batch": 2},
        "aimip": {"grids": ["gn", "gr"]},
        "evaluate": {"analysis": ["1979-01", "1981-12"],
                     "periods": [["1979-01", "1980-06"], ["1980-07", "1981-12"]]},
    }, source="test")


def write_gr(path: Path, variable: str, data: np.ndarray, months: np.ndarray, levels) -> None:
    """A minimal gr file: what the scorer reads (variable, time with monthly bounds, lat, lon)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    start = (months - np.datetime64("1850-01", "M")).astype(int)
    days = np.array([(np.datetime64(m, "D") - np.datetime64("1850-01-01")).astype(int)
                     for m in np.append(months, months[-1] + 1)], dtype=np.float64)
    assert len(start) == len(days) - 1
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("time", None)
        nc.createDimension("bnds", 2)
        nc.createDimension("lat", ONE_DEGREE.nlat)
        nc.createDimension("lon", ONE_DEGREE.nlon)
        t = nc.createVariable("time", "f8", ("time",))
        t.units, t.calendar, t.bounds = "days since 1850-01-01", "proleptic_gregorian", "time_bnds"
        t[:] = (days[:-1] + days[1:]) / 2
        nc.createVariable("time_bnds", "f8", ("time", "bnds"))[:] = np.stack([days[:-1], days[1:]], axis=1)
        nc.createVariable("lat", "f8", ("lat",))[:] = ONE_DEGREE.lat
        nc.createVariable("lon", "f8", ("lon",))[:] = ONE_DEGREE.lon
        dims = ("time", "lat", "lon")
        if levels:
            nc.createDimension("plev", len(levels))
            nc.createVariable("plev", "f8", ("plev",))[:] = levels
            dims = ("time", "plev", "lat", "lon")
        nc.createVariable(variable, "f4", dims)[:] = data if levels else data[:, 0]


@pytest.fixture(scope="module")
def scored(tiny_world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("aimip_tree")
    cfg = make_cfg(tmp, tiny_world)
    state = [p for p in tiny_world.state_files if int(p.stem) <= 1981]
    # The reference on 1 degree, exactly as the scorer computes it, over the run months.
    run_cfg = C.from_dict(C.Config, {**C.to_dict(cfg), "evaluate": {
        "analysis": ["1978-10", "1981-12"], "periods": [["1978-10", "1981-12"]]}})
    (tmp / "ref").mkdir()
    ref_path = T.reference_on_one_degree(run_cfg, state, tmp / "ref")
    months = np.arange(np.datetime64("1978-10", "M"), np.datetime64("1982-01", "M"))
    decades = (months - months[0]).astype(int) / 120.0
    root = tmp / "aimip"
    with netCDF4.Dataset(ref_path) as ref:
        ref.set_auto_mask(False)
        for name, spec in load_variable_map().items():
            base = np.asarray(ref[name][:], dtype=np.float32)
            base = base if base.ndim == 4 else base[:, None]
            for exp in cfg.rollout.experiments:
                warm = 4.0 * SENSITIVITY.get(name, 0.0) if exp == "aimip-p4k" else 0.0
                for k in (1, 2):
                    trend = (MEMBER_TREND if k == 1 else -MEMBER_TREND) * decades if name == "tas" else 0 * decades
                    data = base + BIAS.get(name, 0.0) + warm + trend[:, None, None, None]
                    f = drs.submission_file(cfg.aimip, cfg.periods, name, exp, k, "gr")
                    write_gr(root / f.relpath, name, data.astype(np.float32), months, list(spec.levels_pa))
    out = tmp / "report" / "aimip_gr"
    settings = json.dumps({k: C.to_dict(getattr(cfg, k)) for k in ("grid", "periods", "rollout", "aimip",
                                                                     "evaluate")})
    proc = subprocess.run([sys.executable, "-m", "mdiff.cli", "evaluate", "--settings", settings, "--aimip-root",
                           str(root), "--state", *map(str, state), "--output", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "scores.json").read_text())["scores"], out


def value(scores, name):
    return scores[name]["value"]


@pytest.mark.slow
def test_e1_bias_rms_and_mean_are_the_planted_biases(scored):
    s, _ = scored
    for period in ("1979-1980", "1980-1981"):
        assert value(s, f"organisers.e1.bias_rms.tas.{period}") == pytest.approx(1.5, rel=1e-5)
        assert value(s, f"organisers.e1.bias_mean.tas.{period}") == pytest.approx(1.5, rel=1e-5)
        assert value(s, f"organisers.e1.bias_rms.zg500.{period}") == pytest.approx(10.0, rel=1e-5)
        assert value(s, f"organisers.e1.bias_rms.ta850.{period}") == pytest.approx(0.0, abs=1e-4)
    # every variable on every level: 4 x 7 + zg500 + 8 two-dimensional fields
    labels = {n.split(".")[3] for n in s if n.startswith("organisers.e1.bias_rms.")}
    assert len(labels) == 37 and {"ta50", "hus1000", "zg500", "huss", "pr"} <= labels


@pytest.mark.slow
def test_e2_trends_members_cancel_and_spread_is_seen(scored):
    s, _ = scored
    # The planted member trend, as monthly anomalies over the analysis months (a staircase:
    # the calendar-month means take out part of a linear trend), fitted per period by polyfit.
    months = np.arange(np.datetime64("1979-01", "M"), np.datetime64("1982-01", "M"))
    x = MEMBER_TREND * (months - months[0]).astype(int) / 120.0
    moy = months.astype(int) % 12
    anom = x - np.array([x[moy == m].mean() for m in moy])
    for period, (a, b) in (("1979-1980", ("1979-01", "1980-06")), ("1980-1981", ("1980-07", "1981-12"))):
        sel = (months >= np.datetime64(a)) & (months <= np.datetime64(b))
        slope = np.polyfit((months[sel] - months[0]).astype(int) / 120.0, anom[sel], 1)[0]
        ref = value(s, f"organisers.e2.trend.tas.{period}.reference")
        assert value(s, f"organisers.e2.trend.tas.{period}.emulator") == pytest.approx(ref, abs=1e-4)
        # members at reference +/- slope: sample standard deviation slope * sqrt(2)
        assert value(s, f"organisers.e2.trend.tas.{period}.emulator_member_std") == \
            pytest.approx(abs(slope) * np.sqrt(2), rel=1e-3)


@pytest.mark.slow
def test_e3_regression_of_an_unbiased_copy_is_perfect(scored):
    s, _ = scored
    assert value(s, "organisers.e3.nino34_std") > 0.05
    for lab in ("tas", "pr", "psl", "zg500"):
        assert value(s, f"organisers.e3.regression.{lab}.pattern_correlation") == pytest.approx(1.0, abs=1e-6)
        assert value(s, f"organisers.e3.regression.{lab}.amplitude_ratio") == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_e5_sensitivity_is_the_planted_one(scored):
    s, _ = scored
    assert value(s, "organisers.e5.sensitivity.tas.aimip-p4k") == pytest.approx(0.75, rel=1e-5)
    assert value(s, "organisers.e5.response.ta850.aimip-p4k") == pytest.approx(2.0, rel=1e-5)
    assert value(s, "organisers.e5.sensitivity.ta500.aimip-p4k") == pytest.approx(0.5, rel=1e-5)
    assert value(s, "organisers.e5.response.pr.aimip-p4k") == pytest.approx(0.0, abs=1e-9)
    assert {n.split(".")[3] for n in s if n.startswith("organisers.e5.response.")} == set(T.E5_FIELDS)


@pytest.mark.slow
def test_markdown_table_and_weights(scored):
    _, out = scored
    text = (out / "scores.md").read_text()
    assert "cos(lat) weights" in text and "`organisers.e1.bias_rms.tas.1979-1980`" in text
    # cos(lat) weights on the cell-centred 1-degree grid are the exact cell areas
    w = T.cos_lat_weights()
    np.testing.assert_allclose(w / w.sum(), ONE_DEGREE.cell_area / ONE_DEGREE.cell_area.sum(), rtol=1e-12)


def test_a_gn_only_tree_is_refused_with_the_setting_to_change(tiny_world, tmp_path):
    cfg = make_cfg(tmp_path, tiny_world)
    with pytest.raises(FileNotFoundError, match=r"aimip.grids: \[gn, gr\]"):
        T.score(cfg, tmp_path / "empty", tiny_world.state_files[:3], tmp_path / "out")
