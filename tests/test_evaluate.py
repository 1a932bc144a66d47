"""The evaluation report: metrics on analytic fields, and the report on a tiny known world.

The world below is written with the prepared-file helpers (until `mdiff synthesize`
exists it stands in for it): every field is base + seasonal cycle + forced trend +
planted ENSO teleconnection + planted NAO + noise, and the warmed runs add exactly
+k per kelvin. The "emulator" is that world with other noise, a known bias and a
damped NAO, so each score has a value the test knows.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import skip_unless_ci

from mdiff import config as C
from mdiff import protocol
from mdiff import variables as V
from mdiff.cli import main as cli_main
from mdiff.data.prepared import PreparedDataError, channels_to_dataset, month_range, skeleton, write
from mdiff.evaluate import metrics as M
from mdiff.evaluate.report import evaluate
from mdiff.evaluate.scores import Inputs
from mdiff.grid import LatLonGrid

# ------------------------------------------------------------------ metric tests


def test_area_mean_of_known_fields():
    # Indicator of the cells north of 45N on a 30-degree grid: exactly (1 - sin 45) / 2.
    g = LatLonGrid(7, 12)
    north = np.repeat((g.lat >= 60)[:, None], g.nlon, axis=1).astype(float)
    assert M.area_mean(g, north) == pytest.approx((1 - np.sin(np.pi / 4)) / 2, abs=1e-12)
    # A smooth field: the mean of sin^2(lat) over the sphere is 1/3 (O(h^2) quadrature error).
    g1 = LatLonGrid.from_resolution(1.0)
    lat = np.deg2rad(g1.lat)[:, None] * np.ones(g1.nlon)
    assert M.area_mean(g1, np.sin(lat) ** 2) == pytest.approx(1 / 3, abs=2e-5)
    # An unweighted mean would be far off (the defect this guards against).
    assert abs(np.mean(np.sin(lat) ** 2) - 1 / 3) > 0.1
    # NaN drops out of the weights: NaN over the southern hemisphere = the northern mean.
    f = np.where(lat > 0, 2.0, np.nan)
    assert M.area_mean(g1, f) == pytest.approx(2.0)
    # Leading axes are kept; a mask restricts the mean.
    stacked = np.stack([np.ones(g.shape), 3 * np.ones(g.shape)])
    np.testing.assert_allclose(M.area_mean(g, stacked, mask=north > 0), [1.0, 3.0])


def test_regression_recovers_slope():
    rng = np.random.default_rng(1)
    g = LatLonGrid(13, 24)
    index = rng.standard_normal(400)
    slope = np.cos(np.deg2rad(g.lat))[:, None] * np.sin(np.deg2rad(g.lon))[None, :] * 2.0
    noise = 0.1 * rng.standard_normal((400, *g.shape))
    field = 5.0 + slope[None] * index[:, None, None] + noise
    got = M.regression_map(field, index)
    np.testing.assert_allclose(got, slope, atol=0.02)
    assert M.pattern_correlation(g, got, slope) > 0.999
    assert M.amplitude_ratio(g, 0.5 * got, slope) == pytest.approx(0.5, abs=0.01)
    # NaN index values (running-mean edges) are left out, not propagated.
    index[:3] = np.nan
    assert np.isfinite(M.regression_map(field, index)).all()


def test_linear_trend_and_running_mean():
    years = M.decimal_years(month_range("1979-01", "2014-12"))
    assert M.linear_trend(0.3 * years + 7.0, years) == pytest.approx(0.3)
    x = np.arange(10.0)
    r = M.running_mean(x, 3)
    assert np.isnan(r[0]) and np.isnan(r[-1])
    np.testing.assert_allclose(r[1:-1], x[1:-1])


def _dipole(g: LatLonGrid) -> np.ndarray:
    lat, lon = np.meshgrid(g.lat, np.where(g.lon > 180, g.lon - 360, g.lon), indexing="ij")
    return (-np.exp(-((lat - 65) / 10) ** 2 - ((lon + 20) / 30) ** 2)
            + np.exp(-((lat - 38) / 10) ** 2 - ((lon + 30) / 30) ** 2))


def test_planted_dipole_is_first_eof():
    rng = np.random.default_rng(2)
    g = LatLonGrid(37, 72)
    dipole = 3.0 * _dipole(g)
    months = month_range("1979-01", "2008-12")
    pc = rng.standard_normal(months.size)
    field = 1000.0 + dipole[None] * pc[:, None, None] + 0.5 * rng.standard_normal((months.size, *g.shape))
    eof = M.nao_eof(g, field, months)
    sector = M.region_mask(g, M.NAO_LAT, M.NAO_LON)
    assert M.pattern_correlation(g, eof["pattern"], dipole, sector) > 0.98  # sign fixed: positive NAO
    winter = np.isin(M.month_of_year(months), M.DJF)
    expected = M.area_mean(g, dipole ** 2, sector) * pc[winter].var()
    assert eof["variance"] == pytest.approx(expected, rel=0.1)
    assert eof["explained"] > 0.5
    # The sign convention does not depend on the sign of the input.
    flipped = M.nao_eof(g, 2000.0 - field, months)
    assert M.pattern_correlation(g, flipped["pattern"], dipole, sector) > 0.98


def test_sensitivity_of_exact_response():
    g = LatLonGrid(19, 36)
    for k in (0.5, 1.7):
        response = np.full(g.shape, 4.0 * k)
        assert M.sensitivity_per_kelvin(g, response, 4.0) == pytest.approx(k, rel=1e-12)
    with pytest.raises(ValueError, match="non-zero SST offset"):
        M.sensitivity_per_kelvin(g, np.ones(g.shape), 0.0)


def test_nino34_of_planted_sst():
    g = LatLonGrid(19, 36)
    months = month_range("1979-01", "1988-12")
    t = np.arange(months.size)
    enso = np.sin(2 * np.pi * t / 40.0)
    season = 2.0 * np.cos(2 * np.pi * M.month_of_year(months) / 12.0)
    warming = 0.05 * t / 12.0  # 0.5 K per decade: not ENSO
    sst = 300.0 + (season + enso + warming)[:, None, None] * np.ones(g.shape)
    sst[:, :, :2] = np.nan  # "land" outside the box is ignored
    idx = M.nino34_index(g, sst, months)
    ok = np.isfinite(idx)
    assert ok.sum() == months.size - 2
    # The seasonal cycle and the warming are gone: what is left is ENSO through the same filter.
    expected = M.running_mean(M.detrend(M.monthly_anomalies(enso, months, axis=-1)), 3)
    np.testing.assert_allclose(idx[ok], expected[ok], atol=0.03)
    assert abs(M.linear_trend(idx[ok], t[ok])) < 1e-3
    # A field = 2 x ENSO + the same warming regresses on the index with slope ~2, not more.
    field = (2.0 * enso + warming)[:, None, None] * np.ones((1, *g.shape))
    np.testing.assert_allclose(M.enso_regression(field, months, idx), 2.0, rtol=0.05)


# ------------------------------------------------------------- a tiny known world

GRID = LatLonGrid(19, 36)
RUN = ("1978-10", "1984-12")
ANALYSIS = ["1979-01", "1984-12"]
PERIODS = [["1979-01", "1981-12"], ["1982-01", "1984-12"]]
MEMBERS, BATCH, REALIZATIONS = 2, 1, 3
BIAS = 0.3  # emulator bias, in units of each channel's scale
NAO_DAMPING = 0.5  # emulator NAO amplitude / truth

# Channel scales by units: base value, amplitude of variability.
_SCALE = {"K": (270.0, 1.0), "1": (5e-3, 1e-4), "m s-1": (0.0, 1.0), "m2 s-2": (55000.0, 100.0),
          "Pa": (100000.0, 100.0), "kg m-2 s-1": (3e-5, 3e-6)}


def _wrap(d):
    return (d + 180.0) % 360.0 - 180.0


def _patterns(g):
    lat, lon = np.meshgrid(g.lat, g.lon, indexing="ij")
    enso = (np.exp(-(lat / 15) ** 2 - (_wrap(lon - 210) / 40) ** 2)
            - 0.5 * np.exp(-((lat - 45) / 15) ** 2 - (_wrap(lon - 230) / 30) ** 2))
    nao = 2.0 * (-np.exp(-((lat - 65) / 10) ** 2 - (_wrap(lon - 340) / 30) ** 2)
                 + np.exp(-((lat - 38) / 10) ** 2 - (_wrap(lon - 330) / 30) ** 2))
    response = 1.0 + 0.5 * np.sin(np.deg2rad(lat)) + 0.3 * np.cos(np.deg2rad(lon))
    land = (((lat >= 10) & (lat <= 70) & (lon >= 250) & (lon <= 300))
            | ((lat >= -30) & (lat <= 60) & (lon >= 10) & (lon <= 60))).astype(float)
    return enso, nao, response, land


def _world(months, enso_index, seed, nao_amp=1.0, bias=0.0, offset=0.0):
    """All state channels (time, C, lat, lon) of one realisation/member, plus its NAO index."""
    g = GRID
    enso, nao, response, _ = _patterns(g)
    rng = np.random.default_rng(seed)
    nao_index = rng.standard_normal(months.size)
    moy = M.month_of_year(months)
    years = M.decimal_years(months) - 1979.0
    season = np.cos(2 * np.pi * (moy - 1) / 12)[:, None, None] * np.sin(np.deg2rad(g.lat))[None, :, None]
    unit = (3.0 * season + 0.02 * years[:, None, None] + enso[None] * enso_index[:, None, None]
            + nao_amp * nao[None] * nao_index[:, None, None] + bias + offset * response[None])
    out = np.empty((months.size, V.N_STATE, *g.shape), np.float32)
    for i, ch in enumerate(V.STATE):
        base, scale = _SCALE[ch.units]
        noise = 0.5 * rng.standard_normal((months.size, *g.shape))
        out[:, i] = base + scale * (unit + noise)
    return out, nao_index


def _scales():
    return np.array([_SCALE[ch.units][1] for ch in V.STATE])[:, None, None]


def write_world(root: Path) -> Inputs:
    g = GRID
    months = month_range(*RUN)
    enso, nao, response, land = _patterns(g)
    rng = np.random.default_rng(0)
    enso_index = np.zeros(months.size)
    for t in range(1, months.size):  # a persistent ENSO-like index, K
        enso_index[t] = 0.9 * enso_index[t - 1] + 0.45 * rng.standard_normal()
    sst = 300.0 - 25.0 * np.sin(np.deg2rad(g.lat))[None, :, None] ** 2 + enso[None] * enso_index[:, None, None]
    sst = np.where(land[None] > 0.5, np.nan, sst)
    siconc = np.where(np.isnan(sst), np.nan, np.clip((g.lat[None, :, None] - 60) / 30, 0, 1) * np.ones_like(sst))
    forcing = np.stack([sst, siconc], axis=1)
    forcing_channels = [V.channel("sst"), V.channel("siconc")]

    # Realisation 0 = the prepared state, one file per year.
    state, nao0 = _world(months, enso_index, seed=100)
    years = months.astype("datetime64[Y]").astype(int) + 1970
    state_files = []
    for y in np.unique(years):
        sel = years == y
        ds = channels_to_dataset(state[sel], V.STATE, skeleton(g, months[sel]))
        ds = channels_to_dataset(forcing[sel], forcing_channels, ds)
        path = root / "prepared" / "state" / f"{y}.nc"
        write(ds, path)
        state_files.append(path)
    write(channels_to_dataset(forcing, forcing_channels, skeleton(g, months)), root / "prepared" / "forcing.nc")
    statics = np.stack([np.zeros(g.shape)] * 4 + [land])[None]
    write(channels_to_dataset(statics, V.STATIC, skeleton(g), leading=("one",)).isel(one=0),
          root / "prepared" / "statics.nc")

    # Truth: independent realisations, exact response, planted modes.
    truth = root / "truth"
    for k in range(1, REALIZATIONS):
        real, _ = _world(months, enso_index, seed=100 + k)
        write(channels_to_dataset(real, V.STATE, skeleton(g, months)), truth / "realizations" / f"r{k}.nc")
    scales = _scales()
    exact = np.stack([dk * scales * response[None] for dk in (2.0, 4.0)])
    ds = channels_to_dataset(exact, V.STATE, skeleton(g), leading=("experiment",))
    write(ds.assign_coords(experiment=["aimip-p2k", "aimip-p4k"]), truth / "response.nc")
    modes = skeleton(g, months)
    modes["enso_index"] = xr.DataArray(enso_index.astype(np.float32), dims="time", attrs={"units": "K"})
    modes["nao_index"] = xr.DataArray(nao0.astype(np.float32), dims="time", attrs={"units": "1"})
    for name, pattern in (("enso_pattern", enso), ("nao_pattern", nao)):
        maps = channels_to_dataset((scales * pattern[None])[None], V.STATE, skeleton(g), leading=("one",))
        for var in V.variables(V.STATE):
            modes[f"{name}_{var}"] = maps[var].isel(one=0)
    modes["enso_pattern_sst"] = xr.DataArray(np.where(land > 0.5, np.nan, enso).astype(np.float32),
                                             dims=("lat", "lon"), attrs={"units": "K K-1"})
    write(modes, truth / "modes.nc")

    # The "emulator": same world, other noise, biased, damped NAO; warmed runs share seeds.
    rollouts = []
    for exp, dk in protocol.SST_OFFSET_K.items():
        for first in range(1, MEMBERS + 1, BATCH):
            last = min(first + BATCH - 1, MEMBERS)
            members = [_world(months, enso_index, seed=1000 + m, nao_amp=NAO_DAMPING, bias=BIAS, offset=dk)[0]
                       for m in range(first, last + 1)]
            ds = channels_to_dataset(np.stack(members), V.STATE, skeleton(g, months),
                                     leading=("member", "time"))
            ds = ds.assign_coords(member=np.arange(first, last + 1))
            ds["member_seed"] = xr.DataArray(np.arange(first, last + 1, dtype=np.int64), dims="member")
            ds.attrs.update(experiment_id=exp, sst_offset_K=dk, checkpoint_sha256="0" * 64, mdiff_version="test")
            path = root / "rollout" / exp / f"members_{first:03d}-{last:03d}.nc"
            write(ds, path)
            rollouts.append(path)
    return Inputs(rollouts, state_files, root / "prepared" / "forcing.nc", root / "prepared" / "statics.nc", truth)


def _settings() -> dict:
    return {"grid": {"nlat": GRID.nlat, "nlon": GRID.nlon}, "source": "synthetic",
            "evaluate": {"analysis": ANALYSIS, "periods": PERIODS}}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Inputs:
    return write_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def report(world, tmp_path_factory) -> Path:
    """The report, made through the command line as the workflow rule runs it."""
    out = tmp_path_factory.mktemp("report")
    argv = ["evaluate", "--settings", json.dumps(_settings()),
            "--rollout", *map(str, world.rollout), "--state", *map(str, world.state),
            "--forcing", str(world.forcing), "--statics", str(world.statics),
            "--truth", str(world.truth), "--output", str(out)]
    assert cli_main(argv) == 0
    return out


def _scores(report: Path) -> dict:
    doc = json.loads((report / "scores.json").read_text())
    return {k: v["value"] for k, v in doc["scores"].items()}


def test_scores_recover_the_known_world(report):
    s = _scores(report)
    # E1: a bias of BIAS x scale everywhere (K for tas, hPa for psl) plus sampling noise.
    assert s["e1.bias_mean.tas.1979-1981"] == pytest.approx(BIAS, abs=0.05)
    assert s["e1.bias_mean.psl.1982-1984"] == pytest.approx(BIAS * 100 / 100, abs=0.05)  # Pa scale 100 -> hPa
    assert s["e1.bias_rms.tas.1979-1981"] == pytest.approx(BIAS, abs=0.1)
    assert s["perfect.bias_rms.tas.1979-1981"] == pytest.approx(BIAS, abs=0.1)
    # E2: the forced trend is 0.2 K per decade in both.
    assert s["e2.trend.tas.1979-1981.reference"] == pytest.approx(0.2, abs=0.15)
    assert s["e2.trend.tas.1979-1981.emulator"] == pytest.approx(0.2, abs=0.15)
    # E5: warmed runs share the members' seeds, so the response is exactly k per kelvin.
    _, _, response, _ = _patterns(GRID)
    k = float(M.area_mean(GRID, response))
    for exp in ("aimip-p2k", "aimip-p4k"):
        assert s[f"e5.sensitivity.tas.{exp}"] == pytest.approx(k, rel=1e-4)
        assert s[f"e5.sensitivity.pr.{exp}"] == pytest.approx(k * 3e-6 * 86400, rel=1e-3)
        assert s[f"perfect.response.tas.{exp}.sensitivity_truth"] == pytest.approx(k, rel=1e-6)
        assert s[f"perfect.response.zg500.{exp}.pattern_correlation"] == pytest.approx(1.0, abs=1e-4)
        assert s[f"perfect.response.ta850.{exp}.amplitude_ratio"] == pytest.approx(1.0, abs=1e-3)
    # E3: the planted teleconnection is recovered, by emulator and reference alike.
    assert s["perfect.enso.nino34_vs_planted_index_correlation"] > 0.95
    for v in ("tas", "pr", "zg500"):
        assert s[f"e3.regression.{v}.pattern_correlation"] > 0.8
        assert s[f"perfect.enso.{v}.pattern_correlation_emulator"] > 0.85
        assert s[f"perfect.enso.{v}.amplitude_ratio_emulator"] == pytest.approx(1.0, abs=0.25)
    # NAO: right pattern, damped amplitude (variance ~ NAO_DAMPING^2 of the truth's).
    assert s["nao.pattern_correlation"] > 0.9
    assert s["perfect.nao.pattern_correlation_emulator"] > 0.9
    assert s["perfect.nao.pattern_correlation_truth"] > 0.9
    assert 0.15 < s["perfect.nao.variance_ratio"] < 0.5
    assert 0.1 < s["nao.variance_ratio"] < 0.6
    # Spread and variance: the emulator's noise equals the truth's away from the NAO sector.
    assert s["spread.tas.ratio"] == pytest.approx(1.0, abs=0.15)
    assert s["perfect.variance_ratio.tas"] == pytest.approx(1.0, abs=0.2)
    assert s["stability.aimip.nonfinite_values"] == 0
    # Every score has units and a description; none is NaN where data exist.
    doc = json.loads((report / "scores.json").read_text())
    assert all(v["units"] and v["description"] for v in doc["scores"].values())
    assert all(v["value"] is not None for v in doc["scores"].values())
    assert doc["experiments"]["aimip"]["members"] == MEMBERS


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.src: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.src.append(dict(attrs)["src"])


def test_html_references_only_existing_figures(report):
    parser = _Images()
    parser.feed((report / "index.html").read_text())
    assert len(parser.src) == 6
    for src in parser.src:
        assert not re.match(r"^[a-z]+:", src), f"{src}: figures must be relative paths"
        assert (report / src).is_file(), f"index.html references {src}, which does not exist"
    made = {p.name for p in (report / "figures").glob("*.png")}
    assert made == {Path(s).name for s in parser.src}


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_screenshot_shows_the_figures(report, tmp_path):
    if _chromium() is None:
        skip_unless_ci("Debian's chromium is not installed (apt-get install chromium)")
    import matplotlib.image as mpimg

    shot = tmp_path / "page.png"
    width, height = 1280, 2400
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", f"--screenshot={shot}",
           f"--window-size={width},{height}", (report / "index.html").resolve().as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[:2] == (height, width)
    # Blank or broken-image pages are white/grey; the maps' red-blue colours prove figures drew.
    saturation = img.max(axis=-1) - img.min(axis=-1)
    assert (saturation > 0.3).mean() > 0.02, "no coloured pixels: figures not rendered"
    assert img.std() > 0.1


def test_missing_rollout_file_is_named(world, tmp_path):
    cfg = C.from_dict(C.Config, _settings())
    missing = world.rollout[0].with_name("members_009-009.nc")
    bad = Inputs([*world.rollout, missing], world.state, world.forcing, world.statics, world.truth)
    with pytest.raises(PreparedDataError, match="members_009-009.nc: file does not exist"):
        evaluate(cfg, bad, tmp_path)


def test_short_rollout_is_an_error_naming_variable(world, tmp_path):
    cfg = C.from_dict(C.Config, _settings())
    short = tmp_path / "rollout" / "aimip" / "members_001-001.nc"
    with xr.open_dataset(world.rollout[0]) as ds:
        write(ds.isel(time=slice(0, 40)).load(), short)
    bad = Inputs([short], world.state, world.forcing, world.statics, world.truth)
    with pytest.raises(PreparedDataError, match=r"members_001-001.nc.*variable 'tas'.*missing \d+ month"):
        evaluate(cfg, bad, tmp_path / "out")


def test_config_errors():
    with pytest.raises(C.ConfigError, match="outside evaluate.analysis"):
        C.from_dict(C.Config, {"evaluate": {"analysis": ["1979-01", "1990-12"],
                                            "periods": [["1979-01", "2014-12"]]}})
    cfg = C.from_dict(C.Config, {**_settings(), "evaluate": {"analysis": ANALYSIS, "periods": PERIODS,
                                                             "variables": ["tas", "t2m"]}})
    with pytest.raises(C.ConfigError, match=r"unknown state channel\(s\) \['t2m'\]"):
        evaluate(cfg, Inputs([], [], Path("x"), Path("y"), None), "unused")


def test_era5_report_has_no_perfect_model_scores(world, tmp_path):
    cfg = C.from_dict(C.Config, {**_settings(), "source": "era5"})
    with pytest.raises(PreparedDataError, match="truth exists only for the synthetic world"):
        evaluate(cfg, world, tmp_path / "bad")
    plain = Inputs(world.rollout, world.state, world.forcing, world.statics, None)
    doc = evaluate(cfg, plain, tmp_path / "report")
    assert doc["scores"] and not any(k.startswith("perfect.") for k in doc["scores"])
    assert "spread.tas.truth" not in doc["scores"]
    assert doc["scores"]["e5.sensitivity.tas.aimip-p4k"]["value"] == pytest.approx(
        float(M.area_mean(GRID, _patterns(GRID)[2])), rel=1e-4)
    parser = _Images()
    parser.feed((tmp_path / "report" / "index.html").read_text())
    assert parser.src and all((tmp_path / "report" / s).is_file() for s in parser.src)


def test_report_on_the_synthesizer_truth(tiny_world, tmp_path):
    """The truth layout of `mdiff synthesize` (conftest's tiny world) reads and scores as meant.

    Stand-in rollouts: realisations 0 and 1 as two members; the warmed runs add the exact
    response, so the perfect-model response scores must be 1 up to float32 round-off.
    """
    from mdiff.data.prepared import dataset_to_channels, open_checked

    g = tiny_world.grid
    months = month_range(tiny_world.run_start, tiny_world.run_end)
    state = np.concatenate([dataset_to_channels(open_checked(p), V.STATE) for p in tiny_world.state_files])
    r1 = dataset_to_channels(open_checked(tiny_world.truth / "realizations" / "r1.nc"), V.STATE)
    members = np.stack([state, r1]).astype(np.float64)
    exact = dataset_to_channels(open_checked(tiny_world.truth / "response.nc"), V.STATE)  # (2, C, lat, lon)
    rollouts = []
    for exp, add in (("aimip", 0.0), ("aimip-p2k", exact[0]), ("aimip-p4k", exact[1])):
        ds = channels_to_dataset(members + add, V.STATE, skeleton(g, months), leading=("member", "time"))
        ds.attrs.update(experiment_id=exp, checkpoint_sha256="stand-in")
        path = tmp_path / "rollout" / exp / "members_001-002.nc"
        write(ds, path)
        rollouts.append(path)
    cfg = C.from_dict(C.Config, {"grid": {"nlat": g.nlat, "nlon": g.nlon}, "source": "synthetic"})
    inputs = Inputs(rollouts, tiny_world.state_files, tiny_world.forcing, tiny_world.statics, tiny_world.truth)
    doc = evaluate(cfg, inputs, tmp_path / "report")
    s = {k: v["value"] for k, v in doc["scores"].items()}
    assert all(v is not None for v in s.values()), [k for k, v in s.items() if v is None]
    for v in ("tas", "ts", "pr", "zg500", "ta850"):
        for exp in ("aimip-p2k", "aimip-p4k"):
            assert s[f"perfect.response.{v}.{exp}.pattern_correlation"] == pytest.approx(1.0, abs=1e-3)
            assert s[f"perfect.response.{v}.{exp}.amplitude_ratio"] == pytest.approx(1.0, abs=1e-2)
            assert s[f"e5.sensitivity.{v}.{exp}"] == pytest.approx(
                s[f"perfect.response.{v}.{exp}.sensitivity_truth"], rel=1e-2)
    assert s["perfect.enso.nino34_vs_planted_index_correlation"] > 0.7
    assert s["perfect.enso.pr.pattern_correlation_truth"] > 0.7
    assert s["perfect.nao.pattern_correlation_truth"] > 0.8
    # Members are truth realisations: the emulator's variance and spread match the truth's.
    assert s["perfect.variance_ratio.tas"] == pytest.approx(1.0, abs=0.1)
    assert s["stability.aimip.nonfinite_values"] == 0
