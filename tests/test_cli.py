"""`mdiff`: the one place that parses command lines; the launchers it owns."""

from __future__ import annotations

import sys

import pytest

from mdiff import cli
from mdiff.aimip import cmor_env


class Launched(Exception):
    """Raised by a stand-in for os.exec*: what would have been started."""


def test_every_command_builds_its_parser_and_is_listed(capsys):
    assert cli.main(["--help"]) == 0
    listed = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert f"  {name} " in listed
        assert cli.parser_for(name).prog == f"mdiff {name}"


def test_train_on_several_gpus_runs_under_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    argv = ["train", "--model", "m.yaml", "--state", "a.nc", "--statics", "s.nc", "--stats", "n.nc",
            "--output", "c.pt", "--gpus", "4"]
    assert cli.torchrun_command(1, argv) is None and cli.torchrun_command(0, argv) is None
    assert cli.torchrun_command(4, argv) == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                             "--nproc_per_node=4", "-m", "mdiff.cli", *argv]

    def execv(path, args):
        raise Launched(args)

    monkeypatch.setattr(cli.os, "execv", execv)
    with pytest.raises(Launched) as launched:
        cli.main(argv)
    assert launched.value.args[0][-len(argv):] == argv
    monkeypatch.setenv("WORLD_SIZE", "4")  # a torchrun process: trains here
    assert cli.torchrun_command(4, argv) is None


def test_cmorize_moves_into_the_cmor_interpreter_once(monkeypatch, tmp_path):
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.write_text("")
    monkeypatch.setattr(cmor_env, "CMOR_VENV_PYTHON", python)
    monkeypatch.setattr(cmor_env, "has_cmor", lambda: False)
    monkeypatch.delenv(cli.CMOR_MOVED, raising=False)

    def execve(path, args, env):
        raise Launched(path, args, env)

    monkeypatch.setattr(cli.os, "execve", execve)
    argv = ["cmorize", "--input", "r.nc", "--experiment", "aimip", "--member", "1", "--output-root", "aimip"]
    with pytest.raises(Launched) as launched:
        cli.main(argv)
    path, args, env = launched.value.args
    assert path == str(python) and args == [str(python), "-m", "mdiff.cli", *argv] and env[cli.CMOR_MOVED] == "1"
    monkeypatch.setenv(cli.CMOR_MOVED, "1")  # already moved: never again
    cli.move_to_cmor_interpreter(argv)
