"""`mdiff evaluate --aimip-root ROOT`: score the 1-degree (``gr``) AI-MIP tree the way the
AI-MIP organisers analyse submissions (AIMIP.md, "How submissions are evaluated").

What "their way" means here, and only this (docs/evaluation.md compares it with the main
report metric by metric):

- the submitted files themselves are read (``<inst>/<source>/<exp>/<member>/Amon/<var>/gr/...``),
  every AI-MIP variable, the 3-D ones on the 7 levels 1000 ... 50 hPa (already the levels
  of the files: no vertical interpolation is needed);
- the reference (ERA5, or the synthetic world's reference realisation) is put on the same
  regular 1-degree grid by first-order conservative remapping with CDO, after conversion
  to the AI-MIP variables (zg = z / g0, huss from dewpoint and surface pressure);
- spatial means use cos(latitude) weights (on this cell-centred grid they equal exact cell
  areas), and E1 RMS values are taken over |lat| <= ``evaluate.max_abs_lat`` (87.5);
- E1: time-mean bias of the ensemble mean, per period of ``evaluate.periods``
  (1979-2014, 2015-2024): RMS and global mean;
- E2: least-squares linear trend per decade of global-mean monthly anomalies per period,
  the mean of the members' trends (with their spread) and the reference's;
- E3: Nino3.4 index from the reference SST on the 1-degree grid (5S-5N, 170W-120W,
  ocean cells, anomalies from the monthly climatology, 3-month centred running mean, no
  detrending); regression maps of monthly anomalies on it, compared with the reference's
  (cos-lat pattern correlation, amplitude ratio <e, r> / <r, r>);
- E4 (daily variability) does not apply to a monthly model;
- E5: global-mean time-mean response, warmed run minus ``aimip`` (ensemble means), over
  the analysis period, for tas, ts, pr, huss, zg500, ta850, ta500, also per kelvin.

Writes ``scores.json`` (``{"scores": {name: {value, units, description}}, ...}``) and
``scores.md`` into ``--output``.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path

import numpy as np

from mdiff import cdo, protocol
from mdiff import config as C
from mdiff.aimip import drs
from mdiff.aimip.varmap import load_variable_map
from mdiff.grid import ONE_DEGREE, LatLonGrid

log = logging.getLogger("mdiff.evaluate.aimip_tree")
NINO34_LAT = (-5.0, 5.0)
NINO34_LON = (190.0, 240.0)  # 170W-120W in degrees east
E3_FIELDS = ("tas", "pr", "psl", "zg500")
E5_FIELDS = ("tas", "ts", "pr", "huss", "zg500", "ta850", "ta500")
MISSING = 1.0e20


class AimipTreeError(ValueError):
    user_facing = True


# ------------------------------------------------------------------------- helpers


def label(variable: str, level_pa: float | None) -> str:
    return variable if level_pa is None else f"{variable}{level_pa / 100:g}"


def cos_lat_weights(max_abs_lat: float | None = None) -> np.ndarray:
    """cos(latitude) weights on the 1-degree grid, (lat, lon), zero beyond ``max_abs_lat``."""
    w = np.repeat(np.cos(np.deg2rad(ONE_DEGREE.lat))[:, None], ONE_DEGREE.nlon, axis=1)
    if max_abs_lat is not None:
        w = w * (np.abs(ONE_DEGREE.lat) <= max_abs_lat)[:, None]
    return w


def wmean(field: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted mean over the last two axes, NaN-aware."""
    finite = np.isfinite(field)
    if finite.all():
        return np.tensordot(field, w, axes=2) / w.sum()
    num = np.tensordot(np.where(finite, field, 0.0), w, axes=2)
    den = np.tensordot(finite.astype(np.float64), w, axes=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def month_index(months: np.ndarray, first: str, last: str) -> np.ndarray:
    return (months >= np.datetime64(first, "M")) & (months <= np.datetime64(last, "M"))


def anomalies(x: np.ndarray, months: np.ndarray) -> np.ndarray:
    """Minus the mean of the same calendar month (time on axis 0); float32 out."""
    moy = months.astype(int) % 12
    out = np.empty_like(x, dtype=np.float32)
    for m in range(12):
        sel = moy == m
        out[sel] = x[sel] - x[sel].mean(axis=0, keepdims=True, dtype=np.float64)
    return out


def trend_per_decade(series: np.ndarray, months: np.ndarray) -> np.ndarray:
    """Least-squares slope along axis 0, per decade."""
    t = months.astype(int) / 120.0  # decades
    t = t - t.mean()
    s = series - series.mean(axis=0, keepdims=True)
    return np.tensordot(t, s, axes=(0, 0)) / np.dot(t, t)


def running_mean3(x: np.ndarray) -> np.ndarray:
    out = np.full_like(x, np.nan, dtype=np.float64)
    out[1:-1] = (x[:-2] + x[1:-1] + x[2:]) / 3.0
    return out


def regression(anom: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Slope of anomalies (time, ...) on the index where the index is defined, per unit index."""
    ok = np.isfinite(index)
    i = index[ok] - index[ok].mean()
    return np.tensordot(i, anom[ok], axes=(0, 0)) / np.dot(i, i)


def pattern_correlation(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> float:
    a, b = a - wmean(a, w), b - wmean(b, w)
    den = math.sqrt(float(wmean(a * a, w)) * float(wmean(b * b, w)))
    return float(wmean(a * b, w)) / den if den > 0 else float("nan")


def amplitude_ratio(estimate: np.ndarray, reference: np.ndarray, w: np.ndarray) -> float:
    den = float(wmean(reference * reference, w))
    return float(wmean(estimate * reference, w)) / den if den > 0 else float("nan")


def field_stats(x: np.ndarray, months: np.ndarray, periods: list[list[str]], nino: np.ndarray, w: np.ndarray,
                full: bool) -> dict:
    """What the scores need of one member (or the reference), x = (time, level, lat, lon)
    float32, level by level to bound memory: the time mean and, with ``full``, the period
    means, the trends of global-mean anomalies per period (level, period) and the
    regression maps on the index (level, lat, lon)."""
    out = {"time_mean": x.mean(axis=0, dtype=np.float64)}
    if full:
        sels = [month_index(months, *p) for p in periods]
        out["means"] = [x[s].mean(axis=0, dtype=np.float64) for s in sels]
        trends, maps = [], []
        for li in range(x.shape[1]):
            an = anomalies(x[:, li], months)
            gm = wmean(an, w)
            trends.append([trend_per_decade(gm[s], months[s]) for s in sels])
            maps.append(regression(an, nino))
        out["trends"], out["regression"] = np.array(trends), np.array(maps)
    return out


# --------------------------------------------------------------- the reference on 1°


def reference_on_one_degree(cfg: C.Config, state: list[Path], workdir: Path, cdo_exe: str = "cdo") -> Path:
    """The reference's AI-MIP variables (and sst) over the analysis months, conservatively
    remapped with CDO to the 1-degree grid; returns the NetCDF path."""
    import xarray as xr

    from mdiff.data import prepared as P

    grid = LatLonGrid(cfg.grid.nlat, cfg.grid.nlon)
    first, last = cfg.evaluate.analysis
    for path in state:
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: reference state file does not exist")
    src = xr.open_mfdataset([str(p) for p in state], combine="nested", concat_dim="time", data_vars="minimal",
                            coords="minimal", compat="override", join="override")
    src = src.sel(time=slice(first, last))
    months = src["time"].values.astype("datetime64[M]")
    want = P.month_range(first, last)
    if len(months) != len(want) or not (months == want).all():
        raise AimipTreeError(f"reference state files cover {len(months)} months of {first}..{last}; "
                             f"expected {len(want)}")
    out = P.skeleton(grid, want)
    for name, spec in load_variable_map().items():
        data = spec.convert(*(np.asarray(src[s].values, dtype=np.float32) for s in spec.sources))
        if data.ndim == 4:
            out[name] = xr.DataArray(data, dims=("time", "plev", "lat", "lon"))
        else:
            out[name] = xr.DataArray(data, dims=("time", "lat", "lon"))  # zg too: read as one level
        out[name].attrs["units"] = spec.units
    sst = np.asarray(src["sst"].values, dtype=np.float32)
    out["sst"] = xr.DataArray(np.where(np.isfinite(sst), sst, np.float32(MISSING)), dims=("time", "lat", "lon"),
                              attrs={"units": "K"})
    out = out.assign_coords(plev=P.plev_coord())
    src.close()
    native = workdir / "reference_native.nc"
    enc = {v: {"_FillValue": np.float32(MISSING), "dtype": "float32"} for v in out.data_vars
           if v not in ("lat_bnds", "lon_bnds", "time_bnds")}
    out.to_netcdf(native, encoding={**enc, **P.TIME_ENCODING})
    gridfile = workdir / "grid.txt"
    gridfile.write_text(ONE_DEGREE.cdo_grid())
    remapped = workdir / "reference_1deg.nc"
    cdo.run(f"remapcon,{gridfile}", native, remapped, cdo=cdo_exe, error=AimipTreeError)
    native.unlink()
    return remapped


# ------------------------------------------------------------------------ scoring


class Scores(dict):
    def add(self, name: str, value, units: str, description: str) -> None:
        v = None if value is None else float(value)
        self[name] = {"value": v if v is not None and math.isfinite(v) else None, "units": units,
                      "description": description}


def read_levels(path: Path, variable: str, time_sel: np.ndarray) -> np.ndarray:
    """(time, levels, lat, lon) float32 of a 1-degree file (2-D fields: one level)."""
    import netCDF4

    if not path.exists():
        raise FileNotFoundError(f"{path}: AI-MIP gr file does not exist (aimip.grids needs gr)")
    with netCDF4.Dataset(path) as nc:
        nc.set_auto_mask(False)
        var = nc.variables[variable]
        if var.shape[-2:] != ONE_DEGREE.shape:
            raise AimipTreeError(f"{path}: {variable} is on a {var.shape[-2]}x{var.shape[-1]} grid; expected the "
                                 f"1-degree {ONE_DEGREE.nlat}x{ONE_DEGREE.nlon} (gr) grid")
        data = np.asarray(var[:], dtype=np.float32)[time_sel]
    data = np.where(np.abs(data) >= MISSING / 10, np.nan, data)
    return data if data.ndim == 4 else data[:, None]


def file_months(path: Path) -> np.ndarray:
    import cftime
    import netCDF4

    with netCDF4.Dataset(path) as nc:
        t = nc.variables["time"]
        bnds = np.asarray(nc.variables[t.bounds][:, 0], dtype=np.float64)
        starts = cftime.num2date(bnds, t.units, getattr(t, "calendar", "standard"))
    return np.array([f"{d.year:04d}-{d.month:02d}" for d in starts], dtype="datetime64[M]")


def score(cfg: C.Config, root: str | Path, state: list[Path], output: str | Path, cdo_exe: str = "cdo") -> dict:
    from mdiff.fileio import atomic_path, write_json

    root, output = Path(root), Path(output)
    ev = cfg.evaluate
    experiments = list(cfg.rollout.experiments)
    if protocol.CONTROL not in experiments:
        raise AimipTreeError(f"rollout.experiments {experiments}: the organisers' metrics need aimip")
    members = range(1, cfg.rollout.members + 1)
    varmap = load_variable_map()
    w_all, w_band = cos_lat_weights(), cos_lat_weights(ev.max_abs_lat)
    scores = Scores()

    def gr_file(variable, exp, member) -> Path:
        return root / drs.submission_file(cfg.aimip, cfg.periods, variable, exp, member, "gr").relpath

    probe = gr_file("tas", protocol.CONTROL, 1)
    if not probe.exists():
        raise FileNotFoundError(f"{probe}: no gr file: set aimip.grids: [gn, gr] (the organisers' metrics are on 1 degree)")
    all_months = file_months(probe)
    sel = month_index(all_months, *ev.analysis)
    months = all_months[sel]
    with tempfile.TemporaryDirectory(prefix="aimip-eval-", dir=output.parent if output.parent.exists() else None) as tmp:
        ref_path = reference_on_one_degree(cfg, state, Path(tmp), cdo_exe)
        ref_all = np.ones(len(months), dtype=bool)
        sst = read_levels(ref_path, "sst", ref_all)[:, 0]
        box = ((ONE_DEGREE.lat >= NINO34_LAT[0]) & (ONE_DEGREE.lat <= NINO34_LAT[1]))[:, None] & \
              ((ONE_DEGREE.lon >= NINO34_LON[0]) & (ONE_DEGREE.lon <= NINO34_LON[1]))[None, :]
        nino = running_mean3(wmean(anomalies(sst, months), w_all * box))
        scores.add("organisers.e3.nino34_std", np.nanstd(nino), "K", "standard deviation of the reference "
                   "Nino3.4 index (1-degree SST, 3-month running mean)")
        for name, spec in varmap.items():
            levels = list(spec.levels_pa) or [None]
            stats = {exp: [field_stats(read_levels(gr_file(name, exp, k), name, sel), months, ev.periods, nino,
                                       w_all, full=exp == protocol.CONTROL) for k in members] for exp in experiments}
            ref = field_stats(read_levels(ref_path, name, ref_all), months, ev.periods, nino, w_all, full=True)
            units = spec.units
            a = stats[protocol.CONTROL]
            for li, lev in enumerate(levels):
                lab = label(name, lev)
                for pi, p in enumerate(ev.periods):
                    tag = f"{p[0][:4]}-{p[1][:4]}"
                    bias = np.mean([m["means"][pi][li] for m in a], axis=0) - ref["means"][pi][li]
                    scores.add(f"organisers.e1.bias_rms.{lab}.{tag}", math.sqrt(float(wmean(bias ** 2, w_band))),
                               units, f"RMS (cos-lat, |lat| <= {ev.max_abs_lat:g}) of the time-mean bias of the "
                               f"ensemble mean, {p[0]}..{p[1]}, 1-degree gr files vs the reference")
                    scores.add(f"organisers.e1.bias_mean.{lab}.{tag}", wmean(bias, w_all), units,
                               "global mean (cos-lat) of that bias")
                    member_trends = np.array([m["trends"][li, pi] for m in a])
                    scores.add(f"organisers.e2.trend.{lab}.{tag}.emulator", member_trends.mean(), f"{units} decade-1",
                               "mean over members of the trend of global-mean monthly anomalies")
                    scores.add(f"organisers.e2.trend.{lab}.{tag}.emulator_member_std", member_trends.std(ddof=1)
                               if len(member_trends) > 1 else None, f"{units} decade-1", "spread of those trends")
                    scores.add(f"organisers.e2.trend.{lab}.{tag}.reference", ref["trends"][li, pi],
                               f"{units} decade-1", "trend of the reference's global-mean monthly anomalies")
                if lab in E3_FIELDS:
                    em_reg = np.mean([m["regression"][li] for m in a], axis=0)
                    scores.add(f"organisers.e3.regression.{lab}.pattern_correlation",
                               pattern_correlation(em_reg, ref["regression"][li], w_all), "1",
                               "cos-lat pattern correlation of the regression maps on Nino3.4, emulator vs reference")
                    scores.add(f"organisers.e3.regression.{lab}.amplitude_ratio",
                               amplitude_ratio(em_reg, ref["regression"][li], w_all), "1",
                               "<e, r> / <r, r> of the regression maps (cos-lat)")
                if lab in E5_FIELDS:
                    control = np.mean([m["time_mean"][li] for m in a], axis=0)
                    for exp in experiments:
                        if exp == protocol.CONTROL:
                            continue
                        warm = np.mean([m["time_mean"][li] for m in stats[exp]], axis=0)
                        resp = float(wmean(warm - control, w_all))
                        scores.add(f"organisers.e5.response.{lab}.{exp}", resp, units,
                                   f"global mean (cos-lat) of the time-mean response {exp} - aimip, "
                                   f"{ev.analysis[0]}..{ev.analysis[1]}")
                        scores.add(f"organisers.e5.sensitivity.{lab}.{exp}", resp / protocol.SST_OFFSET_K[exp],
                                   f"{units} K-1", "that response per kelvin of SST warming")
            log.info("%s: scored", name)
    doc = {"grid": "gr (1 degree, 180 x 360)", "weights": "cos(latitude)", "max_abs_lat": ev.max_abs_lat,
           "periods": ev.periods, "analysis": ev.analysis, "experiments": experiments,
           "members": len(members), "reference": [str(p) for p in state[:1]] + (["..."] if len(state) > 1 else []),
           "scores": dict(scores)}
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / "scores.json", doc)
    with atomic_path(output / "scores.md") as tmp:
        tmp.write_text(markdown(doc))
    return doc


def markdown(doc: dict) -> str:
    lines = ["# AI-MIP metrics on the 1-degree gr tree (the organisers' way)", "",
             f"cos(lat) weights; E1 RMS over |lat| <= {doc['max_abs_lat']:g}; periods "
             + ", ".join(f"{a}..{b}" for a, b in doc["periods"]) + f"; members: {doc['members']}.", "",
             "| score | value | units |", "|---|---|---|"]
    for name, item in doc["scores"].items():
        v = item["value"]
        lines.append(f"| `{name}` | {'n/a' if v is None else f'{v:.4g}'} | {item['units']} |")
    return "\n".join(lines) + "\n"
