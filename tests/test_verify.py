"""The verify command: a table, exit 0 when all pass, 1 on a failure, 2 on bad use or missing torch."""

import subprocess
import sys
from pathlib import Path

from oracle.bridge import registry
from oracle.bridge.verify import main
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


EXTERNAL = '''
from torch import nn

from oracle import register
from reference.layers import Linear

register("ext_linear", lambda d, dt, rng: Linear(d.C, 3, rng=rng, dtype=dt), lambda d: nn.Linear(d.C, 3))
'''


def test_verify_runs_cases_registered_in_a_users_module(tmp_path, capsys):
    """--cases FILE imports the user's module and runs the cases it registers, at the --dims given."""
    path = tmp_path / "my_cases.py"
    path.write_text(EXTERNAL, encoding="utf-8")
    try:
        assert main(["--cases", str(path), "--dims", "B=1,T=3,H=3,hd=2", "--dtype", "float64", "--kernels", "fast",
                     "-v"]) == 0
        out = capsys.readouterr().out
        assert "| ext_linear " in out and "1 rows, 1 passed" in out
        from oracle.bridge.verify import parse_dims, run_case
        report, _ = run_case("ext_linear", "float64", 0, parse_dims("B=1,T=3,H=3,hd=2"))
        assert report["output"].ours_array.shape == (1, 3, 3)   # (B, T, 3) at the sizes given
    finally:
        registry.unregister("ext_linear")


def test_verify_cases_and_dims_errors(tmp_path, capsys):
    assert main(["--cases", str(tmp_path / "missing.py")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["--cases", "no_such_module_anywhere"]) == 2
    assert "could not import it (ModuleNotFoundError" in capsys.readouterr().err
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n", encoding="utf-8")
    assert main(["--cases", str(empty)]) == 2
    assert "registered no case" in capsys.readouterr().err
    import pytest
    for bad, message in [("Q=2", "KEY=INTEGER with KEY one of B, T, H, Hkv, hd, V, L"), ("B=two", "B='two': expected an integer"),
                         ("T=0", "T=0: expected an integer >= 1"), ("H=3,Hkv=2", "Hkv=2 must divide H=3"),
                         ("T=9,L=8", "T=9 must not exceed")]:
        with pytest.raises(SystemExit) as exit_info:
            main(["--dims", bad])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_verify_help_shows_every_default(capsys):
    import pytest
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag in ("--dtype", "--case", "--cases", "--dims", "--seed", "--verbose"):
        assert flag in out
    assert "(default: both)" in out and "(default: 0)" in out and out.count("default") >= 6


def test_verify_refuses_a_negative_seed_in_one_line(capsys):
    # Before: `verify --seed -1` ran and died in numpy's default_rng with a ValueError traceback.
    import pytest
    for bad in ("-1", "1.5"):
        with pytest.raises(SystemExit) as exit_info:
            main(["--case", "linear", "--seed", bad])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"argument --seed: expected a whole number >= 0, got '{bad}'" in err and "Traceback" not in err


def test_a_cases_module_that_raises_is_one_line_naming_its_line(tmp_path, capsys):
    """Before: a NameError or TypeError in the user's --cases module was a traceback through importlib;
    only ImportError, OSError, ValueError and SyntaxError were one line."""
    for body, want in (("foo\n", "NameError: name 'foo' is not defined"),
                       ("from oracle import register\nregister('x', None, None, nonsense=1)\n",
                        "TypeError: Case.__init__() got an unexpected keyword argument 'nonsense'")):
        path = tmp_path / "broken_cases.py"
        path.write_text(body, encoding="utf-8")
        assert main(["--cases", str(path)]) == 2
        err = capsys.readouterr().err
        line = body.count("\n")
        assert err == f"error: --cases {path}: could not import it ({want}, at {path}:{line})\n", err


def test_a_case_that_raises_is_an_error_row_and_the_others_still_run(tmp_path, capsys):
    """Before: a registered case whose layer raised (a shape bug in the user's code) ended verify with a
    traceback and no table."""
    path = tmp_path / "crashing_cases.py"
    path.write_text("from torch import nn\nfrom oracle import register\nfrom reference import layers as L\n"
                    "register('crashes', lambda d, dt, rng: L.RMSNorm(d.C + 1, dtype=dt), lambda d: nn.RMSNorm(d.C))\n",
                    encoding="utf-8")
    try:
        assert main(["--cases", str(path), "--case", "crashes", "--case", "linear", "--dtype", "float64"]) == 1
    finally:
        registry.unregister("crashes")
    out = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ")][1:]
    assert [(r[0].strip(), r[2].strip(), r[-1].strip()) for r in rows] == [
        ("crashes", "fast", "ERROR"), ("crashes", "textbook", "ERROR"), ("linear", "fast", "pass"),
        ("linear", "textbook", "pass")]
    assert "[fast path] crashes [float64]: raised ValueError: operands could not be broadcast" in out
    assert "reference/layers.py:" in out and "Traceback" not in out
