"""The command line's entry points: `python -m reference` and `python -m reference.cli` with no command
print the help and exit 2; an unknown command is refused by argparse; `--help` of a command works."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from reference import cli

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ("verify", "train", "sample", "bench", "plot")


def assert_help(text: str) -> None:
    assert text.startswith("usage: numpy-gpt [-h] command ...")
    assert "A GPT in pure NumPy, proved against PyTorch." in text
    for name in COMMANDS:
        assert f"    {name} " in text, name


def test_python_dash_m_reference_without_a_command_prints_help_and_exits_2():
    """The real thing, in a fresh interpreter (no torch or matplotlib import needed for the help)."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "reference"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert_help(proc.stdout)
    assert proc.stderr == ""


def test_main_module_in_process(monkeypatch, capsys):
    """reference/__main__.py, run as `python -m reference` runs it, exits with main()'s status."""
    monkeypatch.setattr(sys, "argv", ["python -m reference"])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("reference", run_name="__main__", alter_sys=False)
    assert info.value.code == 2
    assert_help(capsys.readouterr().out)


def test_cli_module_as_a_script(monkeypatch, capsys):
    """`python -m reference.cli` (reference/cli.py run as __main__) behaves the same."""
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(cli.__file__, run_name="__main__")
    assert info.value.code == 2
    assert_help(capsys.readouterr().out)


def test_unknown_command_is_refused_by_argparse(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["fly"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "numpy-gpt: error: argument command: invalid choice: 'fly'" in err


def test_help_of_a_command(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["plot", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: numpy-gpt plot [-h]") and "draw the loss curves" in out and "--diff" in out
