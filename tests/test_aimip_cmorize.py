"""AI-MIP files: tables, variable map, CMOR rewriting (in .venv-cmor) and validation."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import netCDF4
import numpy as np
import pytest
from conftest import skip_unless_ci
from test_aimip_fixtures import (
    CMOR_MDIFF,
    copy_netcdf,
    make_config,
    run_mdiff,
    settings_json,
    write_rollout,
)

from mdiff import config as C
from mdiff import protocol
from mdiff.aimip import drs
from mdiff.aimip.tables import AIMIP_LEVELS_PA, LEVEL_AXIS, nominal_resolution, read_base
from mdiff.aimip.varmap import load_variable_map, specific_humidity_from_dewpoint
from mdiff.grid import LatLonGrid
from mdiff.protocol import G0

_CMOR_MISSING = ".venv-cmor missing: run `make setup` (scripts/setup.sh)"
# Under CI a missing CMOR environment is a failure (the tree fixture fails), never a skip.
_skip_without_cmor = pytest.mark.skipif(not CMOR_MDIFF.exists() and not os.environ.get("CI"),
                                        reason=_CMOR_MISSING)


def needs_cmor(test):
    """Runs `.venv-cmor/bin/mdiff` (marker `cmor`)."""
    return pytest.mark.cmor(_skip_without_cmor(test))

AIMIP_VARIABLES = ["ta", "hus", "ua", "va", "zg", "ps", "ts", "tas", "huss", "uas", "vas", "pr", "psl"]  # table order


# ------------------------------------------------------------------ pure functions


def test_variable_map_covers_the_13_variables_with_table_units():
    varmap = load_variable_map()
    assert list(varmap) == AIMIP_VARIABLES
    table = read_base("CMIP6_Amon.json")["variable_entry"]
    for name, spec in varmap.items():
        assert table[name]["units"] == spec.units, name
    assert varmap["pr"].units == "kg m-2 s-1"
    assert varmap["zg"].units == "m" and varmap["zg"].sources == ("z500",)
    # zg on a plev dimension of length 1 (the organisers' loader selects plev=[50000.])
    assert table["zg"]["dimensions"].split() == ["longitude", "latitude", "plev1aimip", "time"]
    assert varmap["zg"].levels_pa == (50000.0,) and varmap["ta"].levels_pa == AIMIP_LEVELS_PA
    assert varmap["tas"].levels_pa == () and not varmap["tas"].has_plev
    assert LEVEL_AXIS in table["ta"]["dimensions"].split()


def test_tables_have_aimip_vocabulary_and_levels():
    cv = read_base("CMIP6_CV.json")["CV"]
    assert list(cv["activity_id"]) == ["AIMIP"]
    assert sorted(cv["experiment_id"]) == ["aimip", "aimip-p2k", "aimip-p4k"]
    assert cv["experiment_id"]["aimip-p4k"]["parent_experiment_id"] == ["no parent"]
    axis = read_base("CMIP6_coordinate.json")["axis_entry"][LEVEL_AXIS]
    assert [float(v) for v in axis["requested"]] == list(AIMIP_LEVELS_PA)
    assert AIMIP_LEVELS_PA == (100000.0, 85000.0, 70000.0, 50000.0, 25000.0, 10000.0, 5000.0)


def test_huss_from_dewpoint():
    # Td = 293.15 K at 1013.25 hPa: e = 611.21 exp(17.502 * 19.99 / 260.96) = 2335.9 Pa,
    # q = 0.621981 e / (p - 0.378019 e) = 0.014465 (by hand).
    q = specific_humidity_from_dewpoint(np.array([293.15]), np.array([101325.0]))
    np.testing.assert_allclose(q, 0.014465, rtol=1e-4)
    td = np.linspace(230.0, 300.0, 50)
    assert np.all(np.diff(specific_humidity_from_dewpoint(td, np.full_like(td, 1e5))) > 0)
    # Lower pressure, same vapour pressure: more specific humidity.
    assert specific_humidity_from_dewpoint(np.array([280.0]), np.array([7e4])) > \
        specific_humidity_from_dewpoint(np.array([280.0]), np.array([1e5]))


@pytest.mark.parametrize(("nlat", "label"), [(121, "250 km"), (37, "500 km"), (181, "100 km")])
def test_nominal_resolution_cmip6_rule(nlat, label):
    g = LatLonGrid(nlat, 2 * (nlat - 1))
    assert nominal_resolution(g.lat_bounds, g.lon_bounds) == label


def test_drs_paths_for_both_layouts():
    periods = C.PeriodsConfig()
    f = drs.submission_file(C.AimipConfig(), periods, "tas", "aimip-p2k", 3)
    assert str(f.relpath) == ("mdiff/mdiff-MD15/aimip-p2k/r3i1p1f1/Amon/tas/gn/v20260101/"
                              "tas_Amon_mdiff-MD15_aimip-p2k_r3i1p1f1_gn_197810-202412.nc")
    assert drs.FILENAME.match(f.name)["experiment_id"] == "aimip-p2k"
    g = drs.submission_file(C.AimipConfig(layout="cmip6"), periods, "ta", "aimip", 1)
    assert g.relpath.parts[:4] == ("CMIP6", "AIMIP", "mdiff", "mdiff-MD15")
    assert g.relpath.parts[6] == "Amon"


def test_config_rejects_underscores_and_bad_version():
    with pytest.raises(C.ConfigError, match="source_id"):
        C.AimipConfig(source_id="md_15")
    with pytest.raises(C.ConfigError, match="version"):
        C.AimipConfig(version="2026-01-01")


# ------------------------------------------------------------ CMOR and validation


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Two members of `aimip` on a 9x16 grid, 6 months, rewritten by CMOR."""
    if not CMOR_MDIFF.exists():
        skip_unless_ci(_CMOR_MISSING)
    tmp = tmp_path_factory.mktemp("aimip")
    cfg = make_config(tmp)
    rollout = write_rollout(cfg, "aimip", 1, 2, tmp / "results/rollout/aimip/members_001-002.nc")
    root = tmp / "results/aimip"
    for member in (1, 2):
        run_mdiff(["cmorize", "--settings", settings_json(cfg), "--input", str(rollout), "--experiment", "aimip",
                   "--member", str(member), "--output-root", str(root),
                   "--file-list", str(tmp / f"results/cmorize/aimip/r{member}.json")], cmor=True)
    return cfg, tmp, rollout, root


