"""Fault tests, training: `mdiff train --resume` killed with SIGKILL at random moments (not
only at epoch boundaries), then rerun, ends with the outputs of an uninterrupted run (weights
to 1e-6, the same log); a declared output never appears under its final name before it is
complete, and no temporaries are left (issue 12, findings 5 and 6)."""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

import fault_tools as FT
import pytest
import torch
import yaml

pytestmark = pytest.mark.faults

MODEL = {"model": {"latent_channels": 4, "squeeze": 2, "seasonal_basis": 3, "hidden_channels": 8,
                   "encoder_rank": 8, "decoder_rank": 8, "denoiser_rank": 8, "diffusion_steps": 4},
         "train": {"epochs": 5, "batch_size": 1, "sample_every": 2, "device": "cpu"}}
SETTINGS = {"grid": {"nlat": 17, "nlon": 32},
            "periods": {"run_start": "1978-10", "run_end": "1980-12", "stats": ["1979-01", "1980-12"],
                        "train": ["1980-01", "1980-12"], "validate": ["1979-01", "1979-06"]}}
TRAINING_STARTS = "mdiff.train INFO training "  # the log line before the first epoch
DECLARED = ("checkpoint.pt", "model_card.md", "train_log.jsonl", "loss_curve.png")


def train_cmd(tiny_world, model_yaml: Path, out: Path) -> list[str]:
    state = [str(tiny_world.prepared / "state" / f"{y}.nc") for y in (1979, 1980)]
    return FT.mdiff_cmd("train", "--settings", json.dumps(SETTINGS), "--model", str(model_yaml), "--state", *state,
                        "--statics", str(tiny_world.statics), "--stats", str(tiny_world.stats),
                        "--output", str(out / "checkpoint.pt"), "--model-card", str(out / "model_card.md"),
                        "--log-file", str(out / "train_log.jsonl"), "--curve", str(out / "loss_curve.png"),
                        "--resume")


def weights(path: Path) -> dict:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return {**{f"model.{k}": v for k, v in payload["model_state"].items()},
            **{f"ema.{k}": v for k, v in payload["ema_state"].items()}}


def weight_difference(a: Path, b: Path) -> float:
    x, y = weights(a), weights(b)
    assert x.keys() == y.keys()
    return max(float((x[k].double() - y[k].double()).abs().max()) for k in x if x[k].numel())


def log_records(path: Path) -> list[dict]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for r in records:
        r.pop("elapsed_s", None)  # wall time differs between runs
    return records


def same_log(a: Path, b: Path) -> bool:
    x, y = log_records(a), log_records(b)

    def close(u, v) -> bool:
        if isinstance(u, dict):
            return u.keys() == v.keys() and all(close(u[k], v[k]) for k in u)
        if isinstance(u, float):
            return abs(u - v) <= 1e-6 * max(1.0, abs(u))
        return u == v

    return len(x) == len(y) and all(close(u, v) for u, v in zip(x, y, strict=True))


def complete_png(path: Path) -> bool:
    data = path.read_bytes()
    return data.startswith(b"\x89PNG\r\n\x1a\n") and data.rstrip(b"\x00").endswith(b"IEND\xaeB`\x82")


def difference(out: Path, reference: Path) -> str | None:
    """How a rerun's outputs differ from the uninterrupted run's (None: they do not)."""
    diff = weight_difference(out / "checkpoint.pt", reference / "checkpoint.pt")
    same = diff <= 1e-6 and same_log(out / "train_log.jsonl", reference / "train_log.jsonl")
    return None if same and not incomplete_outputs(out, reference) else f"differs (weights by {diff})"


def incomplete_outputs(out: Path, reference: Path) -> list[str]:
    """Declared outputs under their final names that are not the complete result."""
    bad = []
    if (out / "checkpoint.pt").exists():
        if weight_difference(out / "checkpoint.pt", reference / "checkpoint.pt") > 1e-6:
            bad.append("checkpoint.pt differs")
        missing = [n for n in DECLARED if not (out / n).exists()]
        if missing:
            bad.append(f"checkpoint.pt published before {missing}")
    if (out / "train_log.jsonl").exists() and not same_log(out / "train_log.jsonl", reference / "train_log.jsonl"):
        bad.append("train_log.jsonl is not the complete log")
    if (out / "model_card.md").exists() and "Chosen epoch" not in (out / "model_card.md").read_text():
        bad.append("model_card.md incomplete")
    if (out / "loss_curve.png").exists() and not complete_png(out / "loss_curve.png"):
        bad.append("loss_curve.png incomplete")
    return bad


def phase(out: Path) -> str:
    if (out / "checkpoint.pt").exists():
        return "after training finished"
    if any((out / n).exists() for n in DECLARED):
        return "publishing the declared outputs"
    if not (out / "last.pt").exists():
        return "starting up / first epoch"
    epoch = torch.load(out / "last.pt", weights_only=True)["progress"]["epoch"]
    return f"training, after epoch {epoch}"


def test_train_killed_at_random_moments_resumes_exactly(tiny_world, tmp_path):
    record: FT.KillRecord = FT.RECORD["train"]
    target_kills = FT.kills("train")
    draw = FT.rng("train")
    started = time.perf_counter()
    model_yaml = tmp_path / "tiny.yaml"
    model_yaml.write_text(yaml.safe_dump(MODEL))
    reference, ref_log = tmp_path / "reference", tmp_path / "reference.log"
    ref_log.touch()
    total, seen = FT.timeline(train_cmd(tiny_world, model_yaml, reference), ref_log,
                              {"training": lambda: FT.printed(ref_log, TRAINING_STARTS),
                               "publishing": reference / "train_log.jsonl", "done": reference / "checkpoint.pt"})
    # Timed from the moment the run says training starts (the time to get there varies much
    # on a loaded machine): mostly while it trains, then while it publishes its outputs.
    training = seen["publishing"] - seen["training"]
    publishing = (training, seen["done"] - seen["training"] + 0.05)

    def kill(cmd: list[str], log: Path) -> bool:
        u = draw.random()
        if u < 0.7:
            return FT.run_killed(cmd, draw.uniform(0.0, training), log, anchor=TRAINING_STARTS)
        if u < 0.9:
            return FT.run_killed(cmd, draw.uniform(*publishing), log, anchor=TRAINING_STARTS)
        return FT.run_killed(cmd, draw.uniform(0.0, 1.02 * total), log)

    assert len(log_records(reference / "train_log.jsonl")) == MODEL["train"]["epochs"]
    trial = 0
    while record.kills < target_kills and trial < max(3 * target_kills, target_kills + 5):
        trial += 1
        out = tmp_path / f"trial{trial:03d}"
        out.mkdir()
        cmd, log = train_cmd(tiny_world, model_yaml, out), out / "log"
        if kill(cmd, log):
            record.killed(trial, phase(out), incomplete_outputs(out, reference) or None)
        else:
            record.finished_before_kill += 1
        record.reran(trial, FT.run_complete(cmd, log), log, partial(difference, out, reference), out)
    record.seconds += time.perf_counter() - started
    assert record.kills >= target_kills, f"only {record.kills} kills landed in {trial} trials"
    assert not record.problems, "\n".join(record.problems)
