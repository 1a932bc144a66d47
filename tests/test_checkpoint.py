"""The checkpoint as the contract: one `load` gives model, normaliser, channels and grid,
building the network from the stored variable table; old formats migrate."""

from __future__ import annotations

from pathlib import Path

import fake_channel
import pytest
import torch
from test_train import reference_outputs

from mdiff import checkpoint
from mdiff import config as C
from mdiff import variables as V
from mdiff.rollout import RolloutInputError, rollout_file

DATA = Path(__file__).parent / "data"
OLD = DATA / "tiny_checkpoint.pt"  # format 1, written before the table knew CMIP units


def test_the_committed_checkpoint_gives_model_normaliser_channels_and_grid():
    loaded = checkpoint.load(OLD)
    assert loaded.meta["format_version"] == 1 and (loaded.grid.nlat, loaded.grid.nlon) == (17, 32)
    assert loaded.channels == V.STATE  # its format-1 table, completed from today's
    assert loaded.normalizer.mode == loaded.model.config.normalization == "global"  # MD v0.9's, predating the key
    assert set(loaded.normalizer.stats) == {c.name for c in V.STATE + V.PREPARED_FORCING + V.STATIC}


def test_a_format_1_table_migrates_to_the_current_records():
    stored = torch.load(OLD, weights_only=True)["variables"]
    assert "cmip_name" in stored[0] and "cmip" not in stored[0]
    assert V.from_table(stored) == V.ALL
    assert V.from_table(stored)[V.STATE_NAMES.index("tdas")].cmip.also_from == ("ps",)


def test_an_old_checkpoint_still_loads_after_a_channel_is_added_to_the_table(monkeypatch):
    """The network is built from the stored table: 37 state channels, whatever the table has now."""
    fake_channel.extend_table(monkeypatch.setattr)
    assert V.N_STATE == 38
    loaded = checkpoint.load(OLD)
    assert loaded.model.n_state == 37 and fake_channel.FAKE not in loaded.channels
    expected = torch.load(DATA / "tiny_expected.pt", weights_only=True)
    with torch.no_grad():
        outputs = reference_outputs(loaded.model, expected["inputs"])
    for name, value in outputs.items():
        assert torch.allclose(value, expected["outputs"][name], atol=1e-4, rtol=1e-4), name
    # ... and a rollout, which writes the table's channels, says why it cannot use it
    cfg = C.from_dict(C.Config, {"grid": {"nlat": 17, "nlon": 32}, "rollout": {"device": "cpu"}})
    with pytest.raises(RolloutInputError, match=r"trained on the state channels .*'psl'\]; this mdiff's variable "
                                                r"table has .*'tfake'\]"):
        rollout_file(cfg, OLD, "forcing.nc", "1978.nc", "aimip", [1], "out.nc")


def test_a_checkpoint_of_a_newer_format_is_a_clear_error(tmp_path):
    contents = torch.load(OLD, weights_only=True)
    contents["format_version"] = checkpoint.FORMAT_VERSION + 1
    torch.save(contents, tmp_path / "newer.pt")
    with pytest.raises(checkpoint.CheckpointError, match=rf"format_version {checkpoint.FORMAT_VERSION + 1}; this "
                                                         rf"mdiff reads 1\.\.{checkpoint.FORMAT_VERSION}"):
        checkpoint.load(tmp_path / "newer.pt")