def _validate(cfg, root: Path, out: Path):
    proc = run_mdiff(["validate", "--settings", settings_json(cfg), "--root", str(root),
                      "--report-json", str(out / "report.json"), "--report-md", str(out / "report.md")],
                     check=False)
    report = json.loads((out / "report.json").read_text())
    return proc, report


@needs_cmor
def test_cmorize_writes_the_expected_files(tree):
    cfg, tmp, _, root = tree
    listing = json.loads((tmp / "results/cmorize/aimip/r2.json").read_text())
    expected = [str(root / f.relpath) for f in drs.member_files(cfg.aimip, cfg.periods, AIMIP_VARIABLES, "aimip", 2)]
    assert listing["files"] == expected
    assert all(Path(p).exists() for p in expected)
    assert not list(tmp.glob("results/.cmorize-*")), "staging folder left behind"
    with netCDF4.Dataset(expected[0]) as nc:
        assert nc.activity_id == "AIMIP" and nc.variant_label == "r2i1p1f1"
        assert nc.license.startswith("AI-MIP model data") and "CC BY 4.0" in nc.license
        assert nc.nominal_resolution == "2500 km"
        assert nc.version == "v20260101"


@needs_cmor
def test_cmor_values_equal_rollout(tree):
    cfg, _, rollout, root = tree
    with netCDF4.Dataset(rollout) as src:
        src.set_auto_mask(False)
        member = list(src["member"][:]).index(2)

        def r(name):
            return np.asarray(src[name][member], dtype=np.float32)

        expected = {v: r(v) for v in ("ta", "hus", "ua", "va", "ps", "psl", "ts", "tas", "uas", "vas", "pr")}
        expected["zg"] = (r("z500").astype(np.float64) / G0).astype(np.float32)
        td, ps = r("tdas").astype(np.float64), r("ps").astype(np.float64)
        e = 611.21 * np.exp(17.502 * (td - 273.16) / (td - 32.19))
        expected["huss"] = (0.621981 * e / (ps - 0.378019 * e)).astype(np.float32)
    for f in drs.member_files(cfg.aimip, cfg.periods, AIMIP_VARIABLES, "aimip", 2):
        with netCDF4.Dataset(root / f.relpath) as nc:
            nc.set_auto_mask(False)
            got = nc[f.variable][:]
            if f.variable == "zg":
                got = got[:, 0]
            assert got.dtype == np.float32
            np.testing.assert_allclose(got, expected[f.variable], rtol=2 * np.finfo(np.float32).eps,
                                       err_msg=f.variable)
            if f.variable == "ta":
                np.testing.assert_array_equal(nc["plev"][:], AIMIP_LEVELS_PA)
            if f.variable == "zg":
                assert nc["zg"].dimensions == ("time", "plev", "lat", "lon")
                np.testing.assert_array_equal(nc["plev"][:], [50000.0])


