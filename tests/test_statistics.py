import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from mdiff.data import prepared as P
from mdiff.data.normalize import Normalizer, forward_transform, inverse_transform
from mdiff.data.statistics import compute_statistics


@pytest.mark.parametrize("transform", ["none", "sqrt", "logit"])
def test_transform_round_trip(transform):
    rng = np.random.default_rng(0)
    x = rng.uniform(1e-3, 1 - 1e-3, 10000) if transform == "logit" else rng.uniform(0, 0.03, 10000)
    assert np.abs(inverse_transform(forward_transform(x, transform), transform) - x).max() <= 1e-6


def test_logit_is_clipped():
    assert np.isfinite(forward_transform(np.array([0.0, 1.0]), "logit")).all()


def test_statistics_ignore_data_after_2014(tiny_world, tmp_path):
    files = tiny_world.state_files
    base = compute_statistics(files, tiny_world.statics, tiny_world.grid, ["1979-01", "2014-12"])
    changed = []
    for f in files:
        dst = tmp_path / f.name
        if int(f.stem) >= 2015:
            ds = xr.open_dataset(f).load()
            for var in ("tas", "ta", "pr", "sst"):
                ds[var] = ds[var] * 1.5
            P.write(ds, dst)
        else:
            shutil.copy(f, dst)
        changed.append(dst)
    after = compute_statistics(changed, tiny_world.statics, tiny_world.grid, ["1979-01", "2014-12"])
    assert after["channels"] == base["channels"]
    assert base["months"] == 36 * 12


def test_statistics_are_area_weighted_and_normalise(tiny_world):
    stats = Normalizer.load(tiny_world.stats)
    ds = xr.open_mfdataset(tiny_world.state_files, data_vars="minimal", coords="minimal", compat="override").sel(time=slice("1979", "2014")).load()
    from mdiff import variables as V

    x = P.dataset_to_channels(ds, V.STATE)
    y = stats.normalize(x, V.STATE_NAMES)
    w = tiny_world.grid.area_weights
    mean = (y * w).sum(axis=(-2, -1)).mean(axis=0)
    var = ((y - mean[None, :, None, None]) ** 2 * w).sum(axis=(-2, -1)).mean(axis=0)
    np.testing.assert_allclose(mean, 0, atol=1e-4)
    np.testing.assert_allclose(var, 1, atol=1e-3)
    back = stats.denormalize(y, V.STATE_NAMES)
    np.testing.assert_allclose(stats.normalize(back, V.STATE_NAMES), y, atol=1e-4)


def test_forcing_masks_undefined_sst(tiny_world):
    stats = Normalizer.load(tiny_world.stats)
    ds = xr.open_dataset(tiny_world.forcing)
    sst, ice = ds.sst.values[:3], ds.siconc.values[:3]
    f = stats.forcing(sst, ice)
    land = np.isnan(sst)
    assert f.shape == (3, 3, *tiny_world.grid.shape)
    assert (f[:, 0][land] == 0).all() and (f[:, 2][land] == 1).all() and (f[:, 2][~land] == 0).all()
    warm = stats.forcing(sst, ice, sst_offset_k=2.0)
    delta = (warm - f)[:, 0][~land] * stats.stats["sst"].std
    np.testing.assert_allclose(delta, 2.0, rtol=1e-4)
    assert (warm[:, 1:] == f[:, 1:]).all()  # sea ice and land mask unchanged


def test_missing_variable_gives_clear_error(tiny_world, tmp_path):
    bad = tmp_path / "1990.nc"
    xr.open_dataset(tiny_world.prepared / "state" / "1990.nc").drop_vars("psl").to_netcdf(bad)
    with pytest.raises(P.PreparedDataError) as err:
        compute_statistics([bad], tiny_world.statics, tiny_world.grid, ["1979-01", "2014-12"])
    assert str(bad) in str(err.value) and "'psl'" in str(err.value) and "Pa" in str(err.value)


def test_truncated_file_and_wrong_grid_give_clear_errors(tiny_world, tmp_path):
    src = tiny_world.prepared / "state" / "1990.nc"
    cut = tmp_path / "1990.nc"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(P.PreparedDataError, match="truncated or corrupt"):
        P.open_checked(cut)
    from mdiff.grid import LatLonGrid

    with pytest.raises(P.PreparedDataError, match="model grid"):
        P.open_checked(src, LatLonGrid(9, 16))


def test_stats_command_writes_the_statistics_file(tiny_world, tmp_path):
    from mdiff.data.statistics import read_statistics

    out = tmp_path / "normalization.nc"
    settings = json.dumps({"grid": {"nlat": 17, "nlon": 32}})
    subprocess.run([sys.executable, "-m", "mdiff.cli", "stats", "--settings", settings, "--state",
                    *map(str, tiny_world.state_files), "--statics", str(tiny_world.statics), "--output", str(out)],
                   check=True, capture_output=True)
    d = read_statistics(out)
    assert len(d["channels"]) == 37 + 2 + 5 and len(d["climatology"]) == 37 + 2 and d["period"] == ["1979-01", "2014-12"]
