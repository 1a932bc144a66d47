"""The one table of channels: every other part of mdiff derives from it.

A *channel* is one 2-D field the model sees (``ta850``); a *variable* is the name under
which channels of one family are stored in prepared files (``ta(time, plev, lat, lon)``).
Each channel carries where it comes from (ERA5), how the model sees it (transform), the
values it may take (plausible range), the AI-MIP variable it feeds and how (CMIP name,
units, conversion) and how the report shows it (display units). Adding a state variable is
one line in ``_STATE_SINGLE`` (or one family in ``_PRESSURE_FAMILIES``), its synthetic
generator and its CMOR table entry: docs/variables.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal

from mdiff.protocol import G0

Role = Literal["state", "forcing", "static"]
Transform = Literal["none", "sqrt", "logit"]
Regrid = Literal["conservative_normalised", "conservative", "none"]

PRESSURE_LEVELS_HPA: tuple[int, ...] = (1000, 850, 700, 500, 250, 100, 50)
LOGIT_EPS = 1e-3  # logit inputs are clipped to [eps, 1 - eps]

ERA5_PRESSURE_LEVELS = "reanalysis-era5-pressure-levels-monthly-means"
ERA5_SINGLE_LEVELS = "reanalysis-era5-single-levels-monthly-means"
ERA5_INVARIANT = "invariant"  # the ERA5 request group of the statics (fetched once)


@dataclass(frozen=True)
class CmipVariable:
    """The AI-MIP (CMIP) variable made from a channel's rollout variable (mdiff.aimip.varmap)."""

    name: str  # CMIP variable name, e.g. "zg"
    units: str | None = None  # its units (None: the channel's own); must equal the CMOR table's
    conversion: str = "identity"  # a function of mdiff.aimip.varmap.CONVERSIONS
    also_from: tuple[str, ...] = ()  # further rollout variables the conversion reads (huss: ps)
    table: str = "Amon"


@dataclass(frozen=True)
class Display:
    """How the evaluation report shows a channel: value x ``factor`` in ``units``."""

    units: str
    factor: float = 1.0
    label: str | None = None  # the name a reader knows (None: the channel's)


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
    # Physically plausible values of a monthly mean on the model grid, in ``units``: generous
    # (a value outside means broken data or a broken run, not an unusual climate), and tight
    # enough to catch the usual mix-ups (degC or hPa or percent or g/kg labelled in SI units,
    # fill values stored without a _FillValue attribute). Checked where data enter mdiff
    # (mdiff.data.checks) and on every month a rollout writes.
    plausible_range: tuple[float, float] = (float("-inf"), float("inf"))
    cmip: CmipVariable | None = None  # the AI-MIP variable it feeds (None: not output)
    display: Display | None = None  # report units (None: its own units)

    @property
    def cmip_name(self) -> str | None:
        return self.cmip.name if self.cmip else None

    @property
    def shown(self) -> Display:
        """How the report shows it, label resolved (its own units and name unless converted)."""
        d = self.display or Display(self.units)
        return Display(d.units, d.factor, d.label or self.name)


# Plausible ranges (see Channel.plausible_range). Temperatures: 150..350 K (catches degC);
# humidity and precipitation: a hair below 0 is interpolation noise, the upper bounds catch
# g/kg and mm/day; pressures: catches hPa; fractions: [0, 1] (catches percent).
TEMPERATURE_RANGE_K = (150.0, 350.0)


def _single(name: str, units: str, standard_name: str, long_name: str, era5: tuple[str, str],
            plausible: tuple[float, float], *, role: Role = "state", transform: Transform = "none",
            regrid: Regrid = "conservative_normalised", dataset: str = ERA5_SINGLE_LEVELS,
            level: int | None = None, cmip: CmipVariable | None = None, display: Display | None = None) -> Channel:
    """A channel stored under its own name; ``era5`` = (CDS request name, short name)."""
    return Channel(name, name, level, units, standard_name, long_name, role, transform, *era5,
                   dataset if era5[0] else "", regrid, plausible, cmip, display)


def _family(variable: str, units: str, standard_name: str, long_name: str, era5: tuple[str, str],
            plausible: tuple[float, float], *, transform: Transform = "none") -> tuple[Channel, ...]:
    """A pressure-level family: one channel per level, stored as variable(plev)."""
    return tuple(Channel(f"{variable}{p}", variable, p, units, standard_name, f"{long_name} at {p} hPa",
                         "state", transform, *era5, ERA5_PRESSURE_LEVELS, "conservative_normalised",
                         plausible, CmipVariable(variable))
                 for p in PRESSURE_LEVELS_HPA)


