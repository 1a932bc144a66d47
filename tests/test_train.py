"""Joint training: overfit, resume, DDP, EMA (METHOD.md defect 3), SIGTERM, checkpoints."""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import pytest
import torch

from mdiff import checkpoint
from mdiff import config as C
from mdiff.data.dataset import MonthPairDataset, load_statics
from mdiff.data.normalize import Normalizer
from mdiff.grid import LatLonGrid
from mdiff.nn.model import build_model, draw_training_noise, weighted_mse
from mdiff.train import (
    EXIT_PREEMPTED,
    TrainOptions,
    _StopFlag,
    parameter_groups,
    prefit_linear_forcing,
    sample_generator,
    train,
    train_step,
)

DATA = Path(__file__).parent / "data"
TINY = C.ModelConfig(latent_channels=4, squeeze=2, seasonal_basis=3, hidden_channels=8, encoder_rank=8,
                     decoder_rank=8, denoiser_rank=8, diffusion_steps=4)
PERIODS = C.PeriodsConfig(train=["1980-01", "1980-12"], validate=["1979-01", "1979-06"])


def options(world, out: Path, epochs: int, resume: bool = False, **train_keys) -> TrainOptions:
    model_file = C.ModelFile(copy.deepcopy(TINY), C.TrainConfig(epochs=epochs, batch_size=4, sample_every=2,
                                                               device="cpu", **train_keys))
    return TrainOptions([str(p) for p in world.state_files], str(world.statics), str(world.stats),
                        str(out / "checkpoint.pt"), model_file, C.GridConfig(17, 32), PERIODS,
                        model_card=str(out / "model_card.md"), log_file=str(out / "train_log.jsonl"),
                        curve=str(out / "loss_curve.png"), resume=resume, source="synthetic (test)")


def last_state(out: Path) -> dict:
    return torch.load(out / "last.pt", map_location="cpu", weights_only=True)


def assert_states_close(a: dict, b: dict, tol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=tol, rtol=0), key


# ----------------------------------------------------------------------------- end to end


def test_train_writes_outputs_and_ema_is_what_inference_uses(tiny_world, tmp_path):
    """METHOD.md defect 3: EMA weights exist, differ from the raw ones, and are loaded."""
    assert train(options(tiny_world, tmp_path, epochs=2)) == 0
    for name in ("checkpoint.pt", "model_card.md", "train_log.jsonl", "loss_curve.png", "last.pt"):
        assert (tmp_path / name).stat().st_size > 0, name
    card = (tmp_path / "model_card.md").read_text()
    assert "Chosen epoch" in card and "1980-01 .. 1980-12" in card and "loss_curve.png" in card
    assert len((tmp_path / "train_log.jsonl").read_text().splitlines()) == 2

    payload = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=True)
    raw, ema = payload["model_state"], payload["ema_state"]
    differing = [k for k in raw if raw[k].dtype.is_floating_point and not torch.equal(raw[k], ema[k])]
    assert "decoder.spectral.synthesis" in differing and "denoiser.spectral.synthesis" in differing
    # the PCA whitening basis is a buffer computed from the EMA encoder: both models carry it
    assert torch.equal(raw["latent_eofs"], ema["latent_eofs"]) and ema["latent_eofs"].abs().sum() > 0
    loaded = checkpoint.load(tmp_path / "checkpoint.pt")
    model, meta = loaded.model, loaded.meta
    assert not model.training
    state = model.state_dict()
    assert all(torch.equal(state[k], ema[k]) for k in ema)
    assert meta["format_version"] == checkpoint.FORMAT_VERSION and meta["grid"] == {"nlat": 17, "nlon": 32}
    assert len(meta["variables"]) == 45 and "channels" in meta["normalization"]
    # the checkpoint carries the statistics it was trained with: no statistics file needed
    assert loaded.normalizer == Normalizer.load(tiny_world.stats, TINY.normalization)
    assert meta["selection"]["rule"].startswith("the EMA model of the last epoch") and meta["epoch"] == 2


