"""The synthetic world: ERA5-like monthly fields with known truth (the embedded default).

Same channels, units, grid and calendar as prepared ERA5, so the whole pipeline runs and
can be *scored* without downloading anything. Built from a few analytic ingredients:

- geography: smooth continents (land fraction), mountain ranges, sub-grid orography statics;
- SST = climatology + seasonal cycle + warming trend + ENSO-like index x pattern + slow
  large-scale (decadal) modes + noise, sea ice from the (unperturbed) SST; both shared by
  every truth realisation;
- the atmosphere responds to SST as the real one does, through mechanisms that every
  year exercises: air over open water follows the local SST; land and ice-covered ocean
  warm with the SST anomaly of the *surrounding* ocean (heat and moisture carried inland:
  a normalised Gaussian average over ocean within ~20 degrees, ``L``); the air over sea ice,
  the circulation, sea-level pressure and the stratosphere respond to the large-scale ocean
  anomaly (the same average within ~40 degrees, ``B``: under the ice the SST is pinned at
  freezing, so only a wide reach sees open water that varies); the ENSO index E(t) drives planted
  teleconnections. ENSO, the decadal modes and the noise move ``L`` and ``B`` in the
  training years, so the response to a uniform warming is identifiable from them.
  Internal variability is an NAO-like dipole N(t) plus spatially coherent AR(1) noise.
  Temperature falls with height (lapse rate), humidity follows Clausius-Clapeyron,
  precipitation is positive and skewed (log-normal).

A uniform SST offset dK over ocean (the aimip-p2k/p4k protocol: sea ice unchanged) shifts
``L`` and ``B`` (normalised averages of the ocean anomaly) by exactly dK, so the true
response is known: ``truth/response.nc`` stores the exact time-mean difference of runs
with identical noise. Everything is deterministic for a seed;
the random inputs are low-dimensional time series, so a 46-year world at 1.5 deg takes
seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from mdiff import variables as V
from mdiff.grid import LatLonGrid
from mdiff.protocol import ANALYSIS, G0, SST_OFFSET_K, WARMED

from . import prepared as P

log = logging.getLogger(__name__)

FREEZING_K = 271.35  # sea water freezing point
SECONDS_PER_DAY = 86400.0
EXPERIMENT_OFFSETS = {e: SST_OFFSET_K[e] for e in WARMED}  # the warmed runs' SST offsets (K)
# Variables of the forcing file the world writes, in the table's order (sst, siconc).
FORCING_VARIABLES = V.variables(V.PREPARED_FORCING)
N_PATTERNS = 24  # coherent noise modes per field family
N_DECADAL = 4  # slow large-scale SST modes (PDO/AMO-like and a near-uniform one)
LAND_REACH_DEG = 20.0  # angular scale of the ocean that land feels (L)
BROAD_REACH_DEG = 40.0  # ... that the air over sea ice, the circulation and the stratosphere feel (B)
LEVELS = np.array(V.PRESSURE_LEVELS_HPA, dtype=np.float64)


def _gauss(x, x0, s):
    return np.exp(-(((x - x0) / s) ** 2))


def _dlon(lon, lon0):
    return (lon - lon0 + 180.0) % 360.0 - 180.0


def _blob(lat, lon, lat0, lon0, slat, slon):
    return np.exp(-((_dlon(lon, lon0) / slon) ** 2) - ((lat - lat0) / slat) ** 2)


def _ar1(rng, n_time, n_modes, rho):
    """Unit-variance AR(1) series, shape (n_time, n_modes)."""
    eps = rng.standard_normal((n_time, n_modes))
    out = np.empty_like(eps)
    out[0] = eps[0]
    scale = np.sqrt(1.0 - rho**2)
    for t in range(1, n_time):
        out[t] = rho * out[t - 1] + scale * eps[t]
    return out


class OceanAverage:
    """Normalised Gaussian average of an ocean field around every point of the sphere.

    ``A[f](p) = sum_q K(p, q) a_q f_q / sum_q K(p, q) a_q`` over ocean points q, with
    ``K = exp((cos(angle) - 1) / s^2)`` (a Gaussian of angular scale s) and cell areas
    a_q. A uniform field comes back exactly uniform. The kernel depends on longitude only
    through the difference, so the sum over longitudes is a circular convolution (FFT).
    """

    def __init__(self, grid: LatLonGrid, ocean: np.ndarray, scale_deg: float):
        phi = np.deg2rad(grid.lat)
        dlon = np.deg2rad(grid.lon)
        cos_angle = (np.sin(phi)[:, None, None] * np.sin(phi)[None, :, None]
                     + np.cos(phi)[:, None, None] * np.cos(phi)[None, :, None] * np.cos(dlon)[None, None, :])
        kernel = np.exp((cos_angle - 1.0) / np.deg2rad(scale_deg) ** 2) * grid.cell_area[None, :, :1]
        self.nlon = grid.nlon
        self.kernel_hat = np.fft.rfft(kernel, axis=-1)  # (lat out, lat in, m)
        self.ocean = ocean.astype(np.float64)
        self.weight = np.maximum(self._smooth(self.ocean), 1e-12)

    def _smooth(self, f: np.ndarray) -> np.ndarray:
        spectrum = np.einsum("ijm,...jm->...im", self.kernel_hat, np.fft.rfft(f, axis=-1))
        return np.fft.irfft(spectrum, n=self.nlon, axis=-1)

    def __call__(self, field: np.ndarray) -> np.ndarray:
        """(..., lat, lon) -> the ocean average around every point (NaN-free input)."""
        return self._smooth(field * self.ocean) / self.weight


@dataclass(frozen=True)
class Geography:
    lsm: np.ndarray  # land fraction [0, 1]
    orography: np.ndarray  # m
    statics: dict[str, np.ndarray]

    @property
    def ocean(self) -> np.ndarray:
        """Where SST is defined (land fraction below one half)."""
        return self.lsm < 0.5


def make_geography(grid: LatLonGrid) -> Geography:
    lat, lon = np.meshgrid(grid.lat, grid.lon, indexing="ij")
    continents = [  # (lat0, lon0, half-width lat, half-width lon)
        (50, 255, 20, 35), (-15, 298, 25, 14), (52, 85, 20, 70), (5, 20, 26, 22),
        (-25, 134, 10, 16), (72, 318, 9, 14), (25, 45, 10, 14),
    ]
    lsm = np.zeros_like(lat)
    for lat0, lon0, slat, slon in continents:
        d = (_dlon(lon, lon0) / slon) ** 2 + ((lat - lat0) / slat) ** 2
        lsm = np.maximum(lsm, 0.5 * (1.0 + np.tanh(4.0 * (1.0 - d))))
    lsm = np.maximum(lsm, 0.5 * (1.0 + np.tanh(0.5 * (-68.0 - lat))))  # Antarctica
    lsm = np.clip(lsm, 0.0, 1.0)
    ranges = [  # (lat0, lon0, sigma lat, sigma lon, height m)
        (33, 87, 6, 14, 4500), (45, 250, 14, 5, 2500), (-20, 290, 22, 3, 3500),
        (72, 320, 7, 10, 2000), (0, 30, 15, 10, 1000),
    ]
    orog = sum(h * _blob(lat, lon, a, b, sa, sb) for a, b, sa, sb, h in ranges)
    orog = orog + 2500.0 * np.clip((-lat - 70.0) / 15.0, 0.0, 1.0)
    orog = orog * lsm
    dy, dx = np.gradient(orog)
    statics = {
        "sdor": 0.12 * orog + 15.0 * lsm,
        "isor": np.clip(0.25 + 0.5 * lsm * np.abs(np.sin(np.deg2rad(2 * lon + lat))), 0.0, 1.0),
        "anor": np.arctan(np.divide(dy, dx, out=np.zeros_like(dx), where=np.abs(dx) > 1e-9)),
        "slor": 1e-3 + 8e-6 * np.hypot(dx, dy) + 2e-3 * lsm,
        "lsm": lsm,
    }
    return Geography(lsm=lsm, orography=orog, statics=statics)


def _decadal_patterns(grid: LatLonGrid, rng: np.random.Generator, n: int) -> np.ndarray:
    """n planetary-scale SST patterns: the first near-uniform (positive everywhere), the
    others of zonal wavenumber <= 2; unit RMS."""
    lat, lon = np.meshgrid(np.deg2rad(grid.lat), np.deg2rad(grid.lon), indexing="ij")
    out = np.empty((n, *grid.shape))
    out[0] = 0.6 + 0.4 * np.cos(lat)
    for k in range(1, n):
        m = int(rng.integers(0, 3))
        a, b = rng.uniform(0, 2 * np.pi, 2)
        out[k] = np.cos(lat) * np.cos(m * lon + a) * np.cos((1 + k % 2) * lat + b)
    return out / np.sqrt(grid.mean(out**2))[:, None, None]


def _patterns(grid: LatLonGrid, rng: np.random.Generator, n: int) -> np.ndarray:
    """n smooth unit-RMS global patterns (low zonal and meridional wavenumbers)."""
    lat, lon = np.meshgrid(np.deg2rad(grid.lat), np.deg2rad(grid.lon), indexing="ij")
    out = np.empty((n, *grid.shape))
    for k in range(n):
        m, wave = rng.integers(0, 6), rng.integers(1, 7)
        a, b = rng.uniform(0, 2 * np.pi, 2)
        p = np.cos(lat) ** m * np.cos(m * lon + a) * np.cos(wave * lat + b)
        p -= grid.mean(p)
        out[k] = p / np.sqrt(grid.mean(p**2))
    return out


class SyntheticWorld:
    """The world for one grid, period and seed; fields are produced a block of months at a time."""

    def __init__(self, grid: LatLonGrid, months: np.ndarray, seed: int):
        self.grid = grid
        self.months = months
        self.seed = seed
        self.geo = make_geography(grid)
        self.lat, self.lon = np.meshgrid(grid.lat, grid.lon, indexing="ij")
        self.phi = np.deg2rad(self.lat)
        rng = np.random.default_rng([seed, 0])  # forcing: shared by all realisations
        self.patterns = _patterns(grid, rng, N_PATTERNS)
        n = len(months)
        self.enso = 0.9 * _ar1(rng, n, 1, 0.93)[:, 0]  # K, ~ Nino3.4 anomaly
        self.sst_noise = 0.3 / np.sqrt(N_PATTERNS) * _ar1(rng, n, N_PATTERNS, 0.8)
        # slow modes: a near-uniform one and three planetary-scale ones (~5-year memory); their
        # 0.4 K exercises the response to large-scale warming in the training years
        self.decadal = 0.4 * _ar1(rng, n, N_DECADAL, 0.985)
        self.decadal_patterns = _decadal_patterns(grid, rng, N_DECADAL)
        self.land_reach = OceanAverage(grid, self.geo.ocean, LAND_REACH_DEG)
        self.broad_reach = OceanAverage(grid, self.geo.ocean, BROAD_REACH_DEG)
        self.years_since_1979 = (months - np.datetime64("1979-01", "M")).astype(float) / 12.0
        self.moy = P.month_of_year(months)
        self._planted_patterns()

    # ------------------------------------------------------------------ ingredients

    def _planted_patterns(self) -> None:
        lat, lon = self.lat, self.lon
        self.enso_sst = 1.1 * _blob(lat, lon, 0, 235, 9, 45) - 0.35 * (
            _blob(lat, lon, 15, 155, 8, 20) + _blob(lat, lon, -15, 155, 8, 20))
        # NAO-like dipole: Icelandic low / Azores high (Pa per unit index)
        self.nao_psl = 650.0 * (_blob(lat, lon, 38, 330, 10, 25) - _blob(lat, lon, 65, 330, 9, 30))
        self.nao_tas = 1.5 * _blob(lat, lon, 55, 20, 10, 30) - 1.0 * _blob(lat, lon, 60, 300, 8, 20)
        self.nao_u = 4.0 * _blob(lat, lon, 50, 330, 8, 35)
        # ENSO teleconnections per K of index
        self.enso_psl = (120.0 * _blob(lat, lon, -12, 130, 12, 25) - 120.0 * _blob(lat, lon, -17, 210, 12, 30)
                         - 180.0 * _blob(lat, lon, 50, 195, 10, 30))
        self.enso_tas_land = 0.6 * _blob(lat, lon, 55, 250, 12, 25) - 0.4 * _blob(lat, lon, 30, 270, 8, 20)
        self.enso_pr = 3.0 * _blob(lat, lon, 0, 200, 8, 40) - 1.5 * _blob(lat, lon, -5, 125, 10, 20)  # mm/day
        self.enso_u = 3.0 * (_blob(lat, lon, 28, 210, 7, 40) + _blob(lat, lon, -28, 210, 7, 40))
        # Known linear responses per K of the surrounding (L) or large-scale (B) ocean anomaly
        s2 = np.sin(self.phi) ** 2
        self.resp_land = 1.4 + 0.8 * s2
        self.resp_ice = 1.8 + 1.0 * s2
        self.resp_psl = -60.0 * _gauss(np.abs(self.lat), 65, 12) + 30.0 * _gauss(np.abs(self.lat), 35, 12)
        self.resp_u = 0.5 * _gauss(np.abs(self.lat), 48, 8)

    def sst_climatology(self, moy: np.ndarray) -> np.ndarray:
        """Seasonal SST climatology (K) for months of year, shape (T, lat, lon), unclipped."""
        phi, lat, lon = self.phi, self.lat, self.lon
        base = 269.5 + 31.5 * np.cos(phi) ** 2 + 1.5 * _blob(lat, lon, 0, 150, 10, 30) \
            - 2.0 * _blob(lat, lon, -2, 260, 5, 25)
        ann = np.cos(2 * np.pi * (moy - 7) / 12.0)[:, None, None]
        return base + 3.0 * np.sin(2 * phi) * ann

    def seasonal(self, moy: np.ndarray) -> np.ndarray:
        """+1 in July, -1 in January, shape (T, 1, 1)."""
        return np.cos(2 * np.pi * (moy - 7) / 12.0)[:, None, None]

    def ocean_surface(self, sl: slice, sst_offset: float):
        """SST (everywhere, K), sea ice (unperturbed), the SST anomaly, and the ocean
        anomaly felt by land and ice (L) and by the large scale (B) for a block of months;
        a uniform offset dK shifts the anomaly, L and B by exactly dK over ocean."""
        moy = self.moy[sl]
        clim = self.sst_climatology(moy)
        trend = 0.015 * self.years_since_1979[sl][:, None, None]
        noise = np.einsum("tk,kij->tij", self.sst_noise[sl], self.patterns)
        slow = np.einsum("tk,kij->tij", self.decadal[sl], self.decadal_patterns)
        raw = clim + trend + self.enso[sl][:, None, None] * self.enso_sst + slow + noise
        ice = np.clip((FREEZING_K + 1.0 - raw) / 3.0, 0.0, 1.0) * (1.0 - self.geo.lsm)
        sst = np.maximum(raw, FREEZING_K) + sst_offset
        anomaly = sst - np.maximum(clim, FREEZING_K)
        return sst, ice, anomaly, self.land_reach(anomaly), self.broad_reach(anomaly)

    def global_index(self, sst_offset: float = 0.0) -> np.ndarray:
        """G(t): the area-weighted global-mean ocean SST anomaly (K), every month."""
        _, _, anomaly, _, _ = self.ocean_surface(slice(None), sst_offset)
        return self.grid.mean(anomaly, mask=self.geo.ocean.astype(float))

    def drivers(self, realization: int) -> dict[str, np.ndarray]:
        """Internal variability of one realisation: NAO index and coherent noise per family."""
        rng = np.random.default_rng([self.seed, 1, realization])
        n = len(self.months)
        d = {"nao": _ar1(rng, n, 1, 0.3)[:, 0]}
        for name, rho in (("t", 0.5), ("tup", 0.4), ("p", 0.3), ("u", 0.3), ("v", 0.2), ("q", 0.3),
                          ("pr", 0.2), ("dew", 0.3)):
            d[name] = _ar1(rng, n, N_PATTERNS, rho)
        return d

    def _noise(self, coeffs: np.ndarray, scale: float) -> np.ndarray:
        """Coherent noise with point-wise RMS ``scale`` on average."""
        return (scale / np.sqrt(N_PATTERNS)) * np.einsum("tk,kij->tij", coeffs, self.patterns)

    # ----------------------------------------------------------------------- fields

    def block(self, sl: slice, drivers: dict, sst_offset: float = 0.0) -> dict[str, np.ndarray]:
        """All state variables and forcing for months ``sl``: {variable: (T[, plev], lat, lon)}."""
        geo, phi, lat = self.geo, self.phi, self.lat
        lsm, h = geo.lsm, geo.orography
        moy = self.moy[sl]
        ann = self.seasonal(moy)
        winter = np.where(lat > 0, -ann, ann)  # +1 in local mid-winter
        sst, ice, sst_anom, L, B = self.ocean_surface(sl, sst_offset)
        E = self.enso[sl][:, None, None]
        N = drivers["nao"][sl][:, None, None] * (1.1 + 0.5 * np.cos(2 * np.pi * (moy - 1) / 12.0))[:, None, None]
        s2 = np.sin(phi) ** 2

        # near-surface air temperature: open water follows the local SST, land the surrounding
        # ocean's anomaly L, sea ice the large-scale one B
        t_land = 300.0 - 45.0 * s2 + 14.0 * np.sin(phi) * ann * np.abs(np.sin(phi)) ** 0.5 - 0.0065 * h
        t_ice = 258.0 - 10.0 * winter * np.abs(np.sin(phi))
        open_water = sst - 1.0
        ocean_air = (1.0 - ice) * open_water + ice * (t_ice + self.resp_ice * B)
        anomaly = (lsm * (self.resp_land * L + E * self.enso_tas_land) + N * self.nao_tas
                   + self._noise(drivers["t"][sl], 0.8) * (0.4 + lsm))
        tas = (1.0 - lsm) * ocean_air + lsm * t_land + anomaly
        ts = tas + (1.0 - lsm) * (1.0 - ice) * 1.0 + lsm * (1.0 + 1.5 * ann * np.sin(phi)) - 1.5 * ice
        surface_anomaly = (1.0 - lsm) * (1.0 - ice) * sst_anom + (1.0 - lsm) * ice * self.resp_ice * B + anomaly

        # temperature profile: lapse rate in the troposphere, amplified response aloft
        height_km = 7.3 * np.log(1000.0 / LEVELS)
        lapse = 6.5 - 2.5 * s2  # K/km
        t_base = tas - surface_anomaly  # climatological part of tas
        up_noise = self._noise(drivers["tup"][sl], 0.7)
        ta = np.empty((len(moy), len(LEVELS), *self.grid.shape))
        for k, p in enumerate(LEVELS):
            if p >= 250:
                amp = 1.0 + 0.8 * (1.0 - p / 1000.0) * np.cos(phi) ** 2
                # (1.1 - p/1000): the 1000 hPa level is near, but not equal to, 2 m temperature
                ta[:, k] = (t_base - lapse * height_km[k] + surface_anomaly * amp
                            + up_noise * (1.1 - p / 1000.0) - 0.8 * (p == 1000) * (1.0 - lsm))
            else:
                t_strat = (193.0 + 25.0 * s2) if p == 100 else (205.0 + 15.0 * s2)
                ta[:, k] = (t_strat + 10.0 * ann * np.sin(phi) * s2 - 0.3 * B
                            + 0.15 * surface_anomaly + 0.5 * up_noise)

        # humidity: relative humidity x saturation (Clausius-Clapeyron); dry stratosphere
        rh0 = np.array([0.8, 0.72, 0.55, 0.45, 0.35])
        rh_noise = self._noise(drivers["q"][sl], 0.05)
        hus = np.empty_like(ta)
        for k, p in enumerate(LEVELS):
            if p >= 250:
                rh = np.clip(rh0[k] * (0.75 + 0.35 * np.cos(phi) ** 2) + rh_noise, 0.05, 1.0)
                hus[:, k] = rh * saturation_specific_humidity(ta[:, k], p * 100.0)
            else:
                # dry stratosphere, slightly moister with height (methane oxidation)
                hus[:, k] = (2.4e-6 if p == 100 else 3.0e-6) * np.exp((2.0 if p == 100 else -1.5) * rh_noise)

        # sea-level pressure: subtropical highs, subpolar lows, NAO dipole, ENSO (SO, PNA)
        psl = (101325.0 + 1000.0 * _gauss(np.abs(lat), 32, 10) - 1500.0 * _gauss(lat, 60, 10)
               - 2200.0 * _gauss(lat, -62, 8) + 1200.0 * lsm * winter * _gauss(lat, 52, 12)
               + self.resp_psl * B + E * self.enso_psl + N * self.nao_psl + self._noise(drivers["p"][sl], 250.0))
        ps = psl * np.exp(-h / 8000.0)
        t_mean = ta[:, :4].mean(axis=1)  # 1000-500 hPa layer
        z500 = G0 * (0.083 * (psl - 100000.0) + 20.29 * t_mean)

        # winds: jets (stronger, equatorward in winter), trades, Hadley cell, NAO, ENSO
        jet_lat = 42.0 - 4.0 * winter
        jet = (22.0 + 10.0 * winter) * _gauss(np.abs(lat), jet_lat, 11.0)
        vert = {1000: 0.2, 850: 0.35, 700: 0.5, 500: 0.7, 250: 1.0, 100: 0.6, 50: 0.3}
        trades = -7.0 * _gauss(np.abs(lat), 15, 8)
        low = {1000: 1.0, 850: 0.7, 700: 0.3}
        u_noise = self._noise(drivers["u"][sl], 2.0)
        v_noise = self._noise(drivers["v"][sl], 1.2)
        hadley = -2.0 * np.sin(np.pi * np.clip(lat / 30.0, -1, 1))
        ua = np.empty_like(ta)
        va = np.empty_like(ta)
        for k, p in enumerate(LEVELS):
            f = vert[int(p)]
            ua[:, k] = (f * (jet + self.resp_u * B + N * self.nao_u + E * self.enso_u + u_noise)
                        + low.get(int(p), 0.0) * trades)
            if p == 50:
                ua[:, k] += 20.0 * winter * _gauss(np.abs(lat), 60, 10)
            hadley_k = hadley * (low.get(int(p), 0.0) - (1.5 if p == 250 else 0.0))
            waves = (2.5 if p <= 500 else 1.0) * np.sin(np.deg2rad(2 * self.lon)) * np.cos(phi)
            va[:, k] = hadley_k + waves + f * v_noise
        uas = 0.75 * ua[:, 0] + 0.3 * u_noise
        vas = 0.75 * va[:, 0] + 0.3 * v_noise

        # dewpoint depression: small over ocean, larger over land
        depression = np.clip(2.0 + 6.0 * lsm - 1.0 * ice + self._noise(drivers["dew"][sl], 0.8), 0.2, None)
        tdas = tas - depression

        # precipitation (kg m-2 s-1): ITCZ following the sun, storm tracks; log-normal noise
        itcz = 9.0 * _gauss(lat, 6.0 * ann, 8.0)
        storm = 3.5 * (_gauss(lat, 45, 10) + _gauss(lat, -48, 10))
        p_mmday = np.maximum(0.6 + itcz + storm - 0.4 * lsm * _gauss(np.abs(lat), 25, 8) + E * self.enso_pr, 0.1)
        pr_noise = self._noise(drivers["pr"][sl], 0.35)
        pr = p_mmday * np.exp(0.03 * surface_anomaly + pr_noise - 0.5 * 0.35**2) / SECONDS_PER_DAY

        ocean = geo.ocean
        fields = {
            "ta": ta, "hus": hus, "ua": ua, "va": va, "z500": z500, "ps": ps, "ts": ts, "tas": tas,
            "tdas": tdas, "uas": uas, "vas": vas, "pr": pr, "psl": psl,
            "sst": np.where(ocean, sst, np.nan), "siconc": np.where(ocean, ice, np.nan),
        }
        for variable, generate in GENERATORS.items():
            fields[variable] = generate(self, fields, sl)
        missing = [v for v in V.variables(V.STATE) + FORCING_VARIABLES if v not in fields]
        if missing:
            raise KeyError(f"synthetic world: no generator for variable(s) {missing} of the variable table; "
                           "add one to mdiff.data.synthetic.GENERATORS (docs/variables.md)")
        return fields


# Generators of table variables that ``SyntheticWorld.block`` does not make itself:
# variable -> generate(world, fields, months) -> (T, lat, lon) values (pressure families:
# (T, plev, lat, lon)) in the table's units, from the fields of the same months made before it
# (physical units; ``months`` is the block's slice of ``world.months``). Adding a state
# variable: docs/variables.md.
Generator = Callable[[SyntheticWorld, dict[str, np.ndarray], slice], np.ndarray]
GENERATORS: dict[str, Generator] = {}


def saturation_specific_humidity(t_k: np.ndarray, p_pa: float) -> np.ndarray:
    """Saturation specific humidity (kg/kg) over water (Bolton 1980)."""
    es = 611.2 * np.exp(17.67 * (t_k - 273.15) / (t_k - 29.65))
    return 0.622 * es / (p_pa - 0.378 * es)


# -------------------------------------------------------------------------- writing


def _stack_state(fields: dict[str, np.ndarray]) -> np.ndarray:
    """(T, 37, lat, lon) in the table's channel order."""
    parts = []
    for ch in V.STATE:
        f = fields[ch.variable]
        if ch.variable in V.PRESSURE_VARIABLES:
            f = f[:, V.PRESSURE_LEVELS_HPA.index(ch.level_hpa)]
        parts.append(f)
    return np.stack(parts, axis=1).astype(np.float32)