_PRESSURE_FAMILIES = (
    *_family("ta", "K", "air_temperature", "Air temperature", ("temperature", "t"), TEMPERATURE_RANGE_K),
    *_family("hus", "1", "specific_humidity", "Specific humidity", ("specific_humidity", "q"), (-1e-6, 0.1),
             transform="sqrt"),
    *_family("ua", "m s-1", "eastward_wind", "Eastward wind", ("u_component_of_wind", "u"), (-200.0, 200.0)),
    *_family("va", "m s-1", "northward_wind", "Northward wind", ("v_component_of_wind", "v"), (-200.0, 200.0)),
)

_STATE_SINGLE = (
    # AI-MIP wants geopotential height (m), not geopotential (m2 s-2)
    _single("z500", "m2 s-2", "geopotential", "Geopotential at 500 hPa", ("geopotential", "z"), (3.0e4, 7.0e4),
            dataset=ERA5_PRESSURE_LEVELS, level=500,
            cmip=CmipVariable("zg", "m", "geopotential_to_height"), display=Display("m", 1.0 / G0, "zg500")),
    _single("ps", "Pa", "surface_air_pressure", "Surface pressure", ("surface_pressure", "sp"), (3.0e4, 1.2e5),
            cmip=CmipVariable("ps")),
    _single("ts", "K", "surface_temperature", "Skin temperature", ("skin_temperature", "skt"), TEMPERATURE_RANGE_K,
            cmip=CmipVariable("ts")),
    _single("tas", "K", "air_temperature", "2 m temperature", ("2m_temperature", "t2m"), TEMPERATURE_RANGE_K,
            cmip=CmipVariable("tas")),
    # AI-MIP wants 2 m specific humidity: derived from the dewpoint and the surface pressure
    _single("tdas", "K", "dew_point_temperature", "2 m dewpoint temperature", ("2m_dewpoint_temperature", "d2m"),
            TEMPERATURE_RANGE_K, cmip=CmipVariable("huss", "1", "specific_humidity_from_dewpoint", ("ps",))),
    _single("uas", "m s-1", "eastward_wind", "10 m eastward wind", ("10m_u_component_of_wind", "u10"),
            (-100.0, 100.0), cmip=CmipVariable("uas")),
    _single("vas", "m s-1", "northward_wind", "10 m northward wind", ("10m_v_component_of_wind", "v10"),
            (-100.0, 100.0), cmip=CmipVariable("vas")),
    # A flux: plain conservative remapping keeps the area integral.
    _single("pr", "kg m-2 s-1", "precipitation_flux", "Mean total precipitation rate",
            ("mean_total_precipitation_rate", "mtpr"), (-1e-6, 0.1), transform="sqrt", regrid="conservative",
            cmip=CmipVariable("pr"), display=Display("mm day-1", 86400.0)),  # kg m-2 s-1 of water = mm s-1
    _single("psl", "Pa", "air_pressure_at_mean_sea_level", "Mean sea-level pressure",
            ("mean_sea_level_pressure", "msl"), (8.0e4, 1.2e5), cmip=CmipVariable("psl"), display=Display("hPa", 0.01)),
)

_FORCING = (
    _single("sst", "K", "sea_surface_temperature", "Sea surface temperature (monthly mean)",
            ("sea_surface_temperature", "sst"), (260.0, 320.0), role="forcing"),
    _single("siconc", "1", "sea_ice_area_fraction", "Sea-ice fraction (monthly mean)", ("sea_ice_cover", "siconc"),
            (0.0, 1.0), role="forcing", transform="logit"),
    # 1 where SST is undefined (land), 0 over ocean: tells the model where sst/siconc mean nothing.
    _single("sst_undefined", "1", "", "SST undefined (land) mask", ("", ""), (0.0, 1.0), role="forcing",
            regrid="none"),
)

_STATIC = (
    _single("sdor", "m", "", "Standard deviation of sub-gridscale orography",
            ("standard_deviation_of_orography", "sdor"), (0.0, 2000.0), role="static"),
    _single("isor", "1", "", "Anisotropy of sub-gridscale orography",
            ("anisotropy_of_sub_gridscale_orography", "isor"), (0.0, 1.0), role="static"),
    _single("anor", "radians", "", "Angle of sub-gridscale orography",
            ("angle_of_sub_gridscale_orography", "anor"), (-1.6, 1.6), role="static"),
    _single("slor", "1", "", "Slope of sub-gridscale orography",
            ("slope_of_sub_gridscale_orography", "slor"), (0.0, 1.0), role="static"),
    _single("lsm", "1", "land_area_fraction", "Land-sea mask (land fraction)", ("land_sea_mask", "lsm"),
            (0.0, 1.0), role="static"),
)


