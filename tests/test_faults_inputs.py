"""Fault tests, bad inputs: every class ends with exit status 1 and one clear line naming the
file / variable / key and what was expected; no traceback; nothing under the output's final
name. Plus the fixes of issue 12's findings 3-6 (config periods, bad data accepted silently,
corrupt checkpoints, train log and temporaries), each checked where it used to fail."""

from __future__ import annotations

import copy
import json
import re
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

sys.path.insert(0, str(Path(__file__).parent))
import fault_tools as FT  # noqa: E402
from small_model import save_checkpoint, small_model  # noqa: E402

from mdiff import cli  # noqa: E402
from mdiff import config as C  # noqa: E402
from mdiff import variables as V  # noqa: E402
from mdiff.data import prepared as P  # noqa: E402

pytestmark = pytest.mark.faults

PERIODS = {"run_start": "1978-10", "run_end": "1981-12", "stats": ["1979-01", "1981-12"],
           "train": ["1980-01", "1980-12"], "validate": ["1979-01", "1979-06"]}
SETTINGS = json.dumps({"grid": {"nlat": 17, "nlon": 32}, "periods": PERIODS,
                       "rollout": {"members": 2, "member_batch": 2, "seed": 5, "resume_every": 3}})
SHORT_RUN = json.dumps({"grid": {"nlat": 17, "nlon": 32},
                        "periods": {**PERIODS, "run_end": "1979-03", "stats": ["1979-01", "1979-03"],
                                    "train": ["1979-01", "1979-03"], "validate": ["1979-01", "1979-03"]},
                        "rollout": {"members": 2, "member_batch": 2, "seed": 5, "resume_every": 3}})


def run_cli(argv: list, capsys) -> tuple[int, str]:
    """`mdiff ...` in this process: (exit status, stderr). A traceback would escape as an
    exception and fail the test."""
    capsys.readouterr()
    handler = signal.getsignal(signal.SIGTERM)
    try:
        rc = cli.main([str(a) for a in argv])
    finally:
        signal.signal(signal.SIGTERM, handler)
    return rc, capsys.readouterr().err


def expect_clear_error(name: str, argv: list, capsys, command: str, fragments: list[str],
                       outputs: list[Path] = ()) -> str:
    """Run a bad-input class and check the four promises; returns the error line."""
    rc, err = run_cli(argv, capsys)
    assert rc == 1, f"{name}: exit {rc}\n{err[-3000:]}"
    line = FT.one_error_line(err, command)
    for fragment in fragments:
        assert re.search(fragment, line), f"{name}: {fragment!r} not in {line!r}"
    for out in outputs:
        assert not Path(out).exists(), f"{name}: {out} exists under its final name"
    FT.record_bad_input(name, line)
    return line


# ----------------------------------------------------------------------------- inputs


@pytest.fixture(scope="module")
def good(tiny_world, tmp_path_factory):
    """The tiny world's files 1978..1981, and a small random model saved as a checkpoint."""
    root = tmp_path_factory.mktemp("faults_good")
    states = [tiny_world.prepared / "state" / f"{y}.nc" for y in (1978, 1979, 1980, 1981)]
    model, normalizer = small_model(tiny_world, perturb=False)
    return {"root": root, "states": states, "statics": tiny_world.statics, "forcing": tiny_world.forcing,
            "stats": tiny_world.stats, "checkpoint": save_checkpoint(root / "checkpoint.pt", model, normalizer),
            "grid": tiny_world.grid}


def edited(src: Path, dst: Path, edit) -> Path:
    """A copy of a prepared file with ``edit(ds)`` applied (no _FillValue added)."""
    ds = xr.open_dataset(src).load()
    with xr.set_options(keep_attrs=True):  # a changed value keeps its units label
        ds = edit(ds) or ds
    dst.parent.mkdir(parents=True, exist_ok=True)
    P.write(ds, dst)
    return dst