def state_dataset(grid: LatLonGrid, months: np.ndarray, fields: dict, attrs: dict,
                  with_forcing: bool = True) -> xr.Dataset:
    ds = P.skeleton(grid, months, attrs)
    names = V.variables(V.STATE) + (FORCING_VARIABLES if with_forcing else ())
    for name in names:
        ds[name] = P.variable_array(name, fields[name])
    return ds


def statics_dataset(grid: LatLonGrid, geo: Geography, attrs: dict) -> xr.Dataset:
    stack = np.stack([geo.statics[c.name] for c in V.STATIC])[None].astype(np.float32)
    ds = P.skeleton(grid, None, attrs)
    return P.channels_to_dataset(stack[0], V.STATIC, ds, leading=())


def _attrs(seed: int, realization: int, offset: float) -> dict:
    from mdiff import __version__

    return {"source": f"mdiff synthetic world (seed {seed}, realization {realization}, "
                      f"SST offset {offset} K)", "mdiff_version": __version__,
            "synthetic_seed": seed, "synthetic_realization": realization, "sst_offset_K": offset}


def _time_mean(world: SyntheticWorld, drivers: dict, offset: float, idx: np.ndarray) -> dict:
    sums: dict[str, np.ndarray] = {}
    for start in range(0, len(idx), 60):
        block = world.block(slice(idx[start], idx[min(start + 60, len(idx)) - 1] + 1), drivers, offset)
        for k, v in block.items():
            if k in FORCING_VARIABLES:
                continue
            sums[k] = sums.get(k, 0.0) + v.sum(axis=0)
    return {k: v / len(idx) for k, v in sums.items()}