@needs_cmor
def test_validation_passes_with_all_checkers(tree):
    cfg, tmp, _, root = tree
    out = tmp / "validation"
    # a relative root, as the workflow passes it (PrePARE itself reports absolute paths)
    proc, report = _validate(cfg, Path(os.path.relpath(root)), out)
    assert proc.returncode == 0, proc.stderr
    assert report["passed"] and report["errors"] == []
    assert report["files"] == report["expected_files"] == 26
    assert report["prepare_scanned"] == report["cfchecks_checked"] == report["compliance_checked"] == 26
    assert "PASSED" in (out / "report.md").read_text()


def tree_copy(tree, name: str) -> tuple[C.Config, Path, Path]:
    """(config, work folder, a copy of the tree fixture's AI-MIP root in work/name) to break."""
    cfg, tmp, _, root = tree
    copy = tmp / name / "aimip"
    shutil.copytree(root, copy)
    return cfg, tmp, copy


@needs_cmor
def test_broken_files_are_caught_naming_file_and_check(tree):
    cfg, tmp, broken = tree_copy(tree, "broken")
    files = {f.variable: broken / f.relpath
             for f in drs.member_files(cfg.aimip, cfg.periods, AIMIP_VARIABLES, "aimip", 1)}
    with netCDF4.Dataset(files["tas"], "a") as nc:  # wrong units
        nc["tas"].units = "degC"
    with netCDF4.Dataset(files["ps"], "a") as nc:  # unknown experiment_id
        nc.experiment_id = "aimip-p8k"
    with netCDF4.Dataset(files["ta"], "a") as nc:  # levels in hPa
        nc["plev"][:] = nc["plev"][:] / 100.0
    src = files["pr"].with_suffix(".orig")  # float64 data
    files["pr"].rename(src)
    copy_netcdf(src, files["pr"], dtype={"pr": "f8"})
    src.unlink()
    src = files["uas"].with_suffix(".orig")  # a missing month
    files["uas"].rename(src)
    copy_netcdf(src, files["uas"], drop_time=3)
    src.unlink()

    proc, report = _validate(cfg, broken, tmp / "broken-report")
    assert proc.returncode == 1
    errors = {}
    for e in report["errors"]:
        errors.setdefault(e["file"], set()).add(e["check"])
    rel = {k: str(v.relative_to(broken)) for k, v in files.items()}
    assert "aimip:units" in errors[rel["tas"]]
    assert "aimip:experiment_id" in errors[rel["ps"]] and "prepare" in errors[rel["ps"]]
    assert "aimip:plev" in errors[rel["ta"]]
    assert "aimip:float32" in errors[rel["pr"]]
    assert "aimip:time" in errors[rel["uas"]]
    assert set(errors) == {rel[k] for k in ("tas", "ps", "ta", "pr", "uas")}  # nothing else flagged
    # The command's own output names file and check too.
    assert f"{rel['ta']}: aimip:plev" in proc.stderr and "hPa" in proc.stderr
    assert "FAILED" in (tmp / "broken-report/report.md").read_text()