def ocean_point(good) -> tuple[int, int]:
    """A grid point without any land (land fraction 0)."""
    lsm = P.dataset_to_channels(P.open_checked(good["statics"]), (V.channel("lsm"),))[0]
    ocean = np.argwhere(lsm <= 1e-6)
    j, i = ocean[len(ocean) // 2]
    return int(j), int(i)


def stats_argv(good, states, out: Path) -> list:
    return ["stats", "--settings", SETTINGS, "--state", *states, "--statics", good["statics"], "--output", out]


def rollout_argv(good, out: Path, settings: str = SHORT_RUN, **over) -> list:
    """`mdiff rollout` of members 1-2 of aimip; ``over``: {"--forcing": path, ...}."""
    args = {"--checkpoint": good["checkpoint"], "--forcing": good["forcing"], "--initial-state": good["states"][0],
            **over}
    argv = ["rollout", "--settings", settings]
    for key, value in args.items():
        argv += [key, value]
    return argv + ["--experiment", "aimip", "--members", "1-2", "--output", out, "--no-progress", "--threads", "1"]


# ------------------------------------------------------------- finding 3: config periods


@pytest.mark.parametrize("name, periods, fragments", [
    ("config: run_end before run_start", {"run_start": "1978-10", "run_end": "1978-01"},
     [r"periods\.run_end 1978-01 is before periods\.run_start 1978-10", "expected run_start <= run_end"]),
    ("config: train outside the prepared months",
     {"run_end": "1981-06", "stats": ["1979-01", "1980-12"], "train": ["1980-01", "1981-12"]},
     [r"periods\.train 1980-01\.\.1981-12 is not inside", r"run_start\.\.run_end 1978-10\.\.1981-06"]),
    ("config: stats before run_start", {"run_start": "1979-06", "stats": ["1979-01", "1979-12"]},
     [r"periods\.stats 1979-01\.\.1979-12 is not inside", "expected 1979-06 <= first"]),
    ("config: stats after 2014", {"run_end": "2020-12", "stats": ["1979-01", "2016-12"]},
     [r"periods\.stats ends 2016-12", "2014-12"]),
    ("config: first month after last", {"validate": ["1980-06", "1979-06"]},
     [r"periods\.validate: first month 1980-06 is after last month 1979-06"]),
])
def test_config_periods_are_checked_when_the_config_loads(good, tmp_path, capsys, name, periods, fragments):
    """Finding 3: an inverted or uncontained period is an error at load time (was accepted)."""
    settings = json.dumps({"grid": {"nlat": 17, "nlon": 32}, "periods": {**PERIODS, **periods}})
    out = tmp_path / "stats.json"
    argv = ["stats", "--settings", settings, "--state", *good["states"], "--statics", good["statics"],
            "--output", out]
    expect_clear_error(name, argv, capsys, "stats", fragments, [out])
    with pytest.raises(C.ConfigError):
        C.from_dict(C.Config, {"periods": {**PERIODS, **periods}})


def test_unknown_config_key_is_one_line(good, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: {nlat: 17, nlon: 32}\nrollout:\n  membres: 3\n  member_bach: 2\n")
    out = tmp_path / "stats.json"
    expect_clear_error("config: unknown keys", ["stats", "--config", bad, "--state", *good["states"], "--statics",
                                                good["statics"], "--output", out], capsys, "stats",
                       [str(bad), r"rollout\.membres", r"rollout\.member_bach", "expected one of"], [out])


def test_snakemake_dry_run_rejects_run_end_before_run_start(tmp_path):
    """Finding 3, the workflow side: `snakemake -n` stops at the config (was accepted)."""
    import subprocess

    snakemake = Path(sys.executable).with_name("snakemake")
    if not snakemake.exists():
        from conftest import skip_unless_ci

        skip_unless_ci("snakemake is not installed in this environment (the workflow extra)")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"results: {tmp_path / 'results'}\nperiods:\n  run_start: '1978-10'\n  run_end: '1978-01'\n")
    out = subprocess.run([str(snakemake), "-n", "--configfile", str(cfg)], cwd=FT.ROOT, capture_output=True,
                         text=True, env=FT.subprocess_env())
    assert out.returncode != 0
    assert "periods.run_end 1978-01 is before periods.run_start 1978-10" in out.stdout + out.stderr


# ----------------------------------------------------- finding 4: bad data in statistics


def test_every_channel_has_a_plausible_range_and_the_guard_derives_from_it():
    from mdiff.rollout import RolloutGuardError, check_month

    for c in V.ALL:
        lo, hi = c.plausible_range
        assert np.isfinite(lo) and np.isfinite(hi) and lo < hi, c.name
    # the rollout's guard checks every decoded month against the same ranges
    values = np.array([np.mean(c.plausible_range) for c in V.STATE])[None, :, None, None] * np.ones((1, 1, 2, 2))
    values[0, V.STATE_NAMES.index("hus50"), 0, 0] = 0.2  # above hus's 0.1
    with pytest.raises(RolloutGuardError, match="channel hus50"):
        check_month(values, np.datetime64("2000-01"), [1])
    # the usual mix-ups fall outside: degC, hPa, percent, g/kg, a bare 1e20 fill value
    assert not V.channel("tas").plausible_range[0] <= 25.0
    assert not V.channel("ps").plausible_range[0] <= 1013.0
    assert not 35.0 <= V.channel("siconc").plausible_range[1]
    assert not 12.0 <= V.channel("hus850").plausible_range[1]
    assert not 1e20 <= V.channel("sst").plausible_range[1]


def _drop_month(ds):
    return ds.isel(time=[i for i in range(ds.sizes["time"]) if i != 6])


def _fill_land(ds):
    ds["sst"] = ds["sst"].fillna(1e20)  # a bare fill value, no _FillValue / missing_value
    ds["sst"].attrs.pop("missing_value", None)
    return ds


def _celsius(ds):
    ds["tas"] = ds["tas"] - 273.15  # still labelled K
    return ds


def _hpa(ds):
    ds["ps"] = ds["ps"] / 100.0
    ds["ps"].attrs["units"] = "hPa"
    return ds


def _percent(ds):
    ds["siconc"] = ds["siconc"] * 100.0  # labelled 1
    return ds


@pytest.mark.parametrize("name, edit, fragments", [
    ("stats: a month missing from a year file", _drop_month,
     [r"1980\.nc: variable 'time' lacks month 1980-07", "expected every month"]),
    ("stats: SST with a bare 1e20 over land", _fill_land,
     [r"1980\.nc: variable 'sst' \(channel sst\) has value 1e\+20 K at time 1980-\d\d, lat -?[\d.]+, lon [\d.]+",
      r"expected a plausible monthly mean in \[260, 320\] K", "_FillValue"]),
    ("stats: temperatures in degC labelled K", _celsius,
     [r"1980\.nc: variable 'tas' \(channel tas\) has value -?[\d.]+ K at time 1980-01, lat", r"\[150, 350\] K",
      "degrees Celsius"]),
    ("stats: sea ice in percent labelled 1", _percent,
     [r"1980\.nc: variable 'siconc' .* at time 1980-\d\d, lat", r"\[0, 1\] 1", "percent"]),
    ("stats: pressure in hPa, so labelled", _hpa,
     [r"1980\.nc: variable 'ps' has units 'hPa'; expected 'Pa'"]),
    ("stats: a variable missing", lambda ds: ds.drop_vars("psl"),
     [r"1980\.nc: variable 'psl' \(channel psl, .*\) is missing"]),
])
def test_stats_refuse_bad_data(good, tmp_path, capsys, name, edit, fragments):
    """Finding 4: statistics accepted these silently (an SST mean of 8e18 ...)."""
    states = [p if p.stem != "1980" else edited(p, tmp_path / "state" / "1980.nc", edit) for p in good["states"]]
    out = tmp_path / "stats.json"
    expect_clear_error(name, stats_argv(good, states, out), capsys, "stats", fragments, [out])


def test_stats_refuse_nan_sst_over_open_ocean(good, tmp_path, capsys):
    j, i = ocean_point(good)

    def nan_at_ocean(ds):
        sst = ds["sst"].values.copy()
        sst[3, j, i] = np.nan
        ds["sst"] = (ds["sst"].dims, sst, ds["sst"].attrs)
        return ds

    states = [p if p.stem != "1980" else edited(p, tmp_path / "state" / "1980.nc", nan_at_ocean)
              for p in good["states"]]
    lat, lon = good["grid"].lat[j], good["grid"].lon[i]
    out = tmp_path / "stats.json"
    expect_clear_error("stats: NaN SST over open ocean", stats_argv(good, states, out), capsys, "stats",
                       [rf"1980\.nc: variable 'sst' is NaN at time 1980-04, lat {lat:g}, lon {lon:g}",
                        r"land fraction of .*statics\.nc is 0", "expected sst defined over all ocean"], [out])


def test_stats_refuse_a_month_held_twice_and_a_truncated_file(good, tmp_path, capsys):
    twice = tmp_path / "state" / "1980b.nc"
    twice.parent.mkdir(parents=True)
    shutil.copy(good["states"][2], twice)
    out = tmp_path / "stats.json"
    expect_clear_error("stats: a month in two files", stats_argv(good, [*good["states"], twice], out), capsys,
                       "stats", [r"1980b?\.nc: variable 'time' holds month 1980-01, also held by .*1980b?\.nc",
                                 "expected each month in one file once"], [out])
    cut = tmp_path / "cut" / "1980.nc"
    cut.parent.mkdir()
    data = good["states"][2].read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    states = [p if p.stem != "1980" else cut for p in good["states"]]
    expect_clear_error("stats: a truncated state file", stats_argv(good, states, out), capsys, "stats",
                       [rf"{cut}: cannot be read as NetCDF", "truncated or corrupt"], [out])


# -------------------------------------------------------- finding 4: rollout inputs


def test_rollout_refuses_implausible_or_incomplete_inputs(good, tmp_path, capsys):
    out = tmp_path / "rollout" / "members_001-002.nc"
    j, i = ocean_point(good)

    def celsius_sst(ds):
        ds["sst"] = ds["sst"] - 273.15
        return ds

    def nan_ocean(ds):
        sst = ds["sst"].values.copy()
        sst[2, j, i] = np.nan
        ds["sst"] = (ds["sst"].dims, sst, ds["sst"].attrs)
        return ds

    forcing_c = edited(good["forcing"], tmp_path / "celsius" / "forcing.nc", celsius_sst)
    expect_clear_error("rollout: SST forcing in degC labelled K", rollout_argv(good, out, **{"--forcing": forcing_c}),
                       capsys, "rollout", [rf"{forcing_c}: variable 'sst' \(channel sst\) has value -?[\d.]+ K at "
                                           r"time 1978-\d\d, lat", "degrees Celsius"], [out])
    forcing_n = edited(good["forcing"], tmp_path / "nan" / "forcing.nc", nan_ocean)
    expect_clear_error("rollout: NaN SST over open ocean",
                       rollout_argv(good, out, **{"--forcing": forcing_n, "--statics": good["statics"]}),
                       capsys, "rollout", [rf"{forcing_n}: variable 'sst' is NaN at time 1978-12", "open ocean"],
                       [out])
    short = edited(good["forcing"], tmp_path / "short" / "forcing.nc", lambda ds: ds.isel(time=slice(0, 3)))
    expect_clear_error("rollout: forcing shorter than the run", rollout_argv(good, out, **{"--forcing": short}),
                       capsys, "rollout", [rf"{short}: forcing lacks 3 month\(s\) of the run 1978-10\.\.1979-03"],
                       [out])
    expect_clear_error("rollout: initial state without run_start",
                       rollout_argv(good, out, **{"--initial-state": good["states"][2]}), capsys, "rollout",
                       [r"1980\.nc: variable 'time' has no month 1978-10 \(the initial state", "holds 1980-01..1980-12"], [out])


# ------------------------------------------------------- finding 5: corrupt checkpoints


def test_rollout_with_a_truncated_checkpoint_is_one_line(good, tmp_path, capsys):
    """Finding 5: was a Python traceback."""
    cut = tmp_path / "checkpoint.pt"
    data = good["checkpoint"].read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    out = tmp_path / "members_001-002.nc"
    expect_clear_error("rollout: truncated checkpoint", rollout_argv(good, out, **{"--checkpoint": cut}), capsys,
                       "rollout", [rf"{cut}: cannot be read as an mdiff checkpoint", "truncated or corrupt",
                                   "expected a file written by `mdiff train`"], [out])
    junk = tmp_path / "junk.pt"
    torch.save({"weights": torch.zeros(3)}, junk)
    expect_clear_error("rollout: a checkpoint that is not mdiff's", rollout_argv(good, out, **{"--checkpoint": junk}),
                       capsys, "rollout", [rf"{junk}: not a usable mdiff checkpoint .*format_version None"], [out])


def train_argv(good, out: Path, model_yaml: Path, *extra) -> list:
    return ["train", "--settings", SETTINGS, "--model", model_yaml, "--state", *good["states"][1:3],
            "--statics", good["statics"], "--stats", good["stats"], "--output", out / "checkpoint.pt",
            "--model-card", out / "model_card.md", "--log-file", out / "train_log.jsonl",
            "--curve", out / "loss_curve.png", *extra]


TINY_MODEL = {"model": {"latent_channels": 4, "squeeze": 2, "seasonal_basis": 3, "hidden_channels": 8,
                        "encoder_rank": 8, "decoder_rank": 8, "denoiser_rank": 8, "diffusion_steps": 4},
              "train": {"epochs": 1, "batch_size": 4, "sample_every": 1, "device": "cpu"}}


@pytest.fixture
def model_yaml(tmp_path) -> Path:
    import yaml

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_MODEL))
    return path