def test_resume_continues_exactly(tiny_world, tmp_path):
    # (with the linear forcing path prefitted and in its own parameter group, as in small.yaml)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    linear = {"linear_forcing_lr": 1e-2, "linear_forcing_prefit_epochs": 2}
    assert train(options(tiny_world, straight, epochs=2, **linear)) == 0
    assert train(options(tiny_world, resumed, epochs=1, **linear)) == 0
    assert train(options(tiny_world, resumed, epochs=2, resume=True, **linear)) == 0
    a, b = last_state(straight), last_state(resumed)
    assert_states_close(a["model_state"], b["model_state"], 1e-6)
    assert_states_close(a["ema_state"], b["ema_state"], 1e-6)
    assert a["progress"]["step"] == b["progress"]["step"] == 4


def test_linear_forcing_path_has_its_own_learning_rate():
    model = build_model(TINY, LatLonGrid(17, 32))
    assert len(parameter_groups(model, C.TrainConfig(lr=1e-3))) == 1
    rest, linear = parameter_groups(model, C.TrainConfig(lr=1e-3, linear_forcing_lr=2e-2))
    assert linear["lr"] == 2e-2 and "lr" not in rest  # the rest takes the optimiser's lr
    assert {id(p) for p in linear["params"]} == {id(p) for p in model.linear_forcing.parameters()}
    ids = [id(p) for g in (rest, linear) for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # every parameter once


@pytest.mark.parametrize("batch_size", [2, 64])  # 64: more than the training period's months
def test_linear_forcing_prefit_lowers_its_loss_and_repeats_exactly(tiny_world, batch_size):
    area = torch.as_tensor(tiny_world.grid.area_weights, dtype=torch.float32)
    dataset = MonthPairDataset(tiny_world.state_files, Normalizer.load(tiny_world.stats, TINY.normalization),
                               tiny_world.grid, *PERIODS.train)
    assert (batch_size < len(dataset.months)) == (batch_size == 2)
    tc = C.TrainConfig(batch_size=batch_size, lr=1e-3, linear_forcing_lr=2e-2, linear_forcing_prefit_epochs=3)

    def prefitted():
        torch.manual_seed(0)
        model = build_model(TINY, tiny_world.grid)
        before = regression_loss(model)
        prefit_linear_forcing(model, dataset, area, tc, torch.device("cpu"), show=False)
        return model, before

    def regression_loss(model):
        with torch.no_grad():
            response = model.conditioning(dataset.forcing, dataset.month_of_year).response
            return float(weighted_mse(response, dataset.state, area).mean())

    (a, before), (b, _) = prefitted(), prefitted()
    assert regression_loss(a) < 0.9 * before
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_sigterm_saves_checkpoint_then_exits_nonzero(tiny_world, tmp_path):
    stop = _StopFlag()
    stop.requested = True  # as if SIGTERM arrived during the first step
    assert train(options(tiny_world, tmp_path, epochs=2), stop) == EXIT_PREEMPTED
    saved = last_state(tmp_path)
    assert saved["progress"]["epoch"] == 0 and saved["progress"]["batch"] == 1
    assert not (tmp_path / "checkpoint.pt").exists()
    # the rerun continues mid-epoch and ends where an uninterrupted run ends
    assert train(options(tiny_world, tmp_path, epochs=2, resume=True)) == 0
    assert train(options(tiny_world, tmp_path / "straight", epochs=2)) == 0
    assert_states_close(last_state(tmp_path)["model_state"], last_state(tmp_path / "straight")["model_state"], 1e-6)


def test_overfit_reconstruction_falls_tenfold(tiny_world):
    grid = LatLonGrid(17, 32)
    normalizer = Normalizer.load(tiny_world.stats)
    data = MonthPairDataset(tiny_world.state_files, normalizer, grid, "1980-01", "1980-12")
    torch.manual_seed(0)
    model = build_model(C.ModelConfig(latent_channels=8, squeeze=2, seasonal_basis=3, hidden_channels=32,
                                      encoder_rank=16, decoder_rank=32, denoiser_rank=8, diffusion_steps=4), grid)
    model.set_statics(load_statics(tiny_world.statics, grid, normalizer))
    tc = C.TrainConfig(lr=3e-3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr)
    area = torch.as_tensor(grid.area_weights, dtype=torch.float32)
    batch = data.batch(range(len(data)))
    # "within one CPU minute": CPU time of this process (other jobs on a shared machine do
    # not count), one minute per thread torch uses
    budget = 60.0 * torch.get_num_threads()
    started, first, ratio = time.process_time(), None, 1.0
    for step in range(1000):
        noise = draw_training_noise(model, [sample_generator(0, step, i) for i in range(len(data))])
        recon = train_step(model, model, optimizer, batch, noise, area, tc)["reconstruction"] / len(data)
        first = first or recon
        ratio = first / recon
        if ratio >= 10 or time.process_time() - started > budget:
            break
    assert ratio >= 10, f"reconstruction fell {ratio:.1f}x in {time.process_time() - started:.0f} CPU s"


# ----------------------------------------------------------------------------- DDP


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, optimizer, batch, noise, area, tc = _ddp_setup(list(range(rank * 2, rank * 2 + 2)))
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        train_step(ddp, model, optimizer, batch, noise, area, tc)
        if rank == 0:
            torch.save(model.state_dict(), out)
    finally:
        torch.distributed.destroy_process_group()


def _ddp_setup(indices: list[int]):
    from tests.test_nn import TINY as NN_TINY
    from tests.test_nn import random_batch

    grid = LatLonGrid(17, 32)
    torch.manual_seed(0)
    model = build_model(NN_TINY, grid)
    full = {k: torch.cat([v, v.flip(0) * 0.5]) for k, v in random_batch(2).items()}  # 4 samples
    full["month"], full["month_next"] = torch.tensor([1, 5, 9, 12]), torch.tensor([2, 6, 10, 1])
    batch = {k: v[indices] for k, v in full.items()}
    noise = draw_training_noise(model, [sample_generator(3, 0, i) for i in indices])
    tc = C.TrainConfig(lr=1e-2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    return model, optimizer, batch, noise, torch.as_tensor(grid.area_weights, dtype=torch.float32), tc


def test_ddp_two_processes_equal_one_process_on_the_combined_batch(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp.pt"
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, str(out)), nprocs=2, join=True)
    model, optimizer, batch, noise, area, tc = _ddp_setup([0, 1, 2, 3])
    before = copy.deepcopy(model.state_dict())
    train_step(model, model, optimizer, batch, noise, area, tc)
    ddp_state = torch.load(out, weights_only=True)
    assert_states_close(ddp_state, model.state_dict(), 1e-5)
    assert not torch.allclose(before["decoder.spectral.synthesis"], ddp_state["decoder.spectral.synthesis"])


# ----------------------------------------------------------------------------- compatibility


def test_committed_checkpoint_still_loads_and_reproduces_its_output():
    """tests/data/tiny_checkpoint.pt was written by tests/data/make_reference.py; if this
    fails after a deliberate format change, bump FORMAT_VERSION and keep old ones loading."""
    loaded = checkpoint.load(DATA / "tiny_checkpoint.pt")
    model, meta = loaded.model, loaded.meta
    expected = torch.load(DATA / "tiny_expected.pt", weights_only=True)
    with torch.no_grad():
        outputs = reference_outputs(model, expected["inputs"])
    for name, value in outputs.items():
        assert torch.allclose(value, expected["outputs"][name], atol=1e-4, rtol=1e-4), name
    assert meta["format_version"] == 1


def reference_outputs(model, inputs: dict) -> dict:
    cond = model.conditioning(inputs["forcing"], inputs["month"])
    cond_next = model.conditioning(inputs["forcing_next"], inputs["month"] % 12 + 1)
    mu, logvar = model.encode(inputs["state"], cond)
    latent = model.sample_next(mu, cond_next, [torch.Generator().manual_seed(int(s)) for s in inputs["seeds"]])
    return {"mu": mu, "logvar": logvar, "latent": latent, "decoded": model.decode(latent, cond_next)}


def test_old_checkpoint_with_unknown_config_fields_loads(tmp_path, caplog):
    payload = torch.load(DATA / "tiny_checkpoint.pt", weights_only=True)
    payload["model_config"]["some_future_option"] = 3
    torch.save(payload, tmp_path / "future.pt")
    checkpoint.load(tmp_path / "future.pt")
    assert "some_future_option" in caplog.text
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "missing.pt")