@needs_cmor
def test_missing_and_extra_files_are_caught(tree):
    cfg, tmp, other = tree_copy(tree, "incomplete")
    victim = other / drs.submission_file(cfg.aimip, cfg.periods, "vas", "aimip", 2).relpath
    victim.unlink()
    (other / "notes.txt").write_text("stray")
    # the submission root's own files (mdiff package) are tolerated, nothing else
    (other / "mdiff/mdiff-MD15/weights").mkdir()
    for name in ("README.md", "LICENSE", "MANIFEST.sha256", "weights/checkpoint.pt"):
        (other / "mdiff/mdiff-MD15" / name).write_text("x")
    proc, report = _validate(cfg, other, tmp / "incomplete-report")
    assert proc.returncode == 1
    checks = {(e["file"], e["check"]) for e in report["errors"]}
    assert checks == {(str(victim.relative_to(other)), "aimip:tree"), ("notes.txt", "aimip:tree")}


@needs_cmor
def test_cmorize_rejects_a_rollout_of_another_experiment(tree):
    cfg, tmp, rollout, _ = tree
    proc = run_mdiff(["cmorize", "--settings", settings_json(cfg), "--input", str(rollout), "--experiment",
                      "aimip-p2k", "--member", "1", "--output-root", str(tmp / "other")], cmor=True, check=False)
    assert proc.returncode == 1
    assert str(rollout) in proc.stderr and "experiment_id" in proc.stderr
    assert "Traceback" not in proc.stderr


@needs_cmor
def test_full_run_period_on_a_tiny_grid(tmp_path):
    """555 months 1978-10..2024-12: CMOR writes them all and validation passes."""
    cfg = make_config(tmp_path, nlat=9, run=("1978-10", "2024-12"), members=1, member_batch=1)
    rollout = write_rollout(cfg, "aimip", 1, 1, tmp_path / "members_001-001.nc")
    root = tmp_path / "aimip"
    run_mdiff(["cmorize", "--settings", settings_json(cfg), "--input", str(rollout), "--experiment", "aimip",
               "--member", "1", "--output-root", str(root)], cmor=True)
    proc, report = _validate(cfg, root, tmp_path / "validation")
    assert proc.returncode == 0, proc.stderr
    assert report["files"] == 13
    f = root / drs.submission_file(cfg.aimip, cfg.periods, "ta", "aimip", 1).relpath
    assert f.name.endswith("_197810-202412.nc")
    with netCDF4.Dataset(f) as nc:
        assert nc["time"].shape == (555,)


def test_member_batches_and_tree_root():
    assert protocol.member_batches(5, 2) == [(1, 2), (3, 4), (5, 5)]
    assert protocol.member_batch(1, 5, 2) == (1, 2) and protocol.member_batch(4, 5, 2) == (3, 4)
    assert protocol.member_batch(5, 5, 2) == (5, 5) and protocol.member_batch(3, 5, 5) == (1, 5)
    with pytest.raises(ValueError, match="outside"):
        protocol.member_batch(6, 5, 2)
    for layout in ("aimip", "cmip6"):
        aimip = C.AimipConfig(layout=layout)
        f = drs.submission_file(aimip, C.PeriodsConfig(), "pr", "aimip", 1)
        assert drs.tree_root(f"/x/results/aimip/{f.relpath}", aimip) == "/x/results/aimip"


# ------------------------------------------------------------------- the 1-degree gr tree


@pytest.fixture(scope="module")
def gr_tree(tree):
    """The `tree` fixture's files copied, plus their 1-degree gr files (aimip.grids [gn, gr])."""
    cfg, tmp, rollout, root = tree
    grcfg = make_config(tmp, grids=["gn", "gr"])
    gr_root = tmp / "with-gr" / "aimip"
    shutil.copytree(root, gr_root)
    for member in (1, 2):
        run_mdiff(["cmorize-gr", "--settings", settings_json(grcfg), "--experiment", "aimip",
                   "--member", str(member), "--root", str(gr_root)], cmor=True)
    return grcfg, gr_root


