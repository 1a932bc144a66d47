"""Cluster execution: the Slurm profiles, their installer, the conda env, and the workflow
run for real through snakemake-executor-plugin-slurm on a single-node Slurm.

The tests marked ``slurm`` start the local cluster with scripts/slurm-local.sh (root and
the Debian Slurm packages needed; CI has both) and stop it afterwards. The others only read
files and run scripts, and run everywhere.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import skip_unless_ci

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")
SLURM_LOCAL = REPO / "scripts" / "slurm-local.sh"
INSTALLER = REPO / "scripts" / "install-slurm-profile.sh"
# The DAG the end-to-end test walks, in order; the test goes as far as the rules exist.
CHAIN = ["synthesize_world", "normalization_stats", "train", "rollout", "cmorize",
         "validate_submission"]
ACTIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING"}


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}:{env['PATH']}"  # jobs inherit it (sbatch --export=ALL): `mdiff`
    env.update(extra)
    return env


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _list_rules(configfile: str | None = None) -> set[str]:
    args = [SNAKEMAKE, "--list-rules"] + (["--configfile", configfile] if configfile else [])
    out = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


# ------------------------------------------------------------------ the profiles (files)


def test_cluster_profile_maps_portable_resources_to_slurm():
    prof = _load(REPO / "profiles" / "slurm" / "config.yaml")
    assert prof["executor"] == "slurm"
    assert prof["retries"] >= 1 and prof["latency-wait"] >= 30 and prof["slurm-logdir"]
    defaults = prof["default-resources"]
    # Placeholders the installer fills in; cpus_per_task would shadow cpus_per_gpu.
    assert defaults["slurm_account"].startswith("CHANGE_ME")
    assert defaults["slurm_partition"].startswith("CHANGE_ME")
    assert "cpus_per_task" not in defaults
    for rule in ("train", "rollout"):
        res = prof["set-resources"][rule]
        assert res["gpu"] >= 1 and res["cpus_per_gpu"] >= 1, rule
        assert "cpus_per_task" not in res, rule
    assert prof["set-resources"]["train"]["gpu"] > 1  # several GPUs: torchrun DDP
    assert prof["set-threads"]["regrid_state"] > 1


def test_cluster_profile_has_a_comment_for_every_entry():
    lines = (REPO / "profiles" / "slurm" / "config.yaml").read_text().splitlines()
    uncommented = []
    for i, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        previous = lines[i - 1].strip() if i else ""
        if "#" not in line and not previous.startswith("#"):
            uncommented.append(f"line {i + 1}: {line}")
    assert not uncommented, "entries without a comment:\n" + "\n".join(uncommented)


def test_local_profile_needs_no_accounting_and_no_gpu():
    prof = _load(REPO / "profiles" / "slurm-local" / "config.yaml")
    assert prof["executor"] == "slurm"
    assert prof["slurm-no-account"] is True
    assert prof["slurm-status-command"] == "squeue"
    # The plugin falls back to sacct (absent without accounting) unless MinJobAge (600 s in
    # slurm-local.sh) is at least 3x the first status-check delay.
    assert 3 * prof["slurm-init-seconds-before-status-checks"] < 600
    assert "600" in re.search(r"MinJobAge=(\d+)", SLURM_LOCAL.read_text()).group(0)
    for rule, res in prof["set-resources"].items():
        assert not res.get("gpu"), f"{rule} asks for a GPU in the test profile"
        assert res.get("mem_mb", 0) <= 2000, rule
    assert all(n == 1 for n in prof["set-threads"].values())


def test_profiles_name_only_rules_of_the_workflow():
    rules = _list_rules() | _list_rules("config/era5.yaml")
    for name in ("slurm", "slurm-local"):
        prof = _load(REPO / "profiles" / name / "config.yaml")
        named = set(prof.get("set-resources", {})) | set(prof.get("set-threads", {}))
        assert named <= rules, f"profiles/{name} names unknown rules {sorted(named - rules)}"


@pytest.mark.parametrize("profile", ["profiles/slurm", "profiles/slurm-local"])
def test_lint_is_clean_with_the_profile(profile):
    out = subprocess.run([SNAKEMAKE, "--lint", "--profile", profile], cwd=REPO, env=_env(),
                         capture_output=True, text=True)
    assert out.returncode == 0 and "Lints for" not in out.stdout, out.stdout + out.stderr


# ------------------------------------------------------------------ the installer


def _install(tmp_path, *args, **env):
    return subprocess.run(["bash", str(INSTALLER), *args], cwd=tmp_path, stdin=subprocess.DEVNULL,
                          env=_env(XDG_CONFIG_HOME=str(tmp_path / "xdg"), **env),
                          capture_output=True, text=True)


def test_installer_makes_the_user_profile_slurm(tmp_path):
    out = _install(tmp_path, "--account", "proj42", "--partition", "cpu",
                   "--gpu-partition", "gpu", "--gpu-model", "h100")
    assert out.returncode == 0, out.stderr
    installed = tmp_path / "xdg" / "snakemake" / "slurm" / "config.yaml"
    prof = _load(installed)
    assert prof["default-resources"]["slurm_account"] == "proj42"
    assert prof["default-resources"]["slurm_partition"] == "cpu"
    for rule in ("train", "rollout"):
        assert prof["set-resources"][rule]["slurm_partition"] == "gpu"
        assert prof["set-resources"][rule]["gpu_model"] == "h100"
    assert "CHANGE_ME_" not in installed.read_text()
    # `--profile slurm` resolves to it, as Snakemake looks profiles up.
    found = subprocess.run(
        [sys.executable, "-c", "from snakemake.cli import get_profile_dir; "
         "print(get_profile_dir('slurm')[1])"],
        cwd=tmp_path, env=_env(XDG_CONFIG_HOME=str(tmp_path / "xdg")), capture_output=True,
        text=True)
    assert found.stdout.strip() == str(installed), found.stderr
    # An existing profile is kept unless --force.
    again = _install(tmp_path, "--account", "other", "--partition", "cpu")
    assert again.returncode != 0 and "--force" in again.stderr
    assert _load(installed)["default-resources"]["slurm_account"] == "proj42"
    forced = _install(tmp_path, "--force", MDIFF_SLURM_NO_ACCOUNT="1",
                      MDIFF_SLURM_PARTITION="batch")
    assert forced.returncode == 0, forced.stderr
    prof = _load(installed)
    assert prof["slurm-no-account"] is True and "slurm_account" not in prof["default-resources"]
    assert prof["set-resources"]["train"]["slurm_partition"] == "batch"
    assert "gpu_model" not in prof["set-resources"]["train"]


def test_installer_refuses_missing_or_unsafe_values(tmp_path):
    missing = _install(tmp_path, "--partition", "cpu")
    assert missing.returncode != 0 and "account" in missing.stderr
    unsafe = _install(tmp_path, "--account", "a b;rm", "--partition", "cpu")
    assert unsafe.returncode != 0 and "only letters" in unsafe.stderr
    assert not (tmp_path / "xdg" / "snakemake" / "slurm").exists()


# ------------------------------------------------------------------ the conda env


def test_conda_env_matches_setup_pins_and_has_no_relative_paths():
    env = _load(REPO / "envs" / "mdiff.yaml")
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    # Snakemake creates envs from a copy under .snakemake/conda/: relative paths break.
    assert not [p for p in pip if p.startswith(("-e", ".", "/"))], pip
    setup = (REPO / "scripts" / "setup.sh").read_text()
    post = (REPO / "envs" / "mdiff.post-deploy.sh").read_text()
    torch_pin = re.search(r'"(torch==[\d.]+)"', setup).group(1)
    harmonics_pin = re.search(r'--no-deps "(torch-harmonics==[\d.]+)"', setup).group(1)
    assert torch_pin in pip
    assert f'--no-deps "{harmonics_pin}"' in post
    assert "-e ." in post
    assert subprocess.run(["bash", "-n", str(REPO / "envs" / "mdiff.post-deploy.sh")]).returncode == 0


# ------------------------------------------------------------------ the real cluster


def _slurm_missing_reason() -> str | None:
    if os.geteuid() != 0:
        return "starting a local Slurm needs root (CI runs as root)"
    missing = [t for t in ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "scontrol")
               if not (shutil.which(t) or Path("/usr/sbin", t).exists())]
    if missing:
        return f"Slurm not installed (missing {missing}; scripts/setup.sh installs it)"
    return None


@pytest.fixture(scope="session")
def slurm_cluster():
    reason = _slurm_missing_reason()
    if reason:
        skip_unless_ci(reason)
    before = subprocess.run(["bash", str(SLURM_LOCAL), "status"], capture_output=True, text=True)
    already = before.stdout.count("started by slurm-local.sh") == 3
    start = subprocess.run(["bash", str(SLURM_LOCAL), "start"], capture_output=True, text=True,
                           timeout=120)
    assert start.returncode == 0, start.stdout + start.stderr
    yield
    if not already:  # leave a cluster that was running before the tests as it was
        stop = subprocess.run(["bash", str(SLURM_LOCAL), "stop"], capture_output=True, text=True)
        assert stop.returncode == 0, stop.stdout + stop.stderr


class SqueuePoller:
    """Every Slurm job state seen by squeue while a workflow runs, per job id."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.states: dict[str, list[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            out = subprocess.run(["squeue", "--states=all", "-h", "-o", "%i|%T"],
                                 capture_output=True, text=True)
            for line in out.stdout.splitlines():
                job, state = line.strip().split("|")
                seen = self.states.setdefault(job, [])
                if not seen or seen[-1] != state:
                    seen.append(state)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _scontrol(job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True)
    assert out.returncode == 0, f"scontrol does not know job {job}: {out.stderr}"
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout))