def test_train_resume_refuses_a_corrupt_last_pt_unless_asked(good, tmp_path, capsys, model_yaml):
    """Finding 5: `mdiff train --resume` with a truncated last.pt was a traceback; now it says
    so and refuses, and starts afresh only with --fresh-if-corrupt."""
    out = tmp_path / "model"
    out.mkdir()
    (out / "last.pt").write_bytes(good["checkpoint"].read_bytes()[:1000])
    line = expect_clear_error("train: truncated last.pt with --resume", train_argv(good, out, model_yaml, "--resume"),
                              capsys, "train", [rf"{out / 'last.pt'}: cannot be read as an mdiff resume checkpoint",
                                                "truncated or corrupt", "--fresh-if-corrupt"],
                              [out / "checkpoint.pt", out / "train_log.jsonl"])
    assert "refuses" in line
    assert (out / "last.pt").stat().st_size == 1000  # left alone
    rc, err = run_cli(train_argv(good, out, model_yaml, "--resume", "--fresh-if-corrupt"), capsys)
    assert rc == 0, err[-3000:]
    assert (out / "last.pt.corrupt").stat().st_size == 1000 and (out / "checkpoint.pt").exists()


def test_train_with_a_corrupt_statics_or_statistics_file_is_one_line(good, tmp_path, capsys, model_yaml):
    out = tmp_path / "model"
    statics = tmp_path / "statics.nc"
    statics.write_bytes(good["statics"].read_bytes()[:2000])
    argv = train_argv(good, out, model_yaml)
    argv[argv.index("--statics") + 1] = statics
    expect_clear_error("train: truncated statics", argv, capsys, "train",
                       [rf"{statics}: cannot be read as NetCDF", "truncated or corrupt"], [out / "checkpoint.pt"])
    stats = tmp_path / "normalization.json"
    stats.write_text("{\"channels\": {\"ta1000\": {\"mean\": 1.0}}}")
    argv = train_argv(good, out, model_yaml)
    argv[argv.index("--stats") + 1] = stats
    expect_clear_error("train: malformed statistics", argv, capsys, "train",
                       [rf"{stats}: normalisation statistics malformed", "KeyError", "mdiff stats"],
                       [out / "checkpoint.pt"])


