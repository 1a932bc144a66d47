"""`mdiff regrid`: raw ERA5 and the AI-MIP forcing -> prepared files on the model grid (CDO).

Conservative remapping with CDO. The weights are generated once per normalisation by
``cdo gencon`` (``mdiff regrid weights``) from the invariants file and reused by
``cdo remap`` for every year. The table's ``regrid`` column picks the normalisation:

- ``conservative_normalised`` -> ``CDO_REMAP_NORM=fracarea``: a target cell partly covered
  by valid source cells (SST next to a coast) gets the mean over its valid part;
- ``conservative`` (precipitation, a flux) -> ``CDO_REMAP_NORM=destarea``: the area
  integral over the target cell, so the global integral is kept whatever the mask.

A field with missing values (SST, sea ice over land) has another mask than the weights;
CDO then computes weights for that mask itself, still conservative.

After remapping: ERA5 names and unit spellings are mapped to the variable table, pressure
levels picked, months of the year selected, SST and sea ice masked (undefined over land
only: a NaN over open ocean is an error), sea ice clipped to [0, 1] and capped at
1 - land fraction. The prepared files are written with ``mdiff.data.prepared`` so their
contract equals the synthetic world's.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr
from tqdm import tqdm

from mdiff import cdo
from mdiff import variables as V
from mdiff.data import checks
from mdiff.data import era5 as E
from mdiff.data import prepared as P
from mdiff.data.forcing import monthly_means_from_start_of_month
from mdiff.data.prepared import PreparedDataError
from mdiff.grid import LatLonGrid

log = logging.getLogger(__name__)

NORMS = {"conservative_normalised": "fracarea", "conservative": "destarea"}
OPEN_OCEAN_LSM = checks.OPEN_OCEAN_LSM  # SST may be undefined only where some land is


class RegridError(PreparedDataError):
    pass


# -------------------------------------------------------------------------------- CDO


def gridfile_text(grid: LatLonGrid) -> str:
    """CDO grid description of the model grid (south to north, from 0 east, both poles)."""
    return (f"gridtype = lonlat\nxsize = {grid.nlon}\nysize = {grid.nlat}\n"
            f"xfirst = 0\nxinc = {360.0 / grid.nlon!r}\nyfirst = -90\nyinc = {grid.resolution!r}\n")


def run_cdo(args: list[str], norm: str, where: str) -> None:
    """Run ``cdo`` with a remap normalisation; a failure names the file and shows CDO's words."""
    cdo.run(*args, env={"CDO_REMAP_NORM": norm}, where=where, error=RegridError)


def _first_field(path: str, where: str) -> str:
    with E.open_raw(path) as ds:
        E.source_grid(ds, where)
        lat, lon = E.coord_name(ds, E.LAT_NAMES), E.coord_name(ds, E.LON_NAMES)
        for name, da in ds.data_vars.items():
            if lat in da.dims and lon in da.dims and np.issubdtype(da.dtype, np.floating):
                return name
    raise RegridError(f"{where}: no floating-point (lat, lon) field to take the source grid from")


def make_weights(template: str | os.PathLike, grid: LatLonGrid, output: str | os.PathLike,
                 norm: str) -> None:
    """``cdo gencon`` weights from the grid of ``template`` to the model grid (atomic write)."""
    from mdiff.fileio import atomic_path

    template = str(template)
    name = _first_field(template, template)
    with tempfile.TemporaryDirectory() as tmp, atomic_path(output) as out:
        gridfile = Path(tmp) / "grid.txt"
        gridfile.write_text(gridfile_text(grid))
        run_cdo([f"gencon,{gridfile}", "-seltimestep,1", f"-selname,{name}", template, str(out)],
                norm, template)
    log.info("weights %s (%s) from %s to %dx%d", output, norm, template, grid.nlat, grid.nlon)


def weights_grids(weights: str | os.PathLike) -> tuple[tuple[int, int], tuple[int, int]]:
    """((nlat, nlon) source, (nlat, nlon) destination) of a CDO weights file."""
    try:
        with xr.open_dataset(weights) as w:
            src = [int(v) for v in w["src_grid_dims"].values]
            dst = [int(v) for v in w["dst_grid_dims"].values]
    except Exception as err:
        raise RegridError(f"{weights}: not a CDO remapping weights file ({err})") from err
    return (src[1], src[0]), (dst[1], dst[0])


