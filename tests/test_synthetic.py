import numpy as np
import pytest
import xarray as xr

from mdiff import variables as V
from mdiff.data import prepared as P
from mdiff.data.synthetic import SyntheticWorld, write_world
from mdiff.grid import LatLonGrid


def test_world_is_deterministic_for_a_seed(tmp_path):
    grid = LatLonGrid(9, 16)
    for run in ("a", "b"):
        write_world(grid, "1978-10", "1980-03", 3, 1, 0.0, tmp_path / run, None, progress=False)
    for name in ("state/1979.nc", "forcing.nc", "statics.nc"):
        a, b = (xr.open_dataset(tmp_path / r / name) for r in ("a", "b"))
        xr.testing.assert_identical(a, b)
    other = SyntheticWorld(grid, P.month_range("1978-10", "1980-03"), 4)
    this = SyntheticWorld(grid, P.month_range("1978-10", "1980-03"), 3)
    assert not np.allclose(this.block(slice(0, 6), this.drivers(0))["tas"],
                           other.block(slice(0, 6), other.drivers(0))["tas"])


def test_physical_ranges(tiny_world):
    ds = xr.open_mfdataset(tiny_world.state_files, data_vars="minimal", coords="minimal", compat="override").load()
    assert ds.sizes["time"] == 555
    ice = ds.siconc.values[np.isfinite(ds.siconc.values)]
    assert ice.min() >= 0 and ice.max() <= 1 and ice.max() > 0.5  # some real sea ice
    assert float(ds.hus.min()) >= 0
    assert float(ds.pr.min()) >= 0
    pr = ds.pr.values.ravel()
    assert ((pr - pr.mean()) ** 3).mean() > 0  # positively skewed
    trop = ds.ta.sel(plev=[100000, 85000, 70000, 50000, 25000]).values
    assert (np.diff(trop, axis=1) < 0).all(), "tropospheric temperature must fall with height"
    grid = tiny_world.grid
    assert 280 < float(grid.mean(ds.tas.values).mean()) < 295
    assert 95000 < float(grid.mean(ds.psl.values).mean()) < 105000
    assert 5000 < float(grid.mean(ds.z500.values).mean()) / 9.80665 < 6000
    assert 1.5 < float(grid.mean(ds.pr.values).mean()) * 86400 < 5  # mm/day
    assert (ds.tdas <= ds.tas).all()
    assert (ds.ps <= ds.psl + 1e-3).all()
    # SST undefined exactly over land (land fraction >= 0.5)
    lsm = xr.open_dataset(tiny_world.statics).lsm.values
    assert np.array_equal(np.isnan(ds.sst.values[0]), lsm >= 0.5)


def test_contract_of_prepared_files(tiny_world):
    ds = P.open_checked(tiny_world.state_files[1], tiny_world.grid)
    x = P.dataset_to_channels(ds, V.STATE)
    assert x.shape == (12, 37, *tiny_world.grid.shape) and x.dtype == np.float32
    assert ds.plev.attrs["units"] == "Pa" and ds.plev.values[0] == 100000
    t = P.times_of(ds)
    assert str(t[0]) == "1979-01"
    bnds = ds.time_bnds.values.astype("datetime64[M]")
    assert (bnds[:, 0] == t).all() and (bnds[:, 1] == t + 1).all()
    forcing = P.open_checked(tiny_world.forcing, tiny_world.grid)
    assert forcing.sizes["time"] == 555


