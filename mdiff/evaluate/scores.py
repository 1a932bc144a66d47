"""The scores of `mdiff evaluate`: AI-MIP metrics, modes, SST response and perfect-model scores.

Reads the rollouts of the three experiments, the reference (prepared ERA5, or
realisation 0 of the synthetic world), the forcing and statics and, on the synthetic
world, the truth (exact response, planted modes, independent realisations), and computes
every score (named, with units and meaning) and the data of every figure panel.
``mdiff.evaluate.report`` lays them out (figures, HTML, scores.json). The numerics live in
``metrics``; see docs/evaluation.md for every definition.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mdiff import config as C
from mdiff import variables as V
from mdiff.data.prepared import PreparedDataError, month_range
from mdiff.evaluate import metrics as M
from mdiff.evaluate import sources as S
from mdiff.evaluate.figures import MapPanel, MapRow, Series, SeriesPanel
from mdiff.evaluate.oracle import Oracle, fit_oracle, sst_basis
from mdiff.evaluate.oracle import unavailable as oracle_unavailable
from mdiff.grid import LatLonGrid
from mdiff.protocol import CONTROL, SST_OFFSET_K, WARMED

log = logging.getLogger(__name__)

NAO_EXTENT = (-90.0, 40.0, 20.0, 80.0)  # lon -90..40, lat 20..80 (the sector drawn)
FIGURES = "figures"


def response_bands(grid: LatLonGrid) -> dict[str, np.ndarray]:
    """Latitude bands of the response scores: tropics |lat| < 30, mid-latitudes 30-60, polar > 60."""
    abs_lat = np.repeat(np.abs(grid.lat)[:, None], grid.nlon, axis=1)
    return {"tropics": abs_lat < 30.0, "midlatitudes": (abs_lat >= 30.0) & (abs_lat <= 60.0), "polar": abs_lat > 60.0}


# ------------------------------------------------------------------------ plumbing


@dataclass
class Inputs:
    rollout: list[Path]
    state: list[Path]
    forcing: Path
    statics: Path
    truth: Path | None = None


class Scores:
    """Named scores: ``name -> {value, units, description}``; non-finite values become null."""

    def __init__(self) -> None:
        self.items: dict[str, dict] = {}

    def add(self, name: str, value, units: str, description: str) -> None:
        if name in self.items:
            raise ValueError(f"score {name!r} computed twice")
        v = float(value) if value is not None else None
        self.items[name] = {"value": v if v is not None and math.isfinite(v) else None,
                            "units": units, "description": description}

    def value(self, name: str) -> float | None:
        item = self.items.get(name)
        return None if item is None else item["value"]


def period_label(period: list[str]) -> str:
    a, b = period
    return f"{a[:4]}-{b[:4]}" if a.endswith("-01") and b.endswith("-12") else f"{a}..{b}"


def _std(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1)) if np.size(x) > 1 else float("nan")


def _annual(months: np.ndarray, series: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Calendar-year means of (..., time) series: years and (..., year)."""
    years = np.asarray(months).astype("datetime64[Y]").astype(int) + 1970
    uniq = np.unique(years)
    return uniq, np.stack([series[..., years == y].mean(axis=-1) for y in uniq], axis=-1)


@dataclass
class Collected:
    """What the figures and the HTML need, gathered while the channels stream by."""

    bias_rows: list[MapRow] = field(default_factory=list)
    enso_rows: list[MapRow] = field(default_factory=list)
    response_rows: list[MapRow] = field(default_factory=list)
    nao_rows: list[MapRow] = field(default_factory=list)
    global_panels: list[SeriesPanel] = field(default_factory=list)
    nino34: SeriesPanel | None = None


# ---------------------------------------------------------------------- evaluation