def remap(src: str, names: list[str], grid: LatLonGrid, weights: str | None, norm: str,
          workdir: Path, levels: list[float] | None = None) -> xr.Dataset:
    """Remap variables ``names`` of ``src`` to the model grid; returns the loaded result.

    With ``weights`` the source grid must be the one the weights were made for.
    ``levels`` (in the file's own level units) restricts pressure levels before remapping.
    """
    gridfile = workdir / "grid.txt"
    if not gridfile.exists():
        gridfile.write_text(gridfile_text(grid))
    if weights is not None:
        (s_lat, s_lon), dst = weights_grids(weights)
        if dst != grid.shape:
            raise RegridError(f"{weights}: weights are for a {dst[0]}x{dst[1]} model grid; "
                              f"the config asks for {grid.nlat}x{grid.nlon} (delete the weights to remake them)")
        with E.open_raw(src) as ds:
            lat, lon = E.source_grid(ds, src)
        if (lat.size, lon.size) != (s_lat, s_lon):
            raise RegridError(f"{src}: grid {lat.size}x{lon.size}; the remapping weights {weights} were made "
                              f"for the {s_lat}x{s_lon} grid of the invariants file: all raw files must "
                              f"share one grid")
    out = workdir / f"{Path(src).stem}.{norm}.{len(list(workdir.iterdir()))}.nc"
    op = f"remap,{gridfile},{weights}" if weights is not None else f"remapcon,{gridfile}"
    chain = [op, f"-selname,{','.join(names)}"]
    if levels:
        chain.append(f"-sellevel,{','.join(f'{v:g}' for v in levels)}")
    run_cdo(["-f", "nc4", *chain, src, str(out)], norm, src)
    ds = xr.open_dataset(out, decode_times=True)
    ds.load()
    ds.close()
    out.unlink()
    return ds


def remap_channels(paths: list[str], channels: tuple[V.Channel, ...], grid: LatLonGrid,
                   weights: dict[str, str] | None, months: np.ndarray | None, workdir: Path,
                   progress: bool = True) -> dict[str, np.ndarray]:
    """Channel name -> (T, lat, lon) float64 on the model grid (T = len(months), or 1)."""
    found, _ = E.locate(paths, channels, months)
    # One CDO call per (file, normalisation) with all the variables it holds.
    calls: dict[tuple[str, str], list[V.Channel]] = {}
    for ch in channels:
        path, _ = found[ch.name]
        calls.setdefault((path, NORMS[ch.regrid]), []).append(ch)
    out: dict[str, np.ndarray] = {}
    for (path, norm), chs in tqdm(calls.items(), desc="remap", disable=not progress):
        names = list(dict.fromkeys(found[c.name][1] for c in chs))
        levels = None
        if all(c.era5_dataset == V.ERA5_PRESSURE_LEVELS for c in chs):
            with E.open_raw(path) as ds:
                hpa = E.level_hpa(ds, path)
                file_levels = ds[E.coord_name(ds, E.LEVEL_NAMES)].values
            wanted = {c.level_hpa for c in chs}
            levels = [float(v) for v, h in zip(file_levels, hpa, strict=True) if round(h) in wanted]
        weight_file = None if weights is None else weights[norm]
        ds = remap(path, names, grid, weight_file, norm, workdir, levels)
        for ch in chs:
            out[ch.name] = _extract(ds, found[ch.name][1], ch, months, path)
    return out