# ------------------------------------------------ finding 6: train log and temporaries


class _StopAfter:
    """A stop flag that fires after ``steps`` optimizer steps (as SIGTERM would)."""

    def __init__(self, steps: int):
        self.left = steps

    def agreed(self, dist) -> bool:
        self.left -= 1
        return self.left <= 0


def test_train_log_appears_only_when_training_is_complete(good, tmp_path):
    """Finding 6: after one finished epoch and a stop in the second, train_log.jsonl (a
    declared output) must not exist; the running log holds the finished epochs."""
    from mdiff.train import EXIT_PREEMPTED, TrainOptions, train

    model_file = C.from_dict(C.ModelFile, copy.deepcopy(TINY_MODEL))
    model_file.train.epochs = 2
    out = tmp_path / "model"
    opts = TrainOptions([str(p) for p in good["states"][1:3]], str(good["statics"]), str(good["stats"]),
                        str(out / "checkpoint.pt"), model_file, C.GridConfig(17, 32),
                        C.from_dict(C.PeriodsConfig, PERIODS), model_card=str(out / "model_card.md"),
                        log_file=str(out / "train_log.jsonl"), curve=str(out / "loss_curve.png"), resume=True)
    assert train(opts, _StopAfter(3)) == EXIT_PREEMPTED  # 2 steps per epoch: stops in epoch 2
    assert not (out / "train_log.jsonl").exists()
    assert not (out / "checkpoint.pt").exists() and not (out / "model_card.md").exists()
    running = out / "train_log.jsonl.running"
    assert [json.loads(r)["epoch"] for r in running.read_text().splitlines()] == [1]
    # a killed run's temporaries (atomic_path leaves .NAME.XXXX.part) go at the next start
    stale = [out / ".last.pt.abc123.part", out / ".train_log.jsonl.running.q1w2e3.part"]
    for p in stale:
        p.write_bytes(b"half")
    foreign = out / ".someone-else.part"
    foreign.write_bytes(b"not ours")
    assert train(opts) == 0
    assert not any(p.exists() for p in stale) and foreign.exists()
    assert [json.loads(r)["epoch"] for r in (out / "train_log.jsonl").read_text().splitlines()] == [1, 2]
    assert not running.exists()
    for name in ("checkpoint.pt", "model_card.md", "loss_curve.png"):
        assert (out / name).stat().st_size > 0


