"""Every `snakemake` command in the code blocks of README.md, docs/*.md and config/README.md
works when pasted: no target swallowed by a multi-value option, and a dry run (`-n`)
succeeds in a fresh copy of the workflow. (`--report` commands need a finished run: the
end-to-end test in tests/test_workflow.py runs those for real.)"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "config" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
# Words that name a target when they stand alone (rules of the workflow, result paths).
TARGET_RULES = {"all", "submit_aimip", "evaluate", "validate_submission", "package_submission",
                "train", "rollout", "cmorize", "cmorize_gr", "normalization_stats"}


def doc_commands() -> list[tuple[str, str]]:
    """(where, command) for each snakemake command line in a fenced code block."""
    out = []
    for path in DOCS:
        in_block, pending, start = False, "", 0
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if line.lstrip().startswith("```"):
                in_block, pending = not in_block, ""
                continue
            if not in_block:
                continue
            text = pending + line.strip()
            if text.endswith("\\"):
                pending, start = text[:-1] + " ", start or i
                continue
            pending = ""
            code = text.split(" #", 1)[0].strip()
            if re.match(r"^(\w+=\S+\s+)*snakemake\s", code):
                out.append((f"{path.relative_to(REPO)}:{start or i}", code))
            start = 0
    return out


COMMANDS = doc_commands()


def split(command: str) -> list[str]:
    """The arguments after the word `snakemake` (environment assignments before it dropped)."""
    words = shlex.split(command)
    return words[words.index("snakemake") + 1:]


def test_the_docs_have_the_commands_users_paste():
    found = {c for _, c in COMMANDS}
    assert len(found) >= 20, found
    assert any("--configfile config/era5.yaml" in c and split(c)[0] == "all" for c in found)
    assert any("--report" in c for c in found), "the report command is documented"


def swallowed(command: str) -> list[str]:
    """Target words that Snakemake's own parser does not take as targets. `--configfile A all`
    makes `all` a config file; a word right after an option is that option's intended value
    (`--until cmorize`), any later one is swallowed."""
    from snakemake.cli import get_argument_parser

    args = split(command)
    targets = set(get_argument_parser().parse_args(args).targets or [])
    out = []
    for i, word in enumerate(args):
        if word in TARGET_RULES or word.startswith("results/"):
            first_value = i > 0 and args[i - 1].startswith("-") and args[i - 1] != "--"
            if word not in targets and not first_value:
                out.append(word)
    return out


def test_the_check_catches_the_commands_that_failed():
    assert swallowed("snakemake --configfile config/era5.yaml all") == ["all"]
    assert swallowed("snakemake --profile slurm -R train all") == ["all"]
    assert swallowed("snakemake --config results=results/try2 all") == ["all"]
    assert swallowed("snakemake all --configfile config/era5.yaml") == []
    assert swallowed("snakemake --configfile config/era5.yaml -- results/era5/prepared/forcing.nc") == []
    assert swallowed("snakemake all --forcerun cmorize --until cmorize") == []


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_no_target_is_swallowed_by_an_option(where, command):
    bad = swallowed(command)
    assert not bad, f"{where}: {bad} in `{command}` swallowed by an option (put the target first)"


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    """A fresh copy of the workflow, an installed `slurm` profile (XDG_CONFIG_HOME) and, where
    there is no conda, a stand-in answering the queries of Snakemake's dry run (the Slurm
    profile deploys conda environments; a dry run only asks conda for its version)."""
    tmp = tmp_path_factory.mktemp("docs")
    wf = tmp / "mdiff"
    wf.mkdir()
    for name in ("Snakefile", "workflow", "config", "profiles", "envs", "scripts"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, wf / name)
    if (REPO / ".venv-cmor").exists():
        (wf / ".venv-cmor").symlink_to(REPO / ".venv-cmor")
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp / "xdg"), PATH=f"{BIN}:{os.environ['PATH']}")
    subprocess.run(["bash", "scripts/install-slurm-profile.sh", "--no-account", "--partition", "cpu"],
                   cwd=wf, env=env, check=True, capture_output=True, stdin=subprocess.DEVNULL)
    if shutil.which("conda", path=env["PATH"]) is None:
        fake = tmp / "bin"
        fake.mkdir()
        (fake / "conda").write_text(
            "#!/bin/sh\ncase \"$*\" in\n"
            "  *--version*) echo 'conda 24.11.3' ;;\n"
            "  config*) echo '{\"get\": {\"channel_priority\": \"strict\"}}' ;;\n"
            "  *) echo '{\"conda_version\": \"24.11.3\", \"conda_prefix\": \"/nonexistent\", "
            "\"root_prefix\": \"/nonexistent\", \"platform\": \"linux-64\", \"envs_dirs\": [], "
            "\"pkgs_dirs\": []}' ;;\nesac\n")
        (fake / "conda").chmod(0o755)
        env["PATH"] = f"{fake}:{env['PATH']}"
    return wf, env


def dry_run(wf: Path, env: dict, command: str) -> subprocess.CompletedProcess:
    runnable = re.sub(r"\bsnakemake\b", "snakemake -n", command, count=1)
    return subprocess.run(["bash", "-c", runnable], cwd=wf, env=env, capture_output=True, text=True)


def test_every_documented_command_dry_runs(workflow):
    wf, env = workflow
    todo = sorted({c for _, c in COMMANDS if "--report" not in c})
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(todo, pool.map(lambda c: dry_run(wf, env, c), todo), strict=True))
    failed = {c: (r.stdout + r.stderr)[-1500:] for c, r in results.items() if r.returncode != 0}
    assert not failed, "\n\n".join(f"$ {c}\n{out}" for c, out in failed.items())
    for command, r in results.items():
        if "--unlock" not in command and "--lint" not in command:
            assert "This was a dry-run" in r.stdout + r.stderr or "Nothing to be done" in r.stdout + r.stderr, command
