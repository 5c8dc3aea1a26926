"""`python -m oracle verify`: run the oracle over every registered case in both dtypes, on both paths of
the reference (textbook and fast, reference/fast/kernels.py), and print the proof as one table. How to
read it: docs/verify.md. Exits non-zero on any failure.

`--cases MODULE` runs the cases registered by your own module (an importable name or a .py file
that calls `oracle.register`), `--dims B=2,T=5` sets the sizes (docs/verifying-your-own-code.md)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import sys
import time
import traceback
from pathlib import Path

from oracle.core.report import CheckError, Report

from . import cases as _cases  # noqa: F401  (fills the registry)
from .adapters import compare, consistency, directional_check, finite_difference_check, jacobian_check
from .registry import REGISTRY, Dims, small_dims, tiny

ORACLE = Path(__file__).resolve().parents[1]                 # the oracle package: frames not the user's
HEADER = ("component", "dtype", "path", "forward", "input grad", "param grad (worst)", "finite diff (tol 1e-6)", "tolerance", "margin", "result")


def run_case(name: str, dtype: str, seed: int = 0, dims: dict | None = None,
             kernels: str = "fast") -> tuple[Report, Report | None]:
    """(twin report, finite-difference report or None) for one case and dtype, the reference on the
    `kernels` path; `dims` overrides sizes."""
    case = REGISTRY[name]
    d = case.dims.replace(**dims) if dims else None
    ref, twin, inputs = case.build(dtype, seed, d, kernels=kernels)
    report = compare(ref, twin, inputs, case=name, seed=seed, dropout=case.dropout)
    fd = None
    if dtype == "float64" and case.fd:
        ref, _, inputs = case.build(dtype, seed, d, kernels=kernels)
        fd = finite_difference_check(ref, inputs, case=name, seed=seed, dropout=case.dropout)
    return report, fd


def gradchecks(name: str, dtype: str, seed: int = 0, dims: dict | None = None, kernels: str = "fast") -> list[Report]:
    """The gradient checkers' checks for one case and dtype (tests/test_gradcheck.py runs them in CI):
    backward twice and non-contiguous inputs (both dtypes); in float64 also the full Jacobian at a
    tiny size and a directional derivative."""
    case = REGISTRY[name]
    d = case.dims.replace(**dims) if dims else case.dims
    ref, _, inputs = case.build(dtype, seed, d, kernels=kernels)
    reports = [consistency(ref, inputs, case=name, seed=seed, dropout=case.dropout)]
    if dtype == "float64" and case.fd:
        ref, _, inputs = case.build(dtype, seed, d, kernels=kernels)
        reports.append(directional_check(ref, inputs, case=name, seed=seed, dropout=case.dropout))
        ref, _, inputs = case.build(dtype, seed, tiny(d) if dims else small_dims(case), kernels=kernels)
        reports.append(jacobian_check(ref, inputs, case=name, seed=seed, dropout=case.dropout))
    return reports


def row(report: Report, fd: Report | None, extra: list[Report] = (), kernels: str = "fast") -> tuple[str, ...]:
    """One table row. `extra` (gradchecks' reports) count in the finite-difference column (the Jacobian
    and directional checks), the margin (checks with a tolerance) and the result."""
    def err(kind: str) -> str:
        c = report.worst(kind)
        return f"{c.err:.1e}" if c else "-"
    p = report.worst("param")
    fd_checks = (fd.checks if fd else []) + [c for r in extra for c in r.checks if "(jacobian)" in c.name
                                             or "(directional)" in c.name]
    fd_worst = max(fd_checks, key=lambda c: c.err / c.tol) if fd_checks else None
    checks = report.checks + [c for c in (fd.checks if fd else []) + [c for r in extra for c in r.checks] if c.tol > 0]
    margin = max((c.err / c.tol for c in checks), default=float("inf"))
    tol = min((c.tol for c in report.checks), default=0.0)
    passed = report.passed and (fd is None or fd.passed) and all(r.passed for r in extra)
    return (report.case, report.dtype, kernels, err("forward"), err("input"),
            f"{p.err:.1e} {p.name.removesuffix('.grad')}" if p else "-",
            f"{fd_worst.err:.1e}" if fd_worst else "-",
            f"{tol:.1e}" if report.dtype == "float64" else f">={tol:.1e}",
            f"{margin:.2f}", "pass" if passed else "FAIL")


def format_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"   # noqa: E731
    return "\n".join([line(HEADER), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", choices=("float32", "float64", "both"), default="both",
                        help="the dtype(s) to run each case in (default: %(default)s)")
    parser.add_argument("--case", action="append",
                        help="only these cases (repeatable; default: every registered case, or with --cases every "
                             "case that module registers)")
    parser.add_argument("--cases", metavar="MODULE", action="append",
                        help="import MODULE (an importable name such as mypkg.cases, or a path to a .py file) whose "
                             "oracle.register(...) calls add your own cases, and run those (repeatable; default: none)")
    parser.add_argument("--dims", metavar="K=V,...", type=parse_dims, default=None,
                        help=f"sizes for every case, e.g. B=2,T=5,H=2,Hkv=1,hd=4,V=11,L=8 (keys: {', '.join(DIM_KEYS)}; "
                             "default: each case's own sizes)")
    parser.add_argument("--kernels", choices=("fast", "textbook", "both"), default="both",
                        help="which path of the reference to prove (default: %(default)s; reference/fast/kernels.py)")
    parser.add_argument("--seed", type=_seed, default=0,
                        help="seed of the random weights, inputs and upstream gradient (default: %(default)s)")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="print every tensor of every case (default: only the failing ones)")


def _seed(text: str) -> int:
    """A seed numpy's default_rng takes: a whole number >= 0."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