def test_planted_response_recovered_from_two_runs(tmp_path):
    """Two worlds differing only in SST (+2 K over ocean) give back the stored exact response."""
    grid = LatLonGrid(17, 32)
    write_world(grid, "1978-10", "1984-12", 11, 1, 0.0, tmp_path / "ctl", tmp_path / "truth", progress=False)
    write_world(grid, "1978-10", "1984-12", 11, 1, 2.0, tmp_path / "warm", None, progress=False)
    files = lambda run: sorted((tmp_path / run / "state").glob("*.nc"))  # noqa: E731
    ctl = xr.open_mfdataset(files("ctl"), data_vars="minimal", coords="minimal", compat="override").sel(time=slice("1979", None)).mean("time")
    warm = xr.open_mfdataset(files("warm"), data_vars="minimal", coords="minimal", compat="override").sel(time=slice("1979", None)).mean("time")
    truth = xr.open_dataset(tmp_path / "truth" / "response.nc").sel(experiment="aimip-p2k")
    for var in ("tas", "ta", "psl", "pr", "hus", "z500"):
        diff = (warm[var] - ctl[var]).values
        np.testing.assert_allclose(diff, truth[var].values, rtol=1e-3, atol=1e-3 * np.abs(truth[var].values).max())
    # the SST itself moved by exactly +2 K over ocean, sea ice did not move
    sst = (warm.sst - ctl.sst).values
    assert np.allclose(sst[np.isfinite(sst)], 2.0, atol=1e-4)
    assert np.allclose((warm.siconc - ctl.siconc).fillna(0).values, 0.0)
    # land warms more than the ocean (the planted land amplification)
    lsm = xr.open_dataset(tmp_path / "ctl" / "statics.nc").lsm.values
    resp = truth.tas.values
    assert resp[lsm > 0.9].mean() > resp[lsm < 0.1].mean() > 1.0


def test_realizations_share_forcing_but_not_weather(tiny_world):
    r1 = xr.open_dataset(tiny_world.truth / "realizations" / "r1.nc")
    r0 = xr.open_mfdataset(tiny_world.state_files, data_vars="minimal", coords="minimal", compat="override").load()
    assert r1.sizes["time"] == r0.sizes["time"]
    assert not np.allclose(r0.psl.values, r1.psl.values)
    # forced signal (SST-driven) is common: time series of the global mean tas correlate
    g = tiny_world.grid
    a, b = g.mean(r0.tas.values), g.mean(r1.tas.values)
    a, b = a - a.mean(), b - b.mean()
    assert np.corrcoef(a, b)[0, 1] > 0.5


def test_planted_modes_file(tiny_world):
    modes = xr.open_dataset(tiny_world.truth / "modes.nc")
    assert modes.enso_index.sizes["time"] == 555
    assert 0.5 < float(modes.enso_index.std()) < 1.5
    nao = modes.nao_pattern_psl.values
    lat = tiny_world.grid.lat
    # Azores high positive, Icelandic low negative for a positive index
    assert nao[np.abs(lat - 39).argmin(), :].max() > 200
    assert nao[np.abs(lat - 62).argmin(), :].min() < -200


@pytest.mark.parametrize("offset", [0.0, 4.0])
def test_ocean_averages_shift_exactly(offset):
    """A uniform SST offset moves the ocean anomaly felt by land (L) and by the large scale
    (B) by exactly the offset everywhere, land included: the true response is linear in it."""
    grid = LatLonGrid(17, 32)
    world = SyntheticWorld(grid, P.month_range("1990-01", "1990-12"), 0)
    _, _, a0, l0, b0 = world.ocean_surface(slice(0, 12), 0.0)
    _, _, a1, l1, b1 = world.ocean_surface(slice(0, 12), offset)
    np.testing.assert_allclose(l1 - l0, offset, atol=1e-9)
    np.testing.assert_allclose(b1 - b0, offset, atol=1e-9)
    np.testing.assert_allclose((a1 - a0)[:, world.geo.ocean], offset, atol=1e-9)


def test_land_response_is_exercised_in_training_years():
    """The mechanism that warms land under +dK (the surrounding ocean's anomaly L) varies in
    the training years: its detrended std over land is not negligible next to 1 K."""
    grid = LatLonGrid(19, 36)
    world = SyntheticWorld(grid, P.month_range("1985-01", "2014-12"), 0)
    _, _, _, land_anomaly, _ = world.ocean_surface(slice(None), 0.0)
    series = land_anomaly[:, world.geo.lsm > 0.9]
    t = np.arange(series.shape[0], dtype=float)
    slope, intercept = np.polyfit(t, series, 1)
    resid = series - (slope * t[:, None] + intercept)
    assert 0.1 < float(resid.std(axis=0).mean()) < 1.0