@needs_cmor
def test_gr_files_are_on_the_one_degree_grid_with_its_attributes(gr_tree):
    cfg, root = gr_tree
    f = root / drs.submission_file(cfg.aimip, cfg.periods, "tas", "aimip", 1, "gr").relpath
    assert f.parts[-4:-1] == ("tas", "gr", "v20260101") and "_gr_" in f.name
    with netCDF4.Dataset(f) as nc:
        assert nc["lat"].shape == (180,) and nc["lon"].shape == (360,)
        np.testing.assert_allclose(nc["lat"][:2], [-89.5, -88.5])
        np.testing.assert_allclose(nc["lon"][[0, -1]], [0.5, 359.5])
        np.testing.assert_allclose(nc["lat_bnds"][0], [-90.0, -89.0])
        assert nc.grid_label == "gr" and nc.nominal_resolution == "100 km"
        assert "conservatively regridded" in nc.grid and "CDO remapcon" in nc.grid and "9 x 16" in nc.grid
        assert "member seed 1001" in nc.history  # the gn file's provenance carried over
    assert not list(root.parent.glob(".cmorize-gr-*")), "staging folder left behind"


@needs_cmor
def test_gr_global_means_equal_native_ones(gr_tree):
    """Conservative remapping: every month's (and level's) global mean with exact cell areas
    equals the native one to 1e-5 relative (relative to the mean |value|: va's mean is ~0)."""
    from mdiff.grid import ONE_DEGREE

    cfg, root = gr_tree
    native = LatLonGrid(cfg.grid.nlat, cfg.grid.nlon)
    worst = 0.0
    for member in (1, 2):
        for v in AIMIP_VARIABLES:
            means = []
            for grid, g in (("gn", native), ("gr", ONE_DEGREE)):
                f = root / drs.submission_file(cfg.aimip, cfg.periods, v, "aimip", member, grid).relpath
                with netCDF4.Dataset(f) as nc:
                    x = np.asarray(nc[v][:], dtype=np.float64)
                w = g.cell_area / g.cell_area.sum()
                means.append(((x * w).sum(axis=(-2, -1)), (np.abs(x) * w).sum(axis=(-2, -1))))
            (mn, scale), (mr, _) = means
            rel = float(np.max(np.abs(mr - mn) / scale))
            assert rel < 1e-5, (v, member, rel)
            worst = max(worst, rel)
    print(f"max relative global-mean difference gr vs gn: {worst:.2e}")


@needs_cmor
def test_gn_and_gr_trees_pass_validation_and_a_wrong_gr_grid_is_caught(gr_tree, tmp_path):
    cfg, root = gr_tree
    proc, report = _validate(cfg, root, tmp_path / "ok")
    assert proc.returncode == 0, proc.stderr
    assert report["files"] == report["expected_files"] == 52  # 13 variables x 2 members x 2 grids
    assert report["prepare_scanned"] == report["cfchecks_checked"] == report["compliance_checked"] == 52
    # A gr file whose longitudes are those of another grid (0..359 centres) is an error.
    broken = tmp_path / "broken" / "aimip"
    shutil.copytree(root, broken)
    f = broken / drs.submission_file(cfg.aimip, cfg.periods, "ps", "aimip", 2, "gr").relpath
    with netCDF4.Dataset(f, "a") as nc:
        nc["lon"][:] = np.arange(360.0)
    proc, report = _validate(cfg, broken, tmp_path / "broken-report")
    assert proc.returncode == 1
    assert {(e["file"], e["check"]) for e in report["errors"]} == {(str(f.relative_to(broken)), "aimip:grid")}
    # The gn-only config finds the gr files unexpected.
    proc, report = _validate(make_config(tmp_path), root, tmp_path / "gn-only")
    assert proc.returncode == 1 and any("_gr_" in e["file"] for e in report["errors"])


def test_grids_config():
    assert C.AimipConfig().grids == ["gn"]
    assert C.AimipConfig(grids=["gn", "gr"]).grids == ["gn", "gr"]
    for bad in (["gr"], ["gn", "gn"], []):
        with pytest.raises(C.ConfigError, match="aimip.grids"):
            C.AimipConfig(grids=bad)