# ------------------------------------------------------------------ preparation (CDO)


@pytest.fixture(scope="module")
def raw_era5(tmp_path_factory):
    import era5_layout as L

    from mdiff.data import regrid as R
    from mdiff.grid import LatLonGrid

    if shutil.which("cdo") is None:
        from conftest import skip_unless_ci

        skip_unless_ci("needs the cdo program (apt-get install cdo)")
    root = tmp_path_factory.mktemp("faults_raw")
    grid = LatLonGrid(19, 36)
    invariant = L.write_invariant(root / "invariant.nc")
    weights = {"fracarea": str(root / "f.nc"), "destarea": str(root / "d.nc")}
    for norm, path in weights.items():
        R.make_weights(invariant, grid, path, norm)
    R.prepare_statics([str(invariant)], grid, weights, root / "statics.nc")
    return {"root": root, "grid": grid, "weights": weights, "statics": root / "statics.nc",
            "settings": json.dumps({"grid": {"nlat": 19, "nlon": 36}})}


def test_prepare_refuses_a_bare_fill_value_and_celsius(raw_era5, tmp_path, capsys):
    """Finding 4 at the entry: the forcing's SST with 1e20 over land and no _FillValue went
    through CDO into the prepared forcing; ERA5 t2m in degC labelled K into the state."""
    import era5_layout as L

    from mdiff.data import era5 as E

    aimip = L.write_aimip(tmp_path / "aimip.nc", "1978-10", "1979-01")
    with xr.open_dataset(aimip) as ds:
        ds = ds.load()
    ds["sea_surface_temperature"] = ds["sea_surface_temperature"].fillna(1e20)
    aimip.unlink()
    ds.to_netcdf(aimip, encoding={"time": {"units": "hours since 1900-01-01", "dtype": "int64"},
                                  "sea_surface_temperature": {"_FillValue": None}})
    out = tmp_path / "forcing.nc"
    expect_clear_error("prepare: AI-MIP SST with a bare 1e20", [
        "regrid", "forcing", "--settings", raw_era5["settings"], "--raw", aimip, "--months", "1978-10", "1978-12",
        "--statics", raw_era5["statics"], "--output", out], capsys, "regrid",
        [rf"{aimip} \(regridded\): variable 'sst' \(channel sst\) has value [\d.e+]+ K at time 1978-\d\d, lat",
         "_FillValue"], [out])

    files = {g: L.write_group(tmp_path / f"{g}.nc", g, 1979, [1, 2]) for g in E.YEARLY_GROUPS}
    with xr.open_dataset(files["single"]) as ds:
        ds = ds.load()
    ds["t2m"] = (ds["t2m"] - 273.15).assign_attrs(ds["t2m"].attrs)  # still labelled K
    files["single"].unlink()
    ds.to_netcdf(files["single"], encoding=L.TIME_ENC)
    out = tmp_path / "state.nc"
    expect_clear_error("prepare: ERA5 t2m in degC labelled K", [
        "regrid", "state", "--settings", raw_era5["settings"], "--raw", *files.values(), "--months", "1979-01",
        "1979-02", "--weights", raw_era5["weights"]["fracarea"], raw_era5["weights"]["destarea"],
        "--statics", raw_era5["statics"], "--output", out], capsys, "regrid",
        [r"variable 'tas' \(channel tas\) has value -?[\d.]+ K at time 1979-0\d, lat", "degrees Celsius"], [out])


def test_at_least_fifteen_bad_input_classes_were_checked(request):
    """Runs last in this module: the classes above (and test_faults_submit's) add up.
    Only when a subset of this module was selected (e.g. `pytest -k`) is there no total to
    check; with the whole module in the session the count is asserted, never skipped."""
    here = request.node.path
    selected = {item.originalname for item in request.session.items if item.path == here}
    defined = {name for name in globals() if name.startswith("test_")}
    missing = sorted(defined - selected)
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        pytest.skip(f"{len(missing)} test(s) of this module were deselected ({shown}): the bad-input class "
                    "count needs the whole module; run tests/test_faults_inputs.py without -k to check it")
    names = set(FT.RECORD["bad_inputs"].classes)
    assert len(names) >= 15, f"only {len(names)} bad-input classes checked: {sorted(names)}"
