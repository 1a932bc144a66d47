import numpy as np
import pytest
import torch

from mdiff.grid import LatLonGrid, make_isht, make_sht


@pytest.mark.parametrize("nlat", [9, 37, 121])
def test_cell_areas_sum_to_4pi(nlat):
    grid = LatLonGrid(nlat, 2 * (nlat - 1))
    assert abs(grid.cell_area.sum() / (4 * np.pi) - 1) < 1e-10
    # pole rows are half cells: a quarter of the width in sin(lat) of a band next to them
    assert grid.cell_area[0, 0] < grid.cell_area[1, 0] / 2


def test_reference_grid_and_resolution():
    grid = LatLonGrid.from_resolution(1.5)
    assert grid.shape == (121, 240)
    assert grid.lat[0] == -90 and grid.lat[-1] == 90 and grid.lon[-1] == 358.5
    assert grid.coarsened(4) == (30, 60)
    with pytest.raises(ValueError, match="nlon = 2"):
        LatLonGrid(121, 241)


def test_area_weighted_mean_of_known_field():
    grid = LatLonGrid(121, 240)
    # mean of sin^2(lat) over the sphere is 1/3; cell-area weights integrate it to O(dlat^2)
    field = np.sin(np.deg2rad(grid.lat))[:, None] ** 2 * np.ones(grid.shape)
    assert abs(grid.mean(field) - 1 / 3) < 1e-4
    t = torch.as_tensor(field, dtype=torch.float64)
    assert abs(float(grid.mean(t)) - 1 / 3) < 1e-4


def test_masked_mean_uses_only_valid_points():
    grid = LatLonGrid(37, 72)
    field = np.where(grid.lat[:, None] > 0, 1.0, 5.0) * np.ones(grid.shape)
    assert grid.mean(field, mask=(grid.lat[:, None] > 0) * np.ones(grid.shape)) == pytest.approx(1.0)


def test_sht_round_trip_of_band_limited_field():
    grid = LatLonGrid(121, 240)
    lmax = mmax = grid.default_truncation()
    sht = make_sht(*grid.shape, lmax, mmax)
    isht = make_isht(*grid.shape, lmax, mmax)
    gen = torch.Generator().manual_seed(0)
    coeffs = torch.zeros(lmax, mmax, dtype=torch.complex64)
    coeffs[:20, :20] = torch.randn(20, 20, generator=gen, dtype=torch.complex64)
    coeffs = torch.tril(coeffs)  # m <= l
    coeffs[:, 0] = coeffs[:, 0].real  # real field: m = 0 coefficients are real
    field = isht(coeffs)
    back = isht(sht(field))
    assert float((back - field).abs().max() / field.abs().max()) < 1e-5
    assert sht.lmax == lmax and sht.mmax == mmax  # explicit truncation honoured