def era5_groups(channels: tuple[Channel, ...]) -> dict[str, tuple[str, tuple[Channel, ...], tuple[int, ...]]]:
    """ERA5 request group -> (CDS data set, channels, pressure levels in hPa, top down): one
    request per data set and level set, so each asks for exactly the table's variables."""
    levels_of: dict[str, list[int]] = {}
    for ch in channels:
        if ch.era5_dataset == ERA5_PRESSURE_LEVELS:
            levels_of.setdefault(ch.era5_name, []).append(ch.level_hpa)
    groups: dict[str, tuple[str, list[Channel], tuple[int, ...]]] = {}
    for ch in channels:
        if not ch.era5_dataset:
            continue  # derived channel (sst_undefined)
        if ch.role == "static":
            name, levels = ERA5_INVARIANT, ()
        elif ch.era5_dataset == ERA5_PRESSURE_LEVELS:
            levels = tuple(sorted(levels_of[ch.era5_name], reverse=True))
            all_levels = tuple(sorted(PRESSURE_LEVELS_HPA, reverse=True))
            name = "pressure" if levels == all_levels else "pressure_" + "_".join(map(str, levels))
        else:
            name, levels = "single", ()
        groups.setdefault(name, (ch.era5_dataset, [], levels))[1].append(ch)
    return {k: (ds, tuple(chs), lv) for k, (ds, chs, lv) in groups.items()}


def derived(state: tuple[Channel, ...], forcing: tuple[Channel, ...], static: tuple[Channel, ...]) -> dict:
    """Every module-level name below, from the three role tables (how this module defines them;
    a test that extends the table sets them all from here)."""
    every = state + forcing + static
    return {
        "STATE": state, "FORCING": forcing, "STATIC": static, "ALL": every,
        "BY_NAME": {c.name: c for c in every},
        "STATE_NAMES": tuple(c.name for c in state),
        "FORCING_NAMES": tuple(c.name for c in forcing),
        "STATIC_NAMES": tuple(c.name for c in static),
        "N_STATE": len(state), "N_FORCING": len(forcing), "N_STATIC": len(static),
        # Variables of the prepared files with a plev axis (ta, hus, ua, va); the rest are 2-D.
        "PRESSURE_VARIABLES": tuple(dict.fromkeys(c.variable for c in state if c.variable != c.name)),
        # The forcing of prepared files (SST, sea ice); the others are derived from them.
        "PREPARED_FORCING": tuple(c for c in forcing if c.era5_dataset),
        "ERA5_GROUPS": era5_groups(every),
    }


_DERIVED = derived(_PRESSURE_FAMILIES + _STATE_SINGLE, _FORCING, _STATIC)
STATE: tuple[Channel, ...] = _DERIVED["STATE"]
FORCING: tuple[Channel, ...] = _DERIVED["FORCING"]
STATIC: tuple[Channel, ...] = _DERIVED["STATIC"]
ALL: tuple[Channel, ...] = _DERIVED["ALL"]
BY_NAME: dict[str, Channel] = _DERIVED["BY_NAME"]
STATE_NAMES: tuple[str, ...] = _DERIVED["STATE_NAMES"]
FORCING_NAMES: tuple[str, ...] = _DERIVED["FORCING_NAMES"]
STATIC_NAMES: tuple[str, ...] = _DERIVED["STATIC_NAMES"]
N_STATE: int = _DERIVED["N_STATE"]
N_FORCING: int = _DERIVED["N_FORCING"]
N_STATIC: int = _DERIVED["N_STATIC"]
PRESSURE_VARIABLES: tuple[str, ...] = _DERIVED["PRESSURE_VARIABLES"]
PREPARED_FORCING: tuple[Channel, ...] = _DERIVED["PREPARED_FORCING"]
ERA5_GROUPS: dict[str, tuple[str, tuple[Channel, ...], tuple[int, ...]]] = _DERIVED["ERA5_GROUPS"]


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
    return [asdict(c) for c in ALL]


def from_table(records: list[dict]) -> tuple[Channel, ...]:
    """Channels from stored records (a checkpoint's table) of this or an older format. A
    record of a channel the current table knows is completed from it (older formats lack
    ``plausible_range``, ``display`` and store ``cmip_name`` where ``cmip`` is now); fields
    this version does not know are dropped."""
    known = {f.name for f in fields(Channel)}
    out = []
    for record in records:
        current = BY_NAME.get(record["name"])
        entry = {f.name: getattr(current, f.name) for f in fields(Channel)} if current else {}
        entry.update({k: v for k, v in record.items() if k in known})
        if "plausible_range" in entry:
            entry["plausible_range"] = tuple(entry["plausible_range"])
        cmip = entry.get("cmip")
        if isinstance(cmip, dict):
            entry["cmip"] = CmipVariable(**{**cmip, "also_from": tuple(cmip.get("also_from", ()))})
        elif "cmip_name" in record:  # format 1: the name only
            same = current is not None and current.cmip_name == record["cmip_name"]
            entry["cmip"] = current.cmip if same else CmipVariable(record["cmip_name"]) if record["cmip_name"] else None
        if isinstance(entry.get("display"), dict):
            entry["display"] = Display(**entry["display"])
        out.append(Channel(**entry))
    return tuple(out)