def write_world(grid: LatLonGrid, first: str, last: str, seed: int, realizations: int,
                sst_offset: float, prepared_dir: Path, truth_dir: Path | None,
                progress: bool = True) -> dict:
    """Write prepared state/forcing/statics (+ truth). Returns timings in seconds."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    months = P.month_range(first, last)
    world = SyntheticWorld(grid, months, seed)
    years = months.astype("datetime64[Y]").astype(int) + 1970
    drivers0 = world.drivers(0)
    attrs = _attrs(seed, 0, sst_offset)
    prepared_dir = Path(prepared_dir)
    P.write(statics_dataset(grid, world.geo, attrs), prepared_dir / "statics.nc")
    forcing_parts = []
    for year in tqdm(np.unique(years), desc="synthetic world", unit="yr", disable=not progress):
        idx = np.flatnonzero(years == year)
        fields = world.block(slice(idx[0], idx[-1] + 1), drivers0, sst_offset)
        P.write(state_dataset(grid, months[idx], fields, attrs), prepared_dir / "state" / f"{year}.nc")
        forcing_parts.append(np.stack([fields[v] for v in FORCING_VARIABLES], axis=1).astype(np.float32))
    ds = P.skeleton(grid, months, {**attrs, "forcing_meaning": "monthly means"})
    ds = P.channels_to_dataset(np.concatenate(forcing_parts), V.PREPARED_FORCING, ds)
    P.write(ds, prepared_dir / "forcing.nc")
    timings = {"world": time.perf_counter() - t0}
    if truth_dir is not None:
        t1 = time.perf_counter()
        write_truth(world, drivers0, realizations, sst_offset, Path(truth_dir), progress)
        timings["truth"] = time.perf_counter() - t1
    return timings


def write_truth(world: SyntheticWorld, drivers0: dict, realizations: int, sst_offset: float,
                truth_dir: Path, progress: bool = True) -> None:
    from tqdm import tqdm

    grid, months = world.grid, world.months
    analysis = np.flatnonzero((months >= P.parse_month(ANALYSIS[0])) & (months <= P.parse_month(ANALYSIS[1])))
    if analysis.size == 0:
        analysis = np.arange(len(months))
    # exact response: same noise, SST + dK over ocean, sea ice unchanged
    base = _time_mean(world, drivers0, sst_offset, analysis)
    response = {}
    for exp, dk in EXPERIMENT_OFFSETS.items():
        warm = _time_mean(world, drivers0, sst_offset + dk, analysis)
        response[exp] = {k: warm[k] - base[k] for k in base}
    ds = P.skeleton(grid, None, {"description": "exact time-mean response (perturbed - control) of the "
                                 f"synthetic world over {analysis.size} analysis months, identical noise"})
    diff = np.stack([_stack_state({k: v[None] for k, v in response[e].items()})[0] for e in EXPERIMENT_OFFSETS])
    ds = P.channels_to_dataset(diff, V.STATE, ds, leading=("experiment",))
    ds = ds.assign_coords(experiment=list(EXPERIMENT_OFFSETS))
    ds["sst_offset_K"] = xr.DataArray(list(EXPERIMENT_OFFSETS.values()), dims="experiment", attrs={"units": "K"})
    P.write(ds, truth_dir / "response.nc")

    # planted modes: indices and their patterns (finite difference of one unit, DJF mean)
    djf = np.flatnonzero(np.isin(world.moy, (12, 1, 2)))[:3]
    zero = {k: np.zeros_like(v) for k, v in drivers0.items()}
    enso_saved = world.enso.copy()
    world.enso[:] = 0.0
    ref = world.block(slice(djf[0], djf[-1] + 1), zero)
    zero["nao"][:] = 1.0
    nao = world.block(slice(djf[0], djf[-1] + 1), zero)
    zero["nao"][:] = 0.0
    world.enso[:] = 1.0
    enso = world.block(slice(djf[0], djf[-1] + 1), zero)
    world.enso[:] = enso_saved
    modes = P.skeleton(grid, months, {"description": "planted ENSO-like and NAO-like modes (per unit index, DJF)"})
    modes["enso_index"] = xr.DataArray(world.enso.astype(np.float32), dims="time",
                                       attrs={"units": "K", "long_name": "planted ENSO-like SST index"})
    modes["nao_index"] = xr.DataArray(drivers0["nao"].astype(np.float32), dims="time",
                                      attrs={"units": "1", "long_name": "planted NAO-like index (realization 0)"})
    # the other SST drivers, so that a score can take them out when it isolates ENSO
    modes["decadal_index"] = xr.DataArray(world.decadal.astype(np.float32), dims=("time", "mode"),
                                          attrs={"units": "K", "long_name": "slow large-scale SST modes"})
    modes["global_sst_index"] = xr.DataArray(world.global_index(sst_offset).astype(np.float32), dims="time",
                                             attrs={"units": "K", "long_name": "global-mean ocean SST anomaly"})
    for name, pert in (("enso", enso), ("nao", nao)):
        for var in V.variables(V.STATE) + ("sst",):
            pattern = np.nan_to_num((pert[var] - ref[var]).mean(axis=0))
            dims = ("plev", "lat", "lon") if pattern.ndim == 3 else ("lat", "lon")
            units = next(c.units for c in V.ALL if c.variable == var)
            modes[f"{name}_pattern_{var}"] = xr.DataArray(pattern.astype(np.float32), dims=dims,
                                                          attrs={"units": f"{units} per unit index"})
    modes = modes.assign_coords(plev=P.plev_coord())
    P.write(modes, truth_dir / "modes.nc")

    # independent realisations: same forcing, other internal variability
    (truth_dir / "realizations").mkdir(parents=True, exist_ok=True)
    for r in tqdm(range(1, realizations), desc="truth realizations", disable=not progress):
        drivers = world.drivers(r)
        parts = [world.block(slice(i, min(i + 60, len(months))), drivers, sst_offset)
                 for i in range(0, len(months), 60)]
        fields = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        P.write(state_dataset(grid, months, fields, _attrs(world.seed, r, sst_offset), with_forcing=False),
                truth_dir / "realizations" / f"r{r}.nc")
