"""The verify command: a table, exit 0 when all pass, 1 on a failure, 2 on bad use or missing torch."""

import subprocess
import sys
from pathlib import Path

from oracle import registry
from oracle.verify import main
from oracle.cli import main as cli_main
from reference.layers import LayerNorm

ROOT = Path(__file__).resolve().parents[1]


def test_verify_prints_a_passing_table(capsys):
    assert main(["--case", "linear", "--case", "gpt_loss"]) == 0
    out = capsys.readouterr().out
    assert "| component" in out and "| linear " in out and "| gpt_loss " in out
    assert out.count("| pass ") == 8 and "0 failed" in out     # 2 cases x 2 dtypes x 2 paths
    assert "| fast " in out and "| textbook " in out


def test_verify_fails_on_a_broken_case(capsys):
    class Broken(LayerNorm):
        def backward(self, dy, cache):
            return super().backward(dy, cache) * 1.001
    base = registry.REGISTRY["layernorm"]
    registry.register("broken_layernorm", lambda d, dt, rng: Broken(d.C, dtype=dt), base.twin)
    try:
        assert main(["--case", "broken_layernorm", "--dtype", "float64"]) == 1
    finally:
        registry.unregister("broken_layernorm")
    out = capsys.readouterr().out
    assert "FAIL" in out and "input grad" in out


def test_verify_rejects_unknown_case(capsys):
    assert main(["--case", "nope"]) == 2
    assert "unknown case" in capsys.readouterr().err


def test_cli_dispatch_and_help(capsys):
    assert cli_main(["verify", "--case", "gelu", "--dtype", "float32", "--kernels", "fast", "-v"]) == 0
    assert "[fast path] gelu [float32]: PASS" in capsys.readouterr().out
    assert cli_main([]) == 2
    assert "verify" in capsys.readouterr().out


def test_verify_says_when_torch_is_missing():
    script = "import sys; sys.modules['torch'] = None; from oracle.cli import main; sys.exit(main(['verify']))"
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "needs torch, which is not installed" in out.stderr and "pip install" in out.stderr


def test_python_dash_m_oracle_verify():
    out = subprocess.run([sys.executable, "-m", "oracle", "verify", "--case", "embedding"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "| embedding" in out.stdout


def test_python_dash_m_reference_names_the_oracle_commands():
    """verify and bench moved to the oracle: `python -m reference verify|bench` says where, in one line."""
    for command in ("verify", "bench"):
        out = subprocess.run([sys.executable, "-m", "reference", command], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 2 and out.stdout == ""
        assert out.stderr == (f"error: '{command}' is a command of the oracle: run `python -m oracle {command}` "
                              f"(or `numpy-gpt {command}`)\n")
