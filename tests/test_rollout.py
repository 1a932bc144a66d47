"""Ensemble rollouts: member reproducibility, forcing offsets, streaming file, resume, guards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from small_model import save_checkpoint, small_model

from mdiff import variables as V
from mdiff.data import prepared as P
from mdiff.rollout import (
    EnsembleStepper,
    RolloutGuardError,
    RolloutJob,
    check_month,
    experiment_forcing,
    initial_state,
    member_generators,
    member_seed,
    parse_members,
    partial_path,
    resume_path,
    run_rollout,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny grids gain nothing from intra-op threads, and on a busy 2-core machine the thread
    hand-offs of every small op cost more than the op itself."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tiny_world):
    """A small random model on the tiny world, its statistics and the run's inputs."""
    grid = tiny_world.grid
    model, normalizer = small_model(tiny_world)
    months = P.month_range(tiny_world.run_start, tiny_world.run_end)
    moy = P.month_of_year(months)
    sst, ice = experiment_forcing(tiny_world.forcing, grid, months, "aimip")
    forcing = normalizer.forcing(sst, ice, months=moy)
    state_file = tiny_world.prepared / "state" / "1978.nc"
    state0 = normalizer.normalize(initial_state(state_file, grid, months[0]), V.STATE_NAMES, moy[0])
    return dict(grid=grid, model=model, normalizer=normalizer, months=months, forcing=forcing, state0=state0)


def _job(setup, members, months=None, experiment="aimip", resume_every=4):
    months = setup["months"] if months is None else months
    return RolloutJob(experiment, list(members), 1234, months, setup["grid"], "0" * 64, resume_every)


def test_member_seeds_are_fixed_distinct_int64():
    seeds = [member_seed(20250101, k) for k in range(1, 51)]
    assert len(set(seeds)) == 50
    assert all(0 <= s < 2**63 for s in seeds)
    assert member_seed(20250101, 3) == member_seed(20250101, 3) != member_seed(20250102, 3)
    assert parse_members("003-005") == [3, 4, 5]
    with pytest.raises(ValueError, match="FIRST-LAST"):
        parse_members("5")


def test_member_alone_equals_member_in_batch(setup):
    n_months = 8
    stepper = EnsembleStepper(setup["model"], setup["forcing"][:n_months], setup["months"][:n_months], "cpu")
    outs = {}
    for members in ([1, 2, 3, 4, 5], [4]):
        latent0, first = stepper.initial(setup["state0"], len(members))
        states = [first]
        for _, _latent, state in stepper.steps(latent0, member_generators(1234, members)):
            states.append(state)
        outs[tuple(members)] = torch.stack(states, dim=1)  # (B, T, 37, H, W)
    batch, alone = outs[(1, 2, 3, 4, 5)][3], outs[(4,)][0]
    torch.testing.assert_close(alone, batch, rtol=1e-5, atol=1e-5)
    # and members really differ from each other (the noise is per member)
    assert (outs[(1, 2, 3, 4, 5)][0, -1] - batch[-1]).abs().max() > 1e-3