def _extract(ds: xr.Dataset, name: str, ch: V.Channel, months: np.ndarray | None, where: str) -> np.ndarray:
    da = ds[name]
    E.check_units(da.attrs.get("units"), ch, name, where)
    if ch.era5_dataset == V.ERA5_PRESSURE_LEVELS:
        lev = E.coord_name(ds, E.LEVEL_NAMES)
        hits = np.flatnonzero(np.isclose(E.level_hpa(ds, where), ch.level_hpa))
        da = da.isel({lev: int(hits[0])})
    tname = E.coord_name(ds, E.TIME_NAMES)
    if tname is not None and tname in da.dims:
        if months is None:
            da = da.isel({tname: 0})
        else:
            have = np.asarray(ds[tname].values).astype("datetime64[M]")
            index = [int(np.flatnonzero(have == m)[0]) for m in months]
            da = da.isel({tname: index})
    for extra in [d for d in da.dims if d not in ("lat", "lon", tname)]:
        if da.sizes[extra] != 1:
            raise RegridError(f"{where}: variable {name!r} has an extra dimension {extra!r} of size "
                              f"{da.sizes[extra]}; expected (time, lat, lon)")
        da = da.isel({extra: 0})
    values = np.asarray(da.transpose(..., "lat", "lon").values, dtype=np.float64)
    return values if values.ndim == 3 else values[None]