def _run_workflow(wf: Path, *args) -> tuple[subprocess.CompletedProcess, dict[str, str], SqueuePoller]:
    """Run snakemake with the local Slurm profile; return the result, {slurm id: rule}, states."""
    with SqueuePoller() as poller:
        out = subprocess.run([SNAKEMAKE, "--profile", "profiles/slurm-local", *args], cwd=wf,
                             env=_env(), capture_output=True, text=True, timeout=400)
    log = out.stdout + out.stderr
    jobs = {}
    for slurm_id in re.findall(r"has been submitted with SLURM jobid (\S+)", log):
        comment = _scontrol(slurm_id)["Comment"]  # rule_<rule>[_wildcards_...]
        jobs[slurm_id] = comment.removeprefix("rule_").split("_wildcards_")[0]
    return out, jobs, poller


def _assert_seen_running(jobs: dict[str, str], poller: SqueuePoller, final: str) -> None:
    for slurm_id, rule in jobs.items():
        seen = poller.states.get(slurm_id, [])
        assert set(seen) & ACTIVE_STATES, f"{rule} (job {slurm_id}) never seen queued/running: {seen}"
        assert _scontrol(slurm_id)["JobState"] == final, (rule, _scontrol(slurm_id))


@pytest.fixture(scope="module")
def tiny_workflow(tmp_path_factory):
    """A copy of the workflow with a tiny config; results inside the copy."""
    wf = tmp_path_factory.mktemp("slurm_workflow")
    for name in ("Snakefile", "workflow", "config", "profiles", "envs"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, wf / name)
    if (REPO / ".venv-cmor").exists():  # the CMOR interpreter the aimip rules look for
        (wf / ".venv-cmor").symlink_to(REPO / ".venv-cmor")
    cfg = _load(REPO / "config" / "config.yaml")
    cfg.update(results=str(wf / "results"), grid={"nlat": 9, "nlon": 16})
    cfg["periods"] = {"run_start": "1978-10", "run_end": "1980-12", "stats": ["1979-01", "1979-12"],
                      "train": ["1979-01", "1979-12"], "validate": ["1980-01", "1980-06"]}
    cfg["synthetic"]["realizations"] = 1
    cfg["rollout"].update(experiments=["aimip"], members=1, member_batch=1)
    if (wf / "config" / "model" / "tiny.yaml").exists():  # the smallest shipped model
        cfg["model"] = "config/model/tiny.yaml"
    model_file = wf / cfg["model"]
    if model_file.exists():  # a couple of epochs of the configured model
        model = _load(model_file)
        model["train"]["epochs"] = 2
        model_file.write_text(yaml.safe_dump(model))
    (wf / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    return wf


@pytest.mark.slurm
def test_local_cluster_start_is_idempotent(slurm_cluster):
    t0 = time.monotonic()
    out = subprocess.run(["bash", str(SLURM_LOCAL), "start"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("already running") == 3 and "is idle" in out.stdout
    assert time.monotonic() - t0 < 10
    node = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout
    assert node.split()[0] in {"idle", "mixed", "allocated"}


@pytest.mark.slurm
@pytest.mark.slow
def test_workflow_runs_fails_and_resumes_on_slurm(slurm_cluster, tiny_workflow):
    """Each job is a Slurm job; a failing job stops the workflow; the rerun does only the rest."""
    wf = tiny_workflow
    rules = _list_rules()
    chain = CHAIN[: next((i for i, r in enumerate(CHAIN) if r not in rules), len(CHAIN))]
    # The furthest rule of the chain that exists and can be a target (no wildcards).
    target = next(r for r in reversed(chain) if r in {"normalization_stats", "train",
                                                       "validate_submission"})
    print(f"Slurm end-to-end test: rules {chain}, target {target}")
    results = wf / "results"

    # 1. The synthetic world as one Slurm job.
    out, jobs, poller = _run_workflow(wf, "synthesize_world")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert sorted(jobs.values()) == ["synthesize_world"]
    _assert_seen_running(jobs, poller, "COMPLETED")
    world = sorted((results / "prepared").rglob("*.nc"))
    assert world
    mtimes = {p: p.stat().st_mtime_ns for p in world}

    # 2. A corrupted input (mtime kept, so nothing upstream reruns): the statistics job
    #    fails in Slurm, Snakemake reports it and stops without starting anything after it.
    victim = results / "prepared" / "state" / "1979.nc"
    good = victim.read_bytes()
    victim.write_bytes(b"not a NetCDF file")
    os.utime(victim, ns=(mtimes[victim], mtimes[victim]))
    out, jobs, poller = _run_workflow(wf, target)
    log = out.stdout + out.stderr
    assert out.returncode != 0
    assert list(jobs.values()) == ["normalization_stats"], jobs
    _assert_seen_running(jobs, poller, "FAILED")
    assert "Error in rule normalization_stats" in log
    assert not (results / "stats" / "normalization.nc").exists()

    # 3. Fixed input, same command: only what is missing runs, each as a Slurm job.
    victim.write_bytes(good)
    os.utime(victim, ns=(mtimes[victim], mtimes[victim]))
    out, jobs, poller = _run_workflow(wf, target)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert sorted(set(jobs.values())) == sorted(chain[1:]), jobs
    assert "synthesize_world" not in jobs.values()
    _assert_seen_running(jobs, poller, "COMPLETED")
    assert {p: p.stat().st_mtime_ns for p in world} == mtimes
    assert (results / "stats" / "normalization.nc").exists()

    dry = subprocess.run([SNAKEMAKE, "--profile", "profiles/slurm-local", "-n", target], cwd=wf,
                         env=_env(), capture_output=True, text=True)
    assert "Nothing to be done" in dry.stdout + dry.stderr
