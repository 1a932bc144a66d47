"""`mdiff evaluate`: the report of the scores (``mdiff.evaluate.scores``): figures, HTML page
and ``scores.json``.

Writes ``index.html``, ``scores.json`` (every score named, with units and meaning) and
``figures/*.png`` into the output folder; see docs/evaluation.md for every definition.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
from pathlib import Path
from string import Template

import numpy as np

from mdiff import config as C
from mdiff.evaluate import sources as S
from mdiff.evaluate.figures import maps_figure, series_figure
from mdiff.evaluate.scores import (
    FIGURES,
    NAO_EXTENT,
    Evaluation,
    Inputs,
    ens_checkpoints,
    ens_members,
    period_label,
)
from mdiff.evaluate.targets import headline
from mdiff.fileio import atomic_path, write_json
from mdiff.protocol import CONTROL

log = logging.getLogger(__name__)


def write_figures(ev: Evaluation, folder: Path) -> dict[str, Path]:
    """All figures of the report; returns section -> PNG path."""
    g, out, land = ev.grid, ev.out, ev.land
    figs: dict[str, Path] = {}
    if out.bias_rows:
        figs["bias"] = maps_figure(folder / "bias.png", g, out.bias_rows, land,
                                   "E1: time-mean bias, ensemble mean - reference",
                                   rows_per_line=2 if len(out.bias_rows[0].panels) <= 2 else 1)
    if out.global_panels:
        figs["global_means"] = series_figure(folder / "global_means.png", out.global_panels,
                                             "Annual global means (ensemble mean and member range)")
    if out.nino34 is not None:
        figs["nino34"] = series_figure(folder / "nino34.png", [out.nino34], "E3: Nino3.4 index", ncol=1)
    if out.enso_rows:
        figs["enso"] = maps_figure(folder / "enso.png", g, out.enso_rows, land,
                                   "E3: regression on the Nino3.4 index (per K)")
    if out.nao_rows:
        figs["nao"] = maps_figure(folder / "nao.png", g, out.nao_rows, land,
                                  "NAO: first EOF of DJF sea-level pressure anomalies", extent=NAO_EXTENT)
    if out.response_rows:
        figs["response"] = maps_figure(folder / "response.png", g, out.response_rows, land,
                                       "E5: time-mean response to uniform SST warming")
    return figs


# ------------------------------------------------------------------------------ HTML


def _fmt(value) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, str):
        return html.escape(value)
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.1f}"
    return f"{value:.2e}"


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(figs: dict[str, Path], key: str, alt: str) -> str:
    if key not in figs:
        return ""
    return f'<figure><img src="{FIGURES}/{figs[key].name}" alt="{html.escape(alt)}"></figure>'


def build_html(ev: Evaluation, figs: dict[str, Path]) -> str:
    s, e = ev.scores, ev.ecfg
    labels = [S.display(c) for c in e.variables]
    periods = [period_label(p) for p in e.periods]
    parts = []

    if ev.synthetic:
        rows = headline({k: v["value"] for k, v in s.items.items()})
        if any(r["value"] is not None for r in rows):
            parts.append("<h2>At a glance: the emulator against the known truth</h2><p>Perfect-model scores on "
                         "the synthetic world (1 = right). Target: the range the default run must reach "
                         "(green when met). Linear oracle: a linear regression of the state on the SST, fitted "
                         "on the training months only: a reference for what a per-point linear fit of the "
                         "training data gives, not a bound (docs/science.md).</p>")
            body = "".join(
                f"<tr class=\"{'met' if r['met'] else 'missed'}\"><td>{html.escape(r['label'])}</td>"
                f"<td>{_fmt(r['value'])}</td><td>{html.escape(r['target'])}</td><td>{_fmt(r['oracle'])}</td>"
                f"<td>{'met' if r['met'] else 'missed'}</td></tr>" for r in rows)
            parts.append("<table><tr><th>score</th><th>emulator</th><th>target</th><th>linear oracle</th>"
                         f"<th></th></tr>{body}</table>")

    parts.append("<h2>E1: time-mean bias</h2><p>Area-weighted RMS (|lat| &le; "
                 f"{e.max_abs_lat}&deg;) and global mean of the ensemble-mean bias against the reference.</p>")
    header = ["variable", "units"] + [f"{w} {p}" for p in periods for w in ("RMS", "mean")]
    if ev.synthetic:
        header += [f"RMS vs truth climate {p}" for p in periods]
    rows = []
    for d in labels:
        row = [d.label, d.units] + [s.value(f"e1.bias_{w}.{d.label}.{p}") for p in periods for w in ("rms", "mean")]
        if ev.synthetic:
            row += [s.value(f"perfect.bias_rms.{d.label}.{p}") for p in periods]
        rows.append(row)
    parts.append(_table(header, rows) + _figure(figs, "bias", "bias maps"))

    parts.append("<h2>E2: trends of global means, and stability</h2><p>Linear trend of global-mean monthly "
                 "anomalies per decade: ensemble mean &plusmn; member standard deviation; reference.</p>")
    header = ["variable", "units"] + [f"{w} {p}" for p in periods for w in ("emulator", "&plusmn;", "reference")]
    header = [h.replace("&plusmn;", "member std") for h in header]
    rows = [[d.label, f"{d.units}/decade"] + [s.value(f"e2.trend.{d.label}.{p}.{w}") for p in periods
                                              for w in ("emulator", "emulator_member_std", "reference")]
            for d in labels]
    parts.append(_table(header, rows))
    exps = [CONTROL, *ev.warmed]
    n = max(1, min(10, len(np.unique(ev.months.astype("datetime64[Y]"))) // 2))
    parts.append(f"<p>Stability: global mean of the last {n} years minus the first {n} years.</p>")
    header = ["variable", "units"] + [f"{x} late - early" for x in [*exps, "reference"]]
    rows = [[d.label, d.units] + [s.value(f"stability.{d.label}.{x}.late_minus_early") for x in [*exps, "reference"]]
            for d in labels]
    parts.append(_table(header, rows))
    parts.append("<p>Non-finite values: " + ", ".join(
        f"{x}: {_fmt(s.value(f'stability.{x}.nonfinite_values'))}" for x in ev.runs) + "</p>")
    parts.append(_figure(figs, "global_means", "annual global means"))

    parts.append("<h2>Variability and ensemble spread</h2><p>Std of monthly anomalies (members pooled) and the "
                 "spread across members" + (", against the truth realisations" if ev.synthetic else "") + ".</p>")
    header = ["variable", "units", "std emulator", "std reference", "ratio", "spread emulator"]
    if ev.synthetic:
        header += ["spread truth", "spread ratio", "variance ratio vs truth"]
    rows = []
    for d in labels:
        row = [d.label, d.units] + [s.value(f"variability.{d.label}.{w}") for w in ("emulator", "reference", "ratio")]
        row.append(s.value(f"spread.{d.label}.emulator"))
        if ev.synthetic:
            row += [s.value(f"spread.{d.label}.truth"), s.value(f"spread.{d.label}.ratio"),
                    s.value(f"perfect.variance_ratio.{d.label}")]
        rows.append(row)
    parts.append(_table(header, rows))

    parts.append("<h2>E3: ENSO teleconnections</h2><p>Regression of detrended monthly anomalies on the "
                 f"Ni&ntilde;o3.4 index of the forcing SST (std {_fmt(s.value('e3.nino34.std'))} K).</p>")
    header = ["variable", "pattern corr. vs reference", "amplitude ratio vs reference"]
    if ev.synthetic:
        header += ["pattern corr. vs planted", "amplitude vs planted", "truth realisations vs planted"]
    rows = []
    for c in e.enso_variables:
        d = S.display(c)
        row = [d.label] + [s.value(f"e3.regression.{d.label}.{w}") for w in ("pattern_correlation", "amplitude_ratio")]
        if ev.synthetic:
            row += [s.value(f"perfect.enso.{d.label}.{w}") for w in
                    ("pattern_correlation_emulator", "amplitude_ratio_emulator", "pattern_correlation_truth")]
        rows.append(row)
    parts.append(_table(header, rows) + _figure(figs, "nino34", "Nino3.4 index") + _figure(figs, "enso", "ENSO"))

    parts.append("<h2>NAO</h2><p>First EOF of DJF sea-level-pressure anomalies over 20&ndash;80&deg;N, "
                 "90&deg;W&ndash;40&deg;E (area-weighted; emulator members pooled).</p>")
    rows = [["pattern correlation vs reference", s.value("nao.pattern_correlation")],
            ["variance ratio vs reference", s.value("nao.variance_ratio")],
            ["std emulator / reference (hPa)", f"{_fmt(s.value('nao.std.emulator'))} / {_fmt(s.value('nao.std.reference'))}"],
            ["explained variance emulator / reference",
             f"{_fmt(s.value('nao.explained_variance.emulator'))} / {_fmt(s.value('nao.explained_variance.reference'))}"]]
    if ev.synthetic:
        rows += [["pattern correlation vs planted (emulator)", s.value("perfect.nao.pattern_correlation_emulator")],
                 ["pattern correlation vs planted (truth realisations)", s.value("perfect.nao.pattern_correlation_truth")],
                 ["variance ratio vs truth realisations", s.value("perfect.nao.variance_ratio")]]
    parts.append(_table(["score", "value"], rows) + _figure(figs, "nao", "NAO patterns"))

    if ev.warmed:
        parts.append("<h2>E5: response to uniform SST warming</h2><p>Time-mean ensemble-mean response and the "
                     "global-mean sensitivity per kelvin of SST warming.</p>")
        header = ["variable", "units"] + [f"sensitivity {x}" for x in ev.warmed]
        if ev.synthetic:
            header += [f"exact sensitivity {ev.warmed[-1]}"] + [f"{w} {x}" for x in ev.warmed for w in ("pattern corr.", "amplitude")]
        rows = []
        for c in e.response_variables:
            d = S.display(c)
            row = [d.label, f"{d.units}/K"] + [s.value(f"e5.sensitivity.{d.label}.{x}") for x in ev.warmed]
            if ev.synthetic:
                row.append(s.value(f"perfect.response.{d.label}.{ev.warmed[-1]}.sensitivity_truth"))
                row += [s.value(f"perfect.response.{d.label}.{x}.{w}") for x in ev.warmed
                        for w in ("pattern_correlation", "amplitude_ratio")]
            rows.append(row)
        parts.append(_table(header, rows) + _figure(figs, "response", "SST response"))

    members = {x: ens_members(ens) for x, ens in ev.runs.items()}
    subtitle = (f"source: {html.escape(ev.cfg.source)} &middot; grid {ev.grid.nlat}&times;{ev.grid.nlon} &middot; "
                f"analysis {e.analysis[0]}&ndash;{e.analysis[1]} &middot; members: "
                + ", ".join(f"{x} {n}" for x, n in members.items())
                + " &middot; checkpoint " + html.escape(", ".join(c[:12] for c in ens_checkpoints(ev.runs[CONTROL])))
                + f" &middot; written {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}")
    template = Template((Path(__file__).with_name("report.html")).read_text())
    return template.substitute(title="mdiff evaluation report", subtitle=subtitle, body="\n".join(parts))


# -------------------------------------------------------------------------- command


def evaluate(cfg: C.Config, inputs: Inputs, output: str | Path) -> dict:
    """Compute every score, write figures, scores.json and index.html into ``output``."""
    output = Path(output)
    ev = Evaluation(cfg, inputs)
    try:
        ev.run()
        figs = write_figures(ev, output / FIGURES)
        page = build_html(ev, figs)
        doc = {
            "source": cfg.source,
            "analysis": cfg.evaluate.analysis,
            "periods": cfg.evaluate.periods,
            "experiments": {x: {"members": ens_members(ens), "files": ens.paths,
                                "checkpoint_sha256": ens_checkpoints(ens)} for x, ens in ev.runs.items()},
            "reference": ev.reference.paths[:1] + (["..."] if len(ev.reference.paths) > 1 else []),
            "truth": str(inputs.truth) if inputs.truth else None,
            "figures": {k: f"{FIGURES}/{p.name}" for k, p in figs.items()},
            "scores": ev.scores.items,
        }
    finally:
        ev.close()
    write_json(output / "scores.json", doc)
    with atomic_path(output / "index.html") as tmp:
        tmp.write_text(page)
    log.info("report: %s (%d scores, %d figures)", output / "index.html", len(ev.scores.items), len(figs))
    return doc