class Evaluation:
    def __init__(self, cfg: C.Config, inputs: Inputs):
        self.cfg = cfg
        self.ecfg = cfg.evaluate
        self.grid = LatLonGrid(cfg.grid.nlat, cfg.grid.nlon)
        self.months = month_range(*self.ecfg.analysis)
        self.years = M.decimal_years(self.months)
        self.scores = Scores()
        self.out = Collected()
        self._check_channels()

        groups = S.group_rollouts(inputs.rollout)
        if CONTROL not in groups:
            raise PreparedDataError(f"no rollout of experiment {CONTROL!r} among {sorted(groups)} "
                                    f"(files: {[str(p) for p in inputs.rollout[:3]]} ...)")
        self.runs = {exp: S.Ensemble(exp, [[p] for p in files], self.grid)
                     for exp, files in sorted(groups.items())}
        self.warmed = [e for e in WARMED if e in self.runs]
        state = sorted(inputs.state, key=lambda p: Path(p).name)
        self.reference = S.Ensemble("reference (prepared state)", [state], self.grid)

        self.synthetic = cfg.source == "synthetic"
        self.truth_dir = inputs.truth
        if self.synthetic and self.truth_dir is None:
            raise PreparedDataError("source is synthetic: the perfect-model scores need --truth "
                                    "(the synthetic world's truth folder)")
        if not self.synthetic and self.truth_dir is not None:
            raise PreparedDataError(f"--truth {self.truth_dir} given, but source is {cfg.source!r}: "
                                    f"truth exists only for the synthetic world")
        self.truth = None
        if self.synthetic:
            # Realisation 0 is the prepared state; r1..r{R-1} are the independent ones.
            extra = S.realization_files(self.truth_dir)
            self.truth = S.Ensemble("truth realisations", [state] + [[p] for p in extra], self.grid)
            log.info("truth: %d realisations (prepared state + %d files)", 1 + len(extra), len(extra))

        self.land = S.read_static(inputs.statics, "lsm", self.grid)
        self.sst = S.read_forcing_sst(inputs.forcing, self.months, self.grid)
        self.nino34 = M.nino34_index(self.grid, self.sst, self.months)
        self.nonfinite = dict.fromkeys(self.runs, 0)
        # The linear oracle (mdiff.evaluate.oracle): fitted on the training months only.
        train, validate = cfg.periods.train, cfg.periods.validate
        self.oracle_periods = (tuple(train), tuple(validate))
        why_not = oracle_unavailable(self.months, *self.oracle_periods) if self.synthetic else "no known truth"
        if why_not and self.synthetic:
            log.warning("linear oracle skipped: %s", why_not)
        self.oracle_basis = (None if why_not else
                             sst_basis(self.grid, self.sst, self.months, M.select_months(self.months, *train)))
        self.planted_drivers = self._planted_drivers() if self.synthetic else None

    def _check_channels(self) -> None:
        for key in ("variables", "enso_variables", "response_variables"):
            bad = [c for c in getattr(self.ecfg, key) if c not in V.STATE_NAMES]
            if bad:
                raise C.ConfigError(f"evaluate.{key}: unknown state channel(s) {bad}; expected names "
                                    f"from mdiff/variables.py: {', '.join(V.STATE_NAMES)}")

    def close(self) -> None:
        for ens in [*self.runs.values(), self.reference, self.truth]:
            if ens is not None:
                ens.close()

    # ------------------------------------------------------------------ driver

    def run(self) -> None:
        e = self.ecfg
        channels = list(dict.fromkeys([*e.variables, *e.enso_variables, *e.response_variables, "psl"]))
        self._nino34_scores()
        for ch in tqdm(channels, desc="evaluate", unit="channel"):
            self._channel(ch)
        for exp, n in self.nonfinite.items():
            self.scores.add(f"stability.{exp}.nonfinite_values", n, "1",
                            f"NaN/Inf values in the evaluated channels of {exp} (0 = a stable run)")

    def _read(self, ens: S.Ensemble, ch: str) -> np.ndarray:
        values = ens.field(ch, self.months)
        if ens.name in self.nonfinite:
            self.nonfinite[ens.name] += int((~np.isfinite(values)).sum())
        return values

    def _oracle(self, ch: str, ref: np.ndarray) -> Oracle | None:
        if self.oracle_basis is None:
            return None
        train, validate = self.oracle_periods
        return fit_oracle(self.grid, self.sst, {ch: ref[0]}, self.months, train, validate, self.oracle_basis)

    def _channel(self, ch: str) -> None:
        e = self.ecfg
        em = self._read(self.runs[CONTROL], ch)
        ref = self._read(self.reference, ch)
        truth = self._read(self.truth, ch) if self.truth is not None else None
        oracle = self._oracle(ch, ref)
        warmed_means, warmed_global = {}, {}
        if ch in e.variables or ch in e.response_variables:
            for exp in self.warmed:
                values = self._read(self.runs[exp], ch)
                warmed_means[exp] = values.mean(axis=(0, 1), dtype=np.float64)
                warmed_global[exp] = M.area_mean(self.grid, values)
                del values
        if ch in e.variables:
            self._bias(ch, em, ref, truth)
            self._trends_and_stability(ch, em, ref, truth, warmed_global, oracle)
            self._variability(ch, em, ref, truth)
        if ch in e.enso_variables:
            self._enso(ch, em, ref, truth, oracle)
        if ch == "psl":
            self._nao(em, ref, truth)
        if ch in e.response_variables and self.warmed:
            self._response(ch, em, warmed_means, oracle)

    # ------------------------------------------------------------------- E1

    def _bias(self, ch, em, ref, truth) -> None:
        d = S.display(ch)
        band = M.lat_band_mask(self.grid, self.ecfg.max_abs_lat)
        panels = []
        for period in self.ecfg.periods:
            label = period_label(period)
            sel = M.select_months(self.months, *period)
            em_mean = em[:, sel].mean(axis=(0, 1), dtype=np.float64)
            bias = em_mean - ref[:, sel].mean(axis=(0, 1), dtype=np.float64)
            self.scores.add(f"e1.bias_rms.{d.label}.{label}", M.area_rms(self.grid, bias, band), d.units,
                            f"E1: area-weighted RMS over |lat| <= {self.ecfg.max_abs_lat} of the time-mean "
                            f"bias (ensemble mean - reference), {label}")
            self.scores.add(f"e1.bias_mean.{d.label}.{label}", M.area_mean(self.grid, bias), d.units,
                            f"E1: global area-weighted mean of the time-mean bias, {label}")
            if truth is not None:
                true_clim = truth[:, sel].mean(axis=(0, 1), dtype=np.float64)
                self.scores.add(f"perfect.bias_rms.{d.label}.{label}",
                                M.area_rms(self.grid, em_mean - true_clim, band), d.units,
                                f"perfect model: RMS of the ensemble mean minus the truth climate "
                                f"(mean of all truth realisations), {label}")
            panels.append(MapPanel(f"bias {label}", bias))
        self.out.bias_rows.append(MapRow(d.label, d.units, panels))

    # ------------------------------------------------------------- E2 + stability

    def _trends_and_stability(self, ch, em, ref, truth, warmed_global, oracle: Oracle | None) -> None:
        d = S.display(ch)
        gm = {CONTROL: M.area_mean(self.grid, em), "reference": M.area_mean(self.grid, ref)[0]}
        if truth is not None:
            gm["truth"] = M.area_mean(self.grid, truth)
            if oracle is not None:
                gm["oracle"] = M.area_mean(self.grid, oracle.predict(ch, self.sst, self.months))
        anomalies = {k: M.monthly_anomalies(v, self.months, axis=-1) for k, v in gm.items()}
        for period in self.ecfg.periods:
            label = period_label(period)
            sel = M.select_months(self.months, *period)
            trend = {k: 10.0 * M.linear_trend(a[..., sel], self.years[sel]) for k, a in anomalies.items()}
            what = f"E2: linear trend of the global-mean monthly anomalies, {label}"
            self.scores.add(f"e2.trend.{d.label}.{label}.emulator", np.mean(trend[CONTROL]),
                            f"{d.units} decade-1", f"{what}: ensemble mean of the members' trends")
            self.scores.add(f"e2.trend.{d.label}.{label}.emulator_member_std", _std(trend[CONTROL]),
                            f"{d.units} decade-1", f"{what}: standard deviation across members")
            self.scores.add(f"e2.trend.{d.label}.{label}.reference", trend["reference"],
                            f"{d.units} decade-1", f"{what}: reference")
            if "truth" in trend:
                self.scores.add(f"perfect.trend.{d.label}.{label}.truth_mean", np.mean(trend["truth"]),
                                f"{d.units} decade-1", f"{what}: mean over the truth realisations")
                self.scores.add(f"perfect.trend.{d.label}.{label}.truth_std", _std(trend["truth"]),
                                f"{d.units} decade-1", f"{what}: standard deviation across truth realisations")
                true_trend = float(np.mean(trend["truth"]))
                for who in (w for w in (CONTROL, "oracle") if w in trend):
                    name = "emulator" if who == CONTROL else "oracle"
                    self.scores.add(f"perfect.trend.{d.label}.{label}.ratio_{name}",
                                    float(np.mean(trend[who])) / true_trend if true_trend else None, "1",
                                    f"{what}: {name} / mean of the truth realisations"
                                    + (" (the linear oracle fitted on the training months)" if who == "oracle" else ""))

        # Stability: annual global means over the whole analysis period.
        years, _ = _annual(self.months, gm["reference"])
        n = max(1, min(10, years.size // 2))
        series = []
        all_global = {CONTROL: gm[CONTROL], **warmed_global}
        for exp in [CONTROL, *self.warmed]:
            _, ann = _annual(self.months, all_global[exp])
            late_early = float(ann.mean(axis=0)[-n:].mean() - ann.mean(axis=0)[:n].mean())
            self.scores.add(f"stability.{d.label}.{exp}.late_minus_early", late_early, d.units,
                            f"stability: ensemble-mean global mean of the last {n} years minus the first {n}")
            series.append(Series(exp, years, ann))
        _, ann_ref = _annual(self.months, gm["reference"])
        self.scores.add(f"stability.{d.label}.reference.late_minus_early",
                        float(ann_ref[-n:].mean() - ann_ref[:n].mean()), d.units,
                        f"stability: reference global mean of the last {n} years minus the first {n}")
        if "truth" in gm:
            _, ann_truth = _annual(self.months, gm["truth"])
            series.append(Series("truth realisations", years, ann_truth, color="0.5"))
        series.append(Series("reference", years, ann_ref, color="k", style="--"))
        self.out.global_panels.append(SeriesPanel(f"{d.label}: annual global mean", d.units, series))

    # ----------------------------------------------------------- variability

    def _variability(self, ch, em, ref, truth) -> None:
        d = S.display(ch)
        var_em = M.interannual_variance(self.grid, em, self.months)
        var_ref = M.interannual_variance(self.grid, ref, self.months)
        what = "std of monthly anomalies (sqrt of the area-weighted mean variance, members pooled)"
        self.scores.add(f"variability.{d.label}.emulator", math.sqrt(var_em), d.units, f"emulator {what}")
        self.scores.add(f"variability.{d.label}.reference", math.sqrt(var_ref), d.units, f"reference {what}")
        self.scores.add(f"variability.{d.label}.ratio", math.sqrt(var_em / var_ref) if var_ref > 0 else None,
                        "1", "emulator / reference std of monthly anomalies")
        spread_em = M.ensemble_variance(self.grid, em)
        self.scores.add(f"spread.{d.label}.emulator", math.sqrt(spread_em), d.units,
                        "ensemble spread: sqrt of the area-weighted, time-mean variance across members")
        if truth is not None:
            spread_truth = M.ensemble_variance(self.grid, truth)
            self.scores.add(f"spread.{d.label}.truth", math.sqrt(spread_truth), d.units,
                            "spread of the truth realisations (same forcing): sqrt of the area-weighted, "
                            "time-mean variance across realisations")
            self.scores.add(f"spread.{d.label}.ratio", math.sqrt(spread_em / spread_truth)
                            if spread_truth > 0 else None, "1", "emulator spread / truth spread")
            var_truth = M.interannual_variance(self.grid, truth, self.months)
            self.scores.add(f"perfect.variance_ratio.{d.label}", var_em / var_truth if var_truth > 0 else None,
                            "1", "perfect model: variance of monthly anomalies, emulator members pooled / "
                            "truth realisations pooled (area-weighted means)")

    # ------------------------------------------------------------------- E3

    def _nino34_scores(self) -> None:
        idx = self.nino34
        self.scores.add("e3.nino34.std", np.nanstd(idx), "K",
                        "E3: standard deviation of the Nino3.4 index of the forcing SST "
                        "(5S-5N, 170W-120W, detrended anomalies, 3-month running mean)")
        series = [Series("Nino3.4 (forcing SST)", self.years, idx, color="C3")]
        if self.synthetic:
            modes = Path(self.truth_dir) / "modes.nc"
            planted = S.read_series(modes, "enso_index", self.months, self.grid)
            # Filtered like the index, so the score asks only whether the box reads the mode.
            planted = M.running_mean(M.detrend(M.monthly_anomalies(planted, self.months, axis=-1)))
            ok = np.isfinite(idx) & np.isfinite(planted)
            corr = float(np.corrcoef(idx[ok], planted[ok])[0, 1])
            self.scores.add("perfect.enso.nino34_vs_planted_index_correlation", corr, "1",
                            "perfect model: correlation of the Nino3.4 index with the planted ENSO index "
                            "(filtered alike: anomalies, detrended, 3-month running mean)")
            series.append(Series("planted ENSO index", self.years, planted, color="0.4", style="--"))
        self.out.nino34 = SeriesPanel("Nino3.4 index of the forcing SST", "K", series)

    def _planted_drivers(self) -> np.ndarray:
        """Design matrix (T, K) of the world's known SST drivers over the analysis months: the
        planted ENSO index first, then the slow modes and the global-mean SST anomaly (where
        modes.nc has them), a linear trend and a constant."""
        modes = Path(self.truth_dir) / "modes.nc"
        columns = [S.read_series(modes, "enso_index", self.months, self.grid)[:, None]]
        for name in ("decadal_index", "global_sst_index"):
            try:
                series = S.read_series(modes, name, self.months, self.grid)
            except PreparedDataError:
                continue
            columns.append(series.reshape(series.shape[0], -1))
        t = np.arange(self.months.size, dtype=np.float64)
        columns += [(t - t.mean())[:, None] / t.size, np.ones((t.size, 1))]
        return np.concatenate(columns, axis=1)

    def _planted_regression(self, field: np.ndarray) -> np.ndarray:
        """Coefficient map (H, W) of the planted ENSO index in a multiple regression of the
        monthly anomalies of ``field`` (T, H, W) on all known SST drivers: ENSO with the other
        modes (and the trend) taken out."""
        x = M.monthly_anomalies(field, self.months, axis=-3).reshape(self.months.size, -1)
        coef, *_ = np.linalg.lstsq(self.planted_drivers, x, rcond=None)
        return coef[0].reshape(self.grid.shape)

    def _planted_enso(self, ch: str) -> np.ndarray:
        """The planted teleconnection of ``ch`` per kelvin of the Nino3.4 index."""
        modes = Path(self.truth_dir) / "modes.nc"
        pattern = S.read_map(modes, f"enso_pattern_{V.channel(ch).variable}", ch, self.grid)
        sst_pattern = S.read_map(modes, "enso_pattern_sst", "sst", self.grid)
        box = M.region_mask(self.grid, M.NINO34_LAT, M.NINO34_LON)
        per_k = float(M.area_mean(self.grid, np.where(self.land < 0.5, sst_pattern, np.nan), box))
        if not math.isfinite(per_k) or abs(per_k) < 1e-6:
            raise PreparedDataError(f"{modes}: enso_pattern_sst averages {per_k} K over the Nino3.4 box; "
                                    f"expected a warm-phase pattern to normalise the teleconnections")
        return pattern / per_k

    def _enso(self, ch, em, ref, truth, oracle: Oracle | None) -> None:
        d = S.display(ch)
        reg_em = M.enso_regression(em.mean(axis=0, dtype=np.float64), self.months, self.nino34)
        reg_ref = M.enso_regression(ref[0], self.months, self.nino34)
        units = f"{d.units} K-1"
        self.scores.add(f"e3.regression.{d.label}.pattern_correlation",
                        M.pattern_correlation(self.grid, reg_em, reg_ref), "1",
                        "E3: pattern correlation of the regression maps on Nino3.4, emulator vs reference")
        self.scores.add(f"e3.regression.{d.label}.amplitude_ratio",
                        M.amplitude_ratio(self.grid, reg_em, reg_ref), "1",
                        "E3: amplitude of the emulator regression map along the reference one "
                        "(<e,r>/<r,r>, area-weighted; 1 = right strength)")
        self.scores.add(f"e3.regression.{d.label}.rms_emulator", M.area_rms(self.grid, reg_em), units,
                        "E3: area-weighted RMS of the emulator regression map")
        self.scores.add(f"e3.regression.{d.label}.rms_reference", M.area_rms(self.grid, reg_ref), units,
                        "E3: area-weighted RMS of the reference regression map")
        panels = [MapPanel("emulator", reg_em), MapPanel("reference", reg_ref)]
        if truth is not None:
            planted = self._planted_enso(ch)
            reg_truth = M.enso_regression(truth, self.months, self.nino34).mean(axis=0)
            for who, reg in (("emulator", reg_em), ("truth", reg_truth)):
                self.scores.add(f"perfect.enso.{d.label}.pattern_correlation_{who}",
                                M.pattern_correlation(self.grid, reg, planted), "1",
                                f"perfect model: pattern correlation of the {who} regression map on Nino3.4 "
                                f"with the planted teleconnection" + (" (mean map of the realisations: "
                                                                       "the sampling ceiling)" if who == "truth"
                                                                       else ""))
                self.scores.add(f"perfect.enso.{d.label}.amplitude_ratio_{who}",
                                M.amplitude_ratio(self.grid, reg, planted), "1",
                                f"perfect model: amplitude of the {who} regression map along the planted "
                                f"teleconnection per K of Nino3.4")
            panels.append(MapPanel("planted", planted))
            # against the planted index itself, the other SST drivers regressed out
            per_index = S.read_map(Path(self.truth_dir) / "modes.nc", f"enso_pattern_{V.channel(ch).variable}",
                                   ch, self.grid)
            maps = {"emulator": self._planted_regression(em.mean(axis=0, dtype=np.float64)),
                    "truth": np.mean([self._planted_regression(r) for r in truth], axis=0)}
            if oracle is not None:
                maps["oracle"] = self._planted_regression(oracle.predict(ch, self.sst, self.months))
            for who, reg in maps.items():
                what = {"truth": "the truth realisations (mean map: the sampling ceiling)",
                        "oracle": "the linear oracle's prediction"}.get(who, "the emulator (ensemble mean)")
                self.scores.add(f"perfect.enso_planted.{d.label}.pattern_correlation_{who}",
                                M.pattern_correlation(self.grid, reg, per_index), "1",
                                f"perfect model: pattern correlation with the planted teleconnection of the "
                                f"regression of {what} on the planted ENSO index, other SST drivers taken out")
                self.scores.add(f"perfect.enso_planted.{d.label}.amplitude_ratio_{who}",
                                M.amplitude_ratio(self.grid, reg, per_index), "1",
                                f"perfect model: amplitude along the planted teleconnection (per unit index) of "
                                f"the regression of {what} on the planted ENSO index, other SST drivers taken out")
        self.out.enso_rows.append(MapRow(d.label, units, panels))

    # ------------------------------------------------------------------- NAO

    def _nao(self, em, ref, truth) -> None:
        g = self.grid
        sector = M.region_mask(g, M.NAO_LAT, M.NAO_LON)
        eof_em = M.nao_eof(g, em, self.months)
        eof_ref = M.nao_eof(g, ref, self.months)
        self.scores.add("nao.pattern_correlation", M.pattern_correlation(g, eof_em["pattern"], eof_ref["pattern"],
                                                                         sector), "1",
                        "NAO (first EOF of DJF psl anomalies, 20-80N 90W-40E): pattern correlation, "
                        "emulator (members pooled) vs reference")
        self.scores.add("nao.variance_ratio", eof_em["variance"] / eof_ref["variance"], "1",
                        "NAO: variance carried by the first EOF (area-weighted), emulator / reference")
        for who, eof in (("emulator", eof_em), ("reference", eof_ref)):
            self.scores.add(f"nao.std.{who}", math.sqrt(eof["variance"]), "hPa",
                            f"NAO: sqrt of the area-weighted variance of the first EOF, {who}")
            self.scores.add(f"nao.explained_variance.{who}", eof["explained"], "1",
                            f"NAO: fraction of DJF psl anomaly variance in the sector explained by EOF1, {who}")
        panels = [MapPanel("emulator EOF1", eof_em["pattern"]), MapPanel("reference EOF1", eof_ref["pattern"])]
        if truth is not None:
            planted = S.read_map(Path(self.truth_dir) / "modes.nc", "nao_pattern_psl", "psl", g)
            planted = M.nao_sign(g, np.where(sector, planted, np.nan)) * planted  # EOF signs are arbitrary
            eof_truth = M.nao_eof(g, truth, self.months)
            for who, eof in (("emulator", eof_em), ("truth", eof_truth)):
                self.scores.add(f"perfect.nao.pattern_correlation_{who}",
                                M.pattern_correlation(g, eof["pattern"], planted, sector), "1",
                                f"perfect model: pattern correlation of the {who} NAO EOF with the planted "
                                f"NAO pattern over the sector")
            self.scores.add("perfect.nao.variance_ratio", eof_em["variance"] / eof_truth["variance"], "1",
                            "perfect model: NAO EOF1 variance, emulator / truth realisations pooled")
            panels.append(MapPanel("planted", np.where(sector, planted, np.nan)))
        self.out.nao_rows.append(MapRow("psl", "hPa per std of PC", panels))

    # ------------------------------------------------------------------- E5

    def _response(self, ch, em, warmed_means, oracle: Oracle | None) -> None:
        d = S.display(ch)
        control = em.mean(axis=(0, 1), dtype=np.float64)
        panels = []
        for exp in self.warmed:
            offset = SST_OFFSET_K[exp]
            response = warmed_means[exp] - control
            self.scores.add(f"e5.sensitivity.{d.label}.{exp}",
                            M.sensitivity_per_kelvin(self.grid, response, offset), f"{d.units} K-1",
                            f"E5: global-mean time-mean response ({exp} - {CONTROL}) per K of SST warming")
            panels.append(MapPanel(f"{exp} - {CONTROL}", response))
            if self.truth is not None:
                true = S.read_response(Path(self.truth_dir) / "response.nc", ch, exp, self.grid)
                self.scores.add(f"perfect.response.{d.label}.{exp}.pattern_correlation",
                                M.pattern_correlation(self.grid, response, true), "1",
                                "perfect model: pattern correlation of the response with the exact planted one")
                self.scores.add(f"perfect.response.{d.label}.{exp}.amplitude_ratio",
                                M.amplitude_ratio(self.grid, response, true), "1",
                                "perfect model: amplitude of the response along the exact one (<e,t>/<t,t>)")
                self.scores.add(f"perfect.response.{d.label}.{exp}.sensitivity_truth",
                                M.sensitivity_per_kelvin(self.grid, true, offset), f"{d.units} K-1",
                                "perfect model: global-mean sensitivity per K of the exact response")
                land = self.land >= 0.5
                versions = [("", response)]
                if oracle is not None:
                    versions.append(("oracle_", oracle.response(ch, offset)))
                for who, resp in versions:
                    name = "the linear oracle's" if who else "the emulator's"
                    for region, mask in (("land", land), ("ocean", ~land)):
                        true_mean = float(M.area_mean(self.grid, true, mask))
                        self.scores.add(f"perfect.response.{d.label}.{exp}.{who}{region}_ratio",
                                        float(M.area_mean(self.grid, resp, mask)) / true_mean if true_mean else None,
                                        "1", f"perfect model: {name} area-mean response over {region} "
                                        f"(land fraction {'>=' if region == 'land' else '<'} 0.5) / the exact one")
                    # where the response is right or wrong: latitude bands, and the pattern without the poles
                    for band, mask in response_bands(self.grid).items():
                        true_mean = float(M.area_mean(self.grid, true, mask))
                        self.scores.add(f"perfect.response.{d.label}.{exp}.{who}band_ratio.{band}",
                                        float(M.area_mean(self.grid, resp, mask)) / true_mean if true_mean else None,
                                        "1", f"perfect model: {name} area-mean response over {band} / the exact one")
                    self.scores.add(f"perfect.response.{d.label}.{exp}.{who}pattern_correlation_lat60",
                                    M.pattern_correlation(self.grid, resp, true, M.lat_band_mask(self.grid, 60.0)),
                                    "1", f"perfect model: pattern correlation of {name} response with the exact "
                                    "one over |lat| <= 60")
                    if who:
                        self.scores.add(f"perfect.response.{d.label}.{exp}.oracle_pattern_correlation",
                                        M.pattern_correlation(self.grid, resp, true), "1",
                                        "perfect model: pattern correlation of the linear oracle's response "
                                        "with the exact one (a per-point linear fit to the training months)")
                        self.scores.add(f"perfect.response.{d.label}.{exp}.oracle_amplitude_ratio",
                                        M.amplitude_ratio(self.grid, resp, true), "1",
                                        "perfect model: amplitude of the linear oracle's response along the exact one")
                if exp == self.warmed[-1]:
                    panels.append(MapPanel(f"exact {exp}", true))
        if ch in self.ecfg.variables:
            self.out.response_rows.append(MapRow(d.label, d.units, panels))


# --------------------------------------------------------------------------- figures


def ens_members(ens: S.Ensemble) -> int:
    return sum(ds.sizes.get("member", 1) for files in ens.sources for _, ds in files[:1])


def ens_checkpoints(ens: S.Ensemble) -> list[str]:
    """The distinct ``checkpoint_sha256`` attributes of a rollout ensemble's files (provenance)."""
    return sorted({str(ds.attrs.get("checkpoint_sha256", "unknown")) for files in ens.sources for _, ds in files})
