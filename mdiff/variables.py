"""The one table of channels: every other part of mdiff derives from it.

A *channel* is one 2-D field the model sees (``ta850``); a *variable* is the name under
which channels of one family are stored in prepared files (``ta(time, plev, lat, lon)``).
Adding a state variable is one line in ``_STATE`` (or one level in ``PRESSURE_LEVELS_HPA``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["state", "forcing", "static"]
Transform = Literal["none", "sqrt", "logit"]
Regrid = Literal["conservative_normalised", "conservative", "none"]

PRESSURE_LEVELS_HPA: tuple[int, ...] = (1000, 850, 700, 500, 250, 100, 50)
LOGIT_EPS = 1e-3  # logit inputs are clipped to [eps, 1 - eps]

ERA5_PRESSURE_LEVELS = "reanalysis-era5-pressure-levels-monthly-means"
ERA5_SINGLE_LEVELS = "reanalysis-era5-single-levels-monthly-means"


@dataclass(frozen=True)
class Channel:
    name: str  # channel name used everywhere in mdiff, e.g. "ta850"
    variable: str  # variable name in prepared NetCDF files, e.g. "ta"
    level_hpa: int | None  # pressure level, None for single-level fields
    units: str  # physical units in prepared files (CF/udunits)
    standard_name: str
    long_name: str
    role: Role
    transform: Transform  # applied before standardisation
    era5_name: str  # CDS request name ("" where derived)
    era5_short: str  # variable name in ERA5 NetCDF files
    era5_dataset: str  # CDS data set ("" where derived)
    regrid: Regrid  # CDO remapping: normalised conservative, or plain for fluxes
    cmip_name: str | None  # AI-MIP/CMIP variable fed by this channel (None: not output)
    cmip_table: str | None = "Amon"
    # Physically plausible values of a monthly mean on the model grid, in ``units``: generous
    # (a value outside means broken data or a broken run, not an unusual climate), and tight
    # enough to catch the usual mix-ups (degC or hPa or percent or g/kg labelled in SI units,
    # fill values stored without a _FillValue attribute). Checked where data enter mdiff
    # (mdiff.data.checks) and on every month a rollout writes.
    plausible_range: tuple[float, float] = (float("-inf"), float("inf"))


@dataclass(frozen=True)
class _Family:
    variable: str
    units: str
    standard_name: str
    long_name: str
    transform: Transform
    era5_name: str
    era5_short: str
    cmip_name: str | None
    plausible_range: tuple[float, float]


# Plausible ranges (see Channel.plausible_range). Temperatures: 150..350 K (catches degC);
# humidity and precipitation: a hair below 0 is interpolation noise, the upper bounds catch
# g/kg and mm/day; pressures: catches hPa; fractions: [0, 1] (catches percent).
TEMPERATURE_RANGE_K = (150.0, 350.0)

_PRESSURE_FAMILIES = (
    _Family("ta", "K", "air_temperature", "Air temperature", "none", "temperature", "t", "ta", TEMPERATURE_RANGE_K),
    _Family("hus", "1", "specific_humidity", "Specific humidity", "sqrt", "specific_humidity", "q", "hus", (-1e-6, 0.1)),
    _Family("ua", "m s-1", "eastward_wind", "Eastward wind", "none", "u_component_of_wind", "u", "ua", (-200.0, 200.0)),
    _Family("va", "m s-1", "northward_wind", "Northward wind", "none", "v_component_of_wind", "v", "va", (-200.0, 200.0)),
)

# name, units, standard_name, long_name, transform, era5 name, era5 short, cmip name, regrid, plausible range
_STATE_SINGLE = (
    ("z500", "m2 s-2", "geopotential", "Geopotential at 500 hPa", "none", "geopotential", "z", "zg", "conservative_normalised", (3.0e4, 7.0e4)),
    ("ps", "Pa", "surface_air_pressure", "Surface pressure", "none", "surface_pressure", "sp", "ps", "conservative_normalised", (3.0e4, 1.2e5)),
    ("ts", "K", "surface_temperature", "Skin temperature", "none", "skin_temperature", "skt", "ts", "conservative_normalised", TEMPERATURE_RANGE_K),
    ("tas", "K", "air_temperature", "2 m temperature", "none", "2m_temperature", "t2m", "tas", "conservative_normalised", TEMPERATURE_RANGE_K),
    ("tdas", "K", "dew_point_temperature", "2 m dewpoint temperature", "none", "2m_dewpoint_temperature", "d2m", "huss", "conservative_normalised", TEMPERATURE_RANGE_K),
    ("uas", "m s-1", "eastward_wind", "10 m eastward wind", "none", "10m_u_component_of_wind", "u10", "uas", "conservative_normalised", (-100.0, 100.0)),
    ("vas", "m s-1", "northward_wind", "10 m northward wind", "none", "10m_v_component_of_wind", "v10", "vas", "conservative_normalised", (-100.0, 100.0)),
    # A flux: plain conservative remapping keeps the area integral.
    ("pr", "kg m-2 s-1", "precipitation_flux", "Mean total precipitation rate", "sqrt", "mean_total_precipitation_rate", "mtpr", "pr", "conservative", (-1e-6, 0.1)),
    ("psl", "Pa", "air_pressure_at_mean_sea_level", "Mean sea-level pressure", "none", "mean_sea_level_pressure", "msl", "psl", "conservative_normalised", (8.0e4, 1.2e5)),
)

_FORCING = (
    Channel("sst", "sst", None, "K", "sea_surface_temperature", "Sea surface temperature (monthly mean)",
            "forcing", "none", "sea_surface_temperature", "sst", ERA5_SINGLE_LEVELS, "conservative_normalised", None, None,
            plausible_range=(260.0, 320.0)),
    Channel("siconc", "siconc", None, "1", "sea_ice_area_fraction", "Sea-ice fraction (monthly mean)",
            "forcing", "logit", "sea_ice_cover", "siconc", ERA5_SINGLE_LEVELS, "conservative_normalised", None, None,
            plausible_range=(0.0, 1.0)),
    # 1 where SST is undefined (land), 0 over ocean: tells the model where sst/siconc mean nothing.
    Channel("sst_undefined", "sst_undefined", None, "1", "", "SST undefined (land) mask",
            "forcing", "none", "", "", "", "none", None, None, plausible_range=(0.0, 1.0)),
)

_STATIC = (
    Channel("sdor", "sdor", None, "m", "", "Standard deviation of sub-gridscale orography",
            "static", "none", "standard_deviation_of_orography", "sdor", ERA5_SINGLE_LEVELS, "conservative_normalised", None, None,
            plausible_range=(0.0, 2000.0)),
    Channel("isor", "isor", None, "1", "", "Anisotropy of sub-gridscale orography",
            "static", "none", "anisotropy_of_sub_gridscale_orography", "isor", ERA5_SINGLE_LEVELS, "conservative_normalised", None, None,
            plausible_range=(0.0, 1.0)),
    Channel("anor", "anor", None, "radians", "", "Angle of sub-gridscale orography",
            "static", "none", "angle_of_sub_gridscale_orography", "anor", ERA5_SINGLE_LEVELS, "conservative_normalised", None, None,
            plausible_range=(-1.6, 1.6)),
    Channel("slor", "slor", None, "1", "", "Slope of sub-gridscale orography",
            "static", "none", "slope_of_sub_gridscale_orography", "slor", ERA5_SINGLE_LEVELS, "conservative_normalised", None, None,
            plausible_range=(0.0, 1.0)),
    Channel("lsm", "lsm", None, "1", "land_area_fraction", "Land-sea mask (land fraction)",
            "static", "none", "land_sea_mask", "lsm", ERA5_SINGLE_LEVELS, "conservative_normalised", None, None,
            plausible_range=(0.0, 1.0)),
)


def _state_channels() -> tuple[Channel, ...]:
    out = [
        Channel(f"{f.variable}{p}", f.variable, p, f.units, f.standard_name, f"{f.long_name} at {p} hPa",
                "state", f.transform, f.era5_name, f.era5_short, ERA5_PRESSURE_LEVELS,
                "conservative_normalised", f.cmip_name, plausible_range=f.plausible_range)
        for f in _PRESSURE_FAMILIES
        for p in PRESSURE_LEVELS_HPA
    ]
    for name, units, std, long, tr, era5, short, cmip, regrid, plausible in _STATE_SINGLE:
        dataset = ERA5_PRESSURE_LEVELS if name == "z500" else ERA5_SINGLE_LEVELS
        level = 500 if name == "z500" else None
        out.append(Channel(name, name, level, units, std, long, "state", tr, era5, short, dataset, regrid, cmip,
                           plausible_range=plausible))
    return tuple(out)


STATE: tuple[Channel, ...] = _state_channels()
FORCING: tuple[Channel, ...] = _FORCING
STATIC: tuple[Channel, ...] = _STATIC
ALL: tuple[Channel, ...] = STATE + FORCING + STATIC
BY_NAME: dict[str, Channel] = {c.name: c for c in ALL}

STATE_NAMES: tuple[str, ...] = tuple(c.name for c in STATE)
FORCING_NAMES: tuple[str, ...] = tuple(c.name for c in FORCING)
STATIC_NAMES: tuple[str, ...] = tuple(c.name for c in STATIC)
N_STATE, N_FORCING, N_STATIC = len(STATE), len(FORCING), len(STATIC)

# Variables of the prepared files: ta/hus/ua/va carry a plev axis, the rest are 2-D.
PRESSURE_VARIABLES: tuple[str, ...] = tuple(f.variable for f in _PRESSURE_FAMILIES)


def variables(channels: tuple[Channel, ...]) -> tuple[str, ...]:
    """Distinct file variables of ``channels``, in table order."""
    return tuple(dict.fromkeys(c.variable for c in channels))


def channel(name: str) -> Channel:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown channel {name!r}; known channels: {', '.join(BY_NAME)}") from None


def as_table() -> list[dict]:
    """The table as plain records (stored in checkpoints and printed by `mdiff variables`)."""
    from dataclasses import asdict

    return [asdict(c) for c in ALL]
