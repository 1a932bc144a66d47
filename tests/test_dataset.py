"""The month-pair dataset over prepared state files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from mdiff import variables as V
from mdiff.data import prepared as P
from mdiff.data.dataset import MonthPairDataset, load_statics
from mdiff.data.normalize import Normalizer
from mdiff.grid import LatLonGrid

GRID = LatLonGrid(17, 32)


def test_items_are_normalised_month_pairs(tiny_world):
    normalizer = Normalizer.load(tiny_world.stats)
    data = MonthPairDataset(tiny_world.state_files, normalizer, GRID, "1979-11", "1980-02")
    assert len(data) == 3  # pairs with both months in the period
    item = data[1]  # (1979-12, 1980-01)
    assert item["state"].shape == (V.N_STATE, *GRID.shape) and item["state"].dtype == torch.float32
    assert item["forcing"].shape == (V.N_FORCING, *GRID.shape) and item["forcing"].dtype == torch.float32
    assert int(item["month"]) == 12 and int(item["month_next"]) == 1
    assert torch.equal(item["state_next"], data[2]["state"])
    # standardised: moderate values; forcing zero where SST is undefined (land)
    assert item["state"].abs().mean() < 3
    land = item["forcing"][2] == 1
    assert land.any() and (item["forcing"][:2, land] == 0).all()
    # state equals the file's values through the normaliser
    ds = P.open_checked(tiny_world.prepared / "state" / "1979.nc")
    raw = P.dataset_to_channels(ds.sel(time="1979-12"), V.STATE)
    assert np.allclose(item["state"].numpy(), normalizer.normalize(raw, V.STATE_NAMES)[0], atol=1e-5)
    batch = data.batch([0, 2])
    assert batch["state"].shape == (2, V.N_STATE, *GRID.shape) and batch["month"].tolist() == [11, 1]


def test_statics_are_standardised(tiny_world):
    statics = load_statics(tiny_world.statics, GRID, Normalizer.load(tiny_world.stats))
    assert statics.shape == (V.N_STATIC, *GRID.shape)
    assert torch.isfinite(statics).all()


def test_missing_month_names_the_files_and_months(tiny_world, tmp_path):
    files = [p for p in tiny_world.state_files if p.stem != "1980"]
    with pytest.raises(P.PreparedDataError, match=r"1980-01.*missing"):
        MonthPairDataset(files, Normalizer.load(tiny_world.stats), GRID, "1979-06", "1980-06")


def test_duplicate_month_and_missing_variable_are_clear_errors(tiny_world, tmp_path):
    copy = tmp_path / "copy.nc"
    shutil.copy(tiny_world.prepared / "state" / "1980.nc", copy)
    files = [tiny_world.prepared / "state" / "1980.nc", copy]
    with pytest.raises(P.PreparedDataError, match="also in"):
        MonthPairDataset(files, Normalizer.load(tiny_world.stats), GRID, "1980-01", "1980-03")
    ds = P.open_checked(copy).drop_vars("ua")
    broken = tmp_path / "broken.nc"
    P.write(ds, broken)
    with pytest.raises(P.PreparedDataError, match=r"broken.nc.*'ua'.*missing"):
        MonthPairDataset([broken], Normalizer.load(tiny_world.stats), GRID, "1980-01", "1980-03")