DIM_KEYS = tuple(f.name for f in dataclasses.fields(Dims))


def parse_dims(text: str) -> dict:
    """'B=2,T=5' -> {'B': 2, 'T': 5}; refuses unknown keys, non-integers, sizes below 1 and sizes that
    contradict each other (Hkv must divide H, T must not exceed L)."""
    dims = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in DIM_KEYS:
            raise argparse.ArgumentTypeError(f"{item!r}: expected KEY=INTEGER with KEY one of {', '.join(DIM_KEYS)}")
        try:
            dims[key] = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{key}={value.strip()!r}: expected an integer") from None
        if dims[key] < 1:
            raise argparse.ArgumentTypeError(f"{key}={dims[key]}: expected an integer >= 1")
    d = Dims().replace(**dims)
    if d.H % d.Hkv:
        raise argparse.ArgumentTypeError(f"Hkv={d.Hkv} must divide H={d.H}")
    if d.T > d.L:
        raise argparse.ArgumentTypeError(f"T={d.T} must not exceed the context length L={d.L}")
    return dims


def load_cases(spec: str) -> list[str]:
    """Import a module that registers cases (by name, or a .py file path); the names it registered."""
    before = set(REGISTRY)
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise ValueError(f"--cases {spec}: no such file")
        module_spec = importlib.util.spec_from_file_location(f"_oracle_cases_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        if spec in sys.modules:                                # imported before: its cases are already there
            return [n for n, c in REGISTRY.items() if getattr(c.ref, "__module__", None) == spec]
        importlib.import_module(spec)
    return [n for n in REGISTRY if n not in before]


def _where(e: BaseException) -> str:
    """", at FILE:LINE" of the innermost frame of `e`'s traceback outside the oracle (the user's line)."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "importlib" not in f.filename
              and ORACLE not in Path(f.filename).resolve().parents]
    return f", at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def run(args: argparse.Namespace) -> int:
    external = []
    for spec in getattr(args, "cases", None) or []:
        try:
            found = load_cases(spec)
        except Exception as e:                                 # the user's module: any error, one line
            print(f"error: --cases {spec}: could not import it ({type(e).__name__}: {e}{_where(e)})", file=sys.stderr)
            return 2
        if not found:
            print(f"error: --cases {spec}: the module registered no case (call oracle.register(...) in it)",
                  file=sys.stderr)
            return 2
        external += found
    names = args.case or external or list(REGISTRY)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        print(f"error: unknown case(s) {unknown}; registered: {', '.join(REGISTRY)}", file=sys.stderr)
        return 2
    dims = getattr(args, "dims", None)
    dtypes = ("float64", "float32") if args.dtype == "both" else (args.dtype,)
    rows, failures, start = [], [], time.perf_counter()
    paths = ("fast", "textbook") if getattr(args, "kernels", "both") == "both" else (args.kernels,)
    for name in names:
        for dtype in dtypes:
            for kernels in paths:
                try:
                    report, fd = run_case(name, dtype, args.seed, dims, kernels)
                    extra = gradchecks(name, dtype, args.seed, dims, kernels)
                except Exception as e:                         # a case that crashes is a failed row, not a traceback
                    if isinstance(e, CheckError) and e.__cause__ is not None:
                        e = e.__cause__                        # the layer's own error: named with its line below
                    rows.append((name, dtype, kernels, *["-"] * (len(HEADER) - 4), "ERROR"))
                    failures.append(f"[{kernels} path] {name} [{dtype}]: raised {type(e).__name__}: {e}{_where(e)}")
                    continue
                rows.append(row(report, fd, extra, kernels))
                for r in (report, fd, *extra):
                    if r is not None and (args.verbose or not r.passed):
                        failures.append(f"[{kernels} path] {r}")
    print(format_table(rows))
    print(f"\n{len(rows)} rows, {sum(r[-1] == 'pass' for r in rows)} passed, "
          f"{sum(r[-1] != 'pass' for r in rows)} failed, in {time.perf_counter() - start:.1f} s. "
          "Errors are max|ours - expected| / max|expected|; margin is the worst error / tolerance (docs/verify.md).")
    if failures:
        print("\n" + "\n\n".join(failures))
    return 0 if all(r[-1] == "pass" for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m oracle.bridge.verify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