def _require_finite(values: np.ndarray, ch: V.Channel, where: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise RegridError(f"{where}: channel {ch.name} ({ch.era5_short}) has {int(bad.sum())} NaN/Inf values on "
                          f"the model grid, first at (time, lat, lon) index {idx}; expected finite values "
                          f"everywhere (only SST and sea ice may be undefined, over land)")


def mask_ocean_forcing(sst: np.ndarray, siconc: np.ndarray, lsm: np.ndarray,
                       where: str) -> tuple[np.ndarray, np.ndarray]:
    """SST and sea ice NaN where undefined (land), sea ice in [0, 1 - land fraction].

    Undefined is where either field is NaN; that is expected where there is land, and an
    error in a cell without any land (lsm <= 1e-6).
    """
    undefined = ~np.isfinite(sst) | ~np.isfinite(siconc)
    bad = undefined & (lsm[None] <= OPEN_OCEAN_LSM)
    if bad.any():
        t, i, j = (int(v) for v in np.argwhere(bad)[0])
        raise RegridError(f"{where}: SST/sea ice undefined (NaN) at {int(bad.sum())} open-ocean points (land "
                          f"fraction 0), first at time index {t}, row {i}, column {j}; SST and sea ice may be "
                          f"undefined over land only")
    sst = np.where(undefined, np.nan, sst)
    ice = np.minimum(np.clip(siconc, 0.0, 1.0), 1.0 - np.clip(lsm, 0.0, 1.0)[None])
    return sst, np.where(undefined, np.nan, ice)


# Conservative remapping of values inside a range stays inside it up to rounding.
PLAUSIBLE_SLACK = 1e-4


def _check_forcing(sst: np.ndarray, siconc: np.ndarray, where: str, months, grid: LatLonGrid) -> None:
    """SST and sea ice on the model grid, before masking and clipping: plausible where defined
    (a fill value stored without _FillValue, degC or percent would otherwise pass through)."""
    checks.check_plausible(np.stack([sst, siconc], axis=1), V.PREPARED_FORCING, f"{where} (regridded)",
                           times=months, lat=grid.lat, lon=grid.lon, slack=PLAUSIBLE_SLACK)


# --------------------------------------------------------------------- prepared files


def _attrs(kind: str, sources: list[str]) -> dict:
    from mdiff import __version__

    return {"title": f"mdiff prepared {kind} (ERA5, conservatively regridded with CDO)",
            "source": "ERA5 monthly averaged reanalysis (Copernicus Climate Change Service)",
            "input_files": " ".join(Path(s).name for s in sources), "mdiff_version": __version__}


def prepare_statics(invariant: list[str], grid: LatLonGrid, weights: dict[str, str],
                    output: str | os.PathLike) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fields = remap_channels(invariant, V.STATIC, grid, weights, None, Path(tmp))
    for ch in V.STATIC:
        _require_finite(fields[ch.name], ch, str(invariant[0]))
    array = np.stack([fields[c.name][0] for c in V.STATIC], axis=0)
    checks.check_plausible(array, V.STATIC, f"{', '.join(invariant)} (regridded)", lat=grid.lat, lon=grid.lon,
                           slack=PLAUSIBLE_SLACK)
    fields["lsm"] = np.clip(fields["lsm"], 0.0, 1.0)
    array = np.stack([fields[c.name][0] for c in V.STATIC], axis=0)
    ds = P.channels_to_dataset(array, V.STATIC, P.skeleton(grid, None, _attrs("statics", invariant)),
                               leading=())
    P.write(ds, output)
    log.info("wrote %s", output)


def _lsm(statics: str | os.PathLike, grid: LatLonGrid) -> np.ndarray:
    ds = P.open_checked(statics, grid)
    return P.dataset_to_channels(ds, (V.channel("lsm"),), str(statics))[0].astype(np.float64)


def prepare_state_year(raw: list[str], first: str, last: str, grid: LatLonGrid,
                       weights: dict[str, str], statics: str | os.PathLike,
                       output: str | os.PathLike) -> None:
    """Prepared state of months first..last (one year) from that year's raw ERA5 files."""
    months = E.months_arg(first, last)
    year = first[:4]
    lsm = _lsm(statics, grid)
    where = ", ".join(raw)
    with tempfile.TemporaryDirectory() as tmp:
        fields = remap_channels(raw, V.STATE + V.PREPARED_FORCING, grid, weights, months, Path(tmp))
    for ch in V.STATE:
        _require_finite(fields[ch.name], ch, where)
    state = np.stack([fields[c.name] for c in V.STATE], axis=1)
    checks.check_plausible(state, V.STATE, f"{where} (regridded)", times=months, lat=grid.lat, lon=grid.lon,
                           slack=PLAUSIBLE_SLACK)
    _check_forcing(fields["sst"], fields["siconc"], where, months, grid)
    sst, ice = mask_ocean_forcing(fields["sst"], fields["siconc"], lsm, where)
    ds = P.skeleton(grid, months, _attrs(f"state {year}", raw))
    ds = P.channels_to_dataset(state, V.STATE, ds)
    ds = P.channels_to_dataset(np.stack([sst, ice], axis=1), V.PREPARED_FORCING, ds)
    P.write(ds, output)
    log.info("wrote %s (%d months)", output, months.size)


def prepare_forcing(aimip: str, first: str, last: str, grid: LatLonGrid,
                    statics: str | os.PathLike, output: str | os.PathLike) -> None:
    """AI-MIP start-of-month SST/sea ice -> monthly means first..last on the model grid
    (METHOD.md, defect 4)."""
    months = P.month_range(first, last)
    if months.size == 0:
        raise RegridError(f"--months {first} {last}: first month is after the last")
    lsm = _lsm(statics, grid)
    found, _ = E.locate([aimip], V.PREPARED_FORCING, None)
    names = [found[c.name][1] for c in V.PREPARED_FORCING]
    with tempfile.TemporaryDirectory() as tmp:
        # One remapcon call: CDO makes the weights (for the SST mask) once for all months.
        ds = remap(aimip, names, grid, None, NORMS["conservative_normalised"], Path(tmp))
    tname = E.coord_name(ds, E.TIME_NAMES)
    starts = np.asarray(ds[tname].values)
    fields = {}
    for ch, name in zip(V.PREPARED_FORCING, names, strict=True):
        E.check_units(ds[name].attrs.get("units"), ch, name, aimip)
        values = np.asarray(ds[name].transpose(tname, "lat", "lon").values, dtype=np.float64)
        fields[ch.name] = monthly_means_from_start_of_month(values, starts, months, aimip)
    _check_forcing(fields["sst"], fields["siconc"], aimip, months, grid)
    sst, ice = mask_ocean_forcing(fields["sst"], fields["siconc"], lsm, aimip)
    ds_out = P.skeleton(grid, months, {**_attrs("inference forcing", [aimip]),
                                       "title": "mdiff prepared forcing: AI-MIP SST and sea ice as monthly "
                                                "means (mean of the two bounding start-of-month values)"})
    ds_out = P.channels_to_dataset(np.stack([sst, ice], axis=1), V.PREPARED_FORCING, ds_out)
    P.write(ds_out, output)
    log.info("wrote %s (%d months)", output, months.size)