def test_lanes_step_the_same_members_as_one_thread(setup):
    """With 3 torch threads on a CPU the stepper runs the members in 3 lanes of one thread
    each: every member gets what one thread gives it, and the thread count is restored."""
    n_months = 5
    stepper = EnsembleStepper(setup["model"], setup["forcing"][:n_months], setup["months"][:n_months], "cpu")
    members = [1, 2, 3, 4, 5]
    outs = []
    for threads in (1, 3):
        torch.set_num_threads(threads)
        try:
            latent0, _ = stepper.initial(setup["state0"], len(members))
            seen = []
            for _, latent, state in stepper.steps(latent0, member_generators(1234, members)):
                seen.append(torch.get_num_threads())
                outs.append((latent, state))
            assert seen == [1] * (n_months - 1)  # one thread per lane while stepping
            assert torch.get_num_threads() == threads
        finally:
            torch.set_num_threads(1)
    one, lanes = outs[n_months - 2], outs[-1]
    torch.testing.assert_close(lanes[0], one[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lanes[1], one[1], rtol=1e-5, atol=1e-5)


def test_warmed_forcing_differs_by_exactly_the_offset_over_ocean(setup, tiny_world):
    grid, months, normalizer = setup["grid"], setup["months"][:24], setup["normalizer"]
    moy = P.month_of_year(months)
    sst0, ice0 = experiment_forcing(tiny_world.forcing, grid, months, "aimip")
    f0 = normalizer.forcing(sst0, ice0, months=moy)
    ocean = np.isfinite(sst0)
    assert ocean.any() and (~ocean).any()
    std = normalizer.stats["sst"].anomaly_std  # the anomaly normalisation's scale
    for experiment, offset in (("aimip-p2k", 2.0), ("aimip-p4k", 4.0)):
        sst, ice = experiment_forcing(tiny_world.forcing, grid, months, experiment)
        np.testing.assert_array_equal(np.isfinite(sst), ocean)  # land stays land
        assert np.all(sst[ocean] - sst0[ocean] == offset)  # exactly, over every ocean point
        np.testing.assert_array_equal(ice, ice0)  # sea ice unchanged
        f = normalizer.forcing(sst, ice, months=moy)
        diff = f - f0
        np.testing.assert_allclose(diff[:, 0][ocean], offset / std, rtol=1e-5)
        assert np.all(diff[:, 0][~ocean] == 0)  # nothing changes over land
        assert np.all(diff[:, 1:] == 0)  # sea-ice and land-mask channels unchanged


def test_rollout_file_contract(setup, tmp_path):
    months = setup["months"][:14]
    job = _job(setup, [2, 3], months)
    out = run_rollout(job, setup["model"], setup["normalizer"], setup["forcing"][:14], setup["state0"],
                      tmp_path / "rollout" / "aimip" / "members_002-003.nc", progress=False)
    assert not partial_path(out).exists() and not resume_path(out).exists()
    ds = xr.open_dataset(out)
    assert ds.attrs["experiment_id"] == "aimip" and ds.attrs["sst_offset_K"] == 0.0
    assert ds.attrs["checkpoint_sha256"] == "0" * 64 and ds.attrs["mdiff_version"]
    assert ds["member"].values.tolist() == [2, 3]
    assert ds["member_seed"].dtype == np.int64
    assert ds["member_seed"].values.tolist() == [member_seed(1234, 2), member_seed(1234, 3)]
    np.testing.assert_array_equal(ds["time"].values.astype("datetime64[M]"), months)
    np.testing.assert_array_equal(ds["time_bnds"].values[:, 0].astype("datetime64[M]"), months)
    np.testing.assert_array_equal(ds["time_bnds"].values[:, 1].astype("datetime64[M]"), months + 1)
    assert ds["plev"].attrs["units"] == "Pa" and ds["plev"].values[0] == 100000.0
    for ch in V.STATE:
        da = ds[ch.variable]
        assert da.dtype == np.float32 and da.attrs["units"] == ch.units
        assert da.dims[:2] == ("member", "time")
    assert ds["ta"].dims == ("member", "time", "plev", "lat", "lon")
    # the first month is the decoded initial latent, the same for every member
    np.testing.assert_array_equal(ds["tas"].values[0, 0], ds["tas"].values[1, 0])
    assert not np.array_equal(ds["tas"].values[0, -1], ds["tas"].values[1, -1])
    # the file reads back through the prepared-contract helpers, per member
    x = P.dataset_to_channels(ds.isel(member=0), V.STATE, str(out))
    assert x.shape == (14, V.N_STATE, *setup["grid"].shape) and np.isfinite(x).all()


def test_resume_equals_uninterrupted_run(setup, tmp_path):
    months = setup["months"][:15]
    forcing = setup["forcing"][:15]
    args = (setup["model"], setup["normalizer"], forcing, setup["state0"])
    straight = run_rollout(_job(setup, [1, 2], months), *args, tmp_path / "a.nc", progress=False)

    class Killed(Exception):
        pass

    def kill_at_month_10(index):
        if index == 10:
            raise Killed

    target = tmp_path / "b.nc"
    with pytest.raises(Killed):
        run_rollout(_job(setup, [1, 2], months), *args, target, progress=False, on_month=kill_at_month_10)
    assert not target.exists()  # nothing that looks complete
    assert partial_path(target).exists() and resume_path(target).exists()
    assert torch.load(resume_path(target), weights_only=False)["next_index"] == 8  # resume_every = 4
    resumed = run_rollout(_job(setup, [1, 2], months), *args, target, progress=False)
    assert not resume_path(target).exists()
    a, b = xr.open_dataset(straight), xr.open_dataset(resumed)
    for variable in V.variables(V.STATE):
        np.testing.assert_array_equal(a[variable].values, b[variable].values)


def test_planted_nan_stops_the_run_naming_month_variable_member(setup, tmp_path):
    model = setup["model"]
    months = setup["months"][:12]
    ta850 = V.STATE_NAMES.index("ta850")

    class Planted:
        calls = 0

        def conditioning(self, forcing, month):
            return model.conditioning(forcing, month)

        def encode(self, state, cond):
            return model.encode(state, cond)

        def prepare_month(self, cond, constants=None):
            return model.prepare_month(cond, constants)

        def sample_next(self, latent, cond, generators):
            return model.sample_next(latent, cond, generators)

        def decode(self, latent, cond):
            out = model.decode(latent, cond)
            self.calls += 1
            if self.calls == 6:  # month index 5 (call 1 decodes month 0): 1979-03
                out = out.clone()
                out[1, ta850, 2, 3] = float("nan")
            return out

    target = tmp_path / "members_001-003.nc"
    with pytest.raises(RolloutGuardError, match=r"month 1979-03, variable 'ta' \(channel ta850\), member 2"):
        run_rollout(_job(setup, [1, 2, 3], months), Planted(), setup["normalizer"], setup["forcing"][:12],
                    setup["state0"], target, progress=False)
    assert not target.exists() and not partial_path(target).exists() and not resume_path(target).exists()


def test_guard_names_out_of_range_values():
    values = np.zeros((2, V.N_STATE, 3, 4), np.float32)
    for i, c in enumerate(V.STATE):
        values[:, i] = np.mean(c.plausible_range)
    check_month(values, np.datetime64("1990-01"), [7, 8])  # plausible: passes
    ps = V.STATE_NAMES.index("ps")
    values[1, ps, 0, 0] = 2.0e6
    with pytest.raises(RolloutGuardError, match=r"1990-01, variable 'ps' .*member 8: value 2e\+06 Pa outside"):
        check_month(values, np.datetime64("1990-01"), [7, 8])


def test_full_rollout_stays_finite_and_physical(setup, tmp_path):
    """555 months (1978-10..2024-12) of the small model on the tiny synthetic world."""
    months = setup["months"]
    assert months.size == 555
    out = run_rollout(_job(setup, [1, 2], months, resume_every=60), setup["model"],
                      setup["normalizer"], setup["forcing"], setup["state0"], tmp_path / "full.nc", progress=False)
    ds = xr.open_dataset(out)
    assert ds.sizes["time"] == 555
    for ch in V.STATE:  # the guard ran on every month; check the file independently too
        lo, hi = ch.plausible_range
        x = ds[ch.variable].values
        if ch.variable in V.PRESSURE_VARIABLES:
            x = x[:, :, V.PRESSURE_LEVELS_HPA.index(ch.level_hpa)]
        assert np.isfinite(x).all() and x.min() >= lo and x.max() <= hi, ch.variable


def test_prepared_month_computes_what_training_computes(setup, monkeypatch):
    """The rollout's form (a prepared month: the conditioning's spectral images, time maps and
    modulations computed once, members in chunks, here 2 + 1) gives what the training path
    gives: the blocks' plain forward on the concatenated inputs, step by step, same noise."""
    import mdiff.nn.model
    from mdiff.nn.diffusion import ancestral_sample

    monkeypatch.setattr(mdiff.nn.model, "MEMBER_CHUNK", 2)
    model = setup["model"]
    with torch.inference_mode():
        cond = model.conditioning(torch.from_numpy(setup["forcing"][5:6]), torch.tensor([3]))
        month = model.prepare_month(cond)
        latent = torch.randn(3, *model.latent_shape, generator=torch.Generator().manual_seed(1))
        wide = cond.broadcast(3)
        plain = model.decoder(latent, wide.latent, wide.full) + wide.response
        torch.testing.assert_close(model.decode(latent, month), plain, rtol=1e-4, atol=1e-4)
        prior = model.standardise(latent)
        x0 = ancestral_sample(model.schedule, lambda x, t: model.predict_v(x, t, prior, wide.latent),
                              tuple(latent.shape), member_generators(9, [1, 2, 3]), latent.device,
                              model.config.sampler_variance)
        got = model.sample_next(latent, month, member_generators(9, [1, 2, 3]))
        torch.testing.assert_close(got, model.unstandardise(x0), rtol=1e-4, atol=1e-4)


def test_bf16_autocast_stays_close(setup):
    """rollout.bf16: the real matmuls run in bf16 (the spectral transforms stay fp32), so
    decoded states and sampled latents stay within bf16's ~3 significant digits of fp32."""
    model = setup["model"]
    full = EnsembleStepper(model, setup["forcing"][:3], setup["months"][:3], torch.device("cpu"))
    half = EnsembleStepper(model, setup["forcing"][:3], setup["months"][:3], torch.device("cpu"), bf16=True)
    latent, _ = full.initial(setup["state0"], 2)
    ref = [(lat, state) for _, lat, state in full.steps(latent, member_generators(9, [1, 2]))]
    got = [(lat, state) for _, lat, state in half.steps(latent, member_generators(9, [1, 2]))]
    for (ref_lat, ref_state), (lat, state) in zip(ref, got, strict=True):
        assert state.dtype == torch.float32 and not torch.equal(state, ref_state)
        assert (state - ref_state).abs().max() <= 2e-2 * ref_state.abs().max()
        assert (lat - ref_lat).abs().max() <= 5e-2 * ref_lat.abs().max()


def test_command_line_rollout_from_a_checkpoint(setup, tiny_world, tmp_path):
    """`mdiff rollout` end to end, with the model and the statistics of the checkpoint alone;
    aimip and aimip-p4k share the initial state and seeds."""
    import json

    from mdiff.cli import main as cli

    grid = setup["grid"]
    save_checkpoint(tmp_path / "checkpoint.pt", setup["model"], setup["normalizer"])
    settings = json.dumps({"grid": {"nlat": grid.nlat, "nlon": grid.nlon},
                           "periods": {"run_start": "1978-10", "run_end": "1979-05", "stats": ["1979-01", "1979-05"],
                                       "train": ["1979-01", "1979-05"], "validate": ["1979-01", "1979-05"]},
                           "rollout": {"members": 4, "member_batch": 2, "seed": 5, "resume_every": 3}})
    files = {}
    for experiment in ("aimip", "aimip-p4k"):
        files[experiment] = tmp_path / experiment / "members_003-004.nc"
        rc = cli(["rollout", "--settings", settings, "--checkpoint", str(tmp_path / "checkpoint.pt"),
                  "--forcing", str(tiny_world.forcing), "--initial-state", str(tiny_world.prepared / "state" / "1978.nc"),
                  "--experiment", experiment, "--members", "003-004",
                  "--output", str(files[experiment]), "--no-progress"])
        assert rc == 0
    a, b = xr.open_dataset(files["aimip"]), xr.open_dataset(files["aimip-p4k"])
    assert a.sizes["time"] == 8 and b.attrs["sst_offset_K"] == 4.0 and b.attrs["experiment_id"] == "aimip-p4k"
    np.testing.assert_array_equal(a["member_seed"].values, b["member_seed"].values)
    np.testing.assert_array_equal(a["tas"].values[:, 0], b["tas"].values[:, 0])  # same initial state
    assert np.abs(b["tas"].values[:, -1] - a["tas"].values[:, -1]).max() > 0  # the SST offset acts
    assert len(a.attrs["checkpoint_sha256"]) == 64
    # a member range outside rollout.members is a clear error
    rc = cli(["rollout", "--settings", settings, "--checkpoint", str(tmp_path / "checkpoint.pt"),
              "--forcing", str(tiny_world.forcing), "--initial-state", str(tiny_world.prepared / "state" / "1978.nc"),
              "--experiment", "aimip", "--members", "4-5",
              "--output", str(tmp_path / "x.nc")])
    assert rc == 1
