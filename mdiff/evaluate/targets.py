"""The headline perfect-model scores and their targets (issue 11), in one place: the report's
summary table and `mdiff bench science` read them from here. ``default`` is the target of
the default `make run`; ``long`` of the science setting of the benchmark."""

from __future__ import annotations

# The headline scores: label, score name, target per setting (low, high; None: open), and
# the name of the linear oracle's score where it has one. One list for the report's summary
# table and this benchmark.
HEADLINE = [
    ("tas +4K response: pattern correlation", "perfect.response.tas.aimip-p4k.pattern_correlation",
     {"default": (0.8, None), "long": (0.95, None)}, "perfect.response.tas.aimip-p4k.oracle_pattern_correlation"),
    ("tas +4K response: amplitude", "perfect.response.tas.aimip-p4k.amplitude_ratio",
     {"default": (0.8, 1.2), "long": (0.9, 1.1)}, "perfect.response.tas.aimip-p4k.oracle_amplitude_ratio"),
    ("tas +4K land response / truth", "perfect.response.tas.aimip-p4k.land_ratio",
     {"default": (0.75, 1.25), "long": (0.9, 1.1)}, "perfect.response.tas.aimip-p4k.oracle_land_ratio"),
    ("tas +4K ocean response / truth", "perfect.response.tas.aimip-p4k.ocean_ratio",
     {"default": (0.75, 1.25), "long": (0.9, 1.1)}, "perfect.response.tas.aimip-p4k.oracle_ocean_ratio"),
    ("tas variance of monthly anomalies / truth", "perfect.variance_ratio.tas",
     {"default": (0.6, None), "long": (0.8, 1.2)}, None),
    ("psl variance of monthly anomalies / truth", "perfect.variance_ratio.psl",
     {"default": (0.6, None), "long": (0.8, 1.2)}, None),
    ("ENSO tas teleconnection amplitude (planted index)", "perfect.enso_planted.tas.amplitude_ratio_emulator",
     {"default": (0.6, 1.4), "long": (0.8, 1.2)}, "perfect.enso_planted.tas.amplitude_ratio_oracle"),
    ("NAO variance / truth", "perfect.nao.variance_ratio",
     {"default": (0.3, None), "long": (0.8, 1.2)}, None),
    ("tas trend 1979-2014 / truth", "perfect.trend.tas.1979-2014.ratio_emulator",
     {"default": (0.75, 1.25), "long": (0.9, 1.1)}, "perfect.trend.tas.1979-2014.ratio_oracle"),
]


def within(value: float | None, target: tuple[float | None, float | None]) -> bool:
    low, high = target
    return value is not None and (low is None or value >= low) and (high is None or value <= high)


def target_text(target: tuple[float | None, float | None]) -> str:
    low, high = target
    if high is None:
        return f">= {low:g}"
    return f"{low:g} - {high:g}"


def headline(scores: dict[str, float | None], setting: str = "default") -> list[dict]:
    """The headline rows: label, value, oracle value, target and whether it is met."""
    rows = []
    for label, name, targets, oracle in HEADLINE:
        value = scores.get(name)
        rows.append({"label": label, "score": name, "value": value,
                     "oracle": scores.get(oracle) if oracle else None, "target": target_text(targets[setting]),
                     "met": within(value, targets[setting])})
    return rows
