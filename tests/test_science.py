"""The science benchmark (`mdiff bench science`) end to end at a tiny size, so it cannot rot:
world, statistics, training, three rollouts, evaluation and the printed headline scores."""

from __future__ import annotations

import json

import yaml

from mdiff.cli import main as cli_main

TINY_MODEL = {
    "model": {"latent_channels": 4, "squeeze": 2, "seasonal_basis": 3, "hidden_channels": 8, "encoder_rank": 8,
              "decoder_rank": 8, "denoiser_rank": 8, "diffusion_steps": 4, "linear_forcing_rank": 8},
    "train": {"epochs": 1, "batch_size": 8, "sample_every": 1, "device": "cpu"},
}


def test_science_benchmark_runs_and_prints_the_scores(tmp_path, capsys):
    model = tmp_path / "tiny.yaml"
    model.write_text(yaml.safe_dump(TINY_MODEL))
    argv = ["bench", "science", "--model", str(model), "--grid", "17x32", "--members", "2", "--seed", "3",
            "--workdir", str(tmp_path / "science"), "--threads", "1"]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("science benchmark, setting default, seed 3")
    last = json.loads(out[-1])
    assert last["of"] == 9 and 0 <= last["met"] <= 9
    headline = last["headline"]
    assert set(headline) >= {"perfect.response.tas.aimip-p4k.pattern_correlation", "perfect.nao.variance_ratio"}
    assert all(v is not None for v in headline.values()), headline
    # the linear oracle's scores come with the emulator's, fitted on the training months only
    assert last["perfect"]["perfect.response.tas.aimip-p4k.oracle_amplitude_ratio"] is not None
    # a second call reuses the world and the trained run (cached by their settings)
    runs = list((tmp_path / "science").glob("run_*"))
    assert len(runs) == 1 and (runs[0] / "science.json").exists()
