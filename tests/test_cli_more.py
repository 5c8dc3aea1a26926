"""The command line's entry points: `python -m reference`, `python -m reference.programs.cli`, `python -m oracle`
and `python -m oracle.cli` (the `numpy-gpt` script) with no command print the help and exit 2; an
unknown command is refused by argparse; `--help` of a command works; `train` through the oracle's
command line never imports torch."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from oracle import cli as oracle_cli
from reference.programs import cli

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ("verify", "train", "sample", "bench", "plot")


def assert_help(text: str, prog: str = "python -m reference") -> None:
    assert text.startswith(f"usage: {prog} [-h] command ...")
    assert "A GPT in pure NumPy, proved against PyTorch." in text
    for name in COMMANDS:
        shown = f"    {name} " in text
        assert shown == (prog == "numpy-gpt" or name in cli.COMMANDS), name


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
    """`python -m reference.programs.cli` (reference/programs/cli.py run as __main__) behaves the same."""
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
    assert "python -m reference: error: argument command: invalid choice: 'fly'" in err
    with pytest.raises(SystemExit) as info:
        oracle_cli.main(["fly"])
    assert "numpy-gpt: error: argument command: invalid choice: 'fly'" in capsys.readouterr().err


def test_help_of_a_command(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["plot", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m reference plot [-h]") and "draw the loss curves" in out and "--diff" in out
    with pytest.raises(SystemExit) as info:
        oracle_cli.main(["plot", "--help"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("usage: numpy-gpt plot [-h]")


def test_python_dash_m_oracle_without_a_command_prints_help_and_exits_2():
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "oracle"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert_help(proc.stdout, "numpy-gpt")


def test_oracle_main_module_in_process(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["python -m oracle"])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("oracle", run_name="__main__", alter_sys=False)
    assert info.value.code == 2
    assert_help(capsys.readouterr().out, "numpy-gpt")
    with pytest.raises(SystemExit) as info:
        runpy.run_path(oracle_cli.__file__, run_name="__main__")
    assert info.value.code == 2
    assert_help(capsys.readouterr().out, "numpy-gpt")


def test_train_through_the_oracle_command_line_never_imports_torch(tmp_path):
    """`numpy-gpt train` (oracle/cli.py) delegates to reference/programs/cli.py: torch is never imported."""
    script = ("import sys; sys.modules['torch'] = None; from oracle.cli import main; "
              "rc = main(['train', '--help']) ")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: numpy-gpt train") and "--kernels {fast,textbook}" in proc.stdout
