"""`python -m oracle verify`: run the oracle over every registered case in both dtypes and print
the proof as one table. How to read it: docs/verify.md. Exits non-zero on any failure."""

from __future__ import annotations

import argparse
import sys
import time

from . import cases as _cases  # noqa: F401  (fills the registry)
from .fd import finite_difference_check
from .harness import Report, compare
from .registry import REGISTRY

HEADER = ("component", "dtype", "path", "forward", "input grad", "param grad (worst)", "finite diff (tol 1e-6)", "tolerance", "margin", "result")


def run_case(name: str, dtype: str, seed: int = 0, kernels: str = "fast") -> tuple[Report, Report | None]:
    """One case on one path of the reference (reference/kernels.py): against its twin, and in float64
    against finite differences."""
    case = REGISTRY[name]
    ref, twin, inputs = case.build(dtype, seed, kernels=kernels)
    report = compare(ref, twin, inputs, case=name, seed=seed, dropout=case.dropout)
    fd = None
    if dtype == "float64" and case.fd:
        ref, _, inputs = case.build(dtype, seed, kernels=kernels)
        fd = finite_difference_check(ref, inputs, case=name, seed=seed, dropout=case.dropout)
    return report, fd


def row(report: Report, fd: Report | None, kernels: str = "fast") -> tuple[str, ...]:
    def err(kind: str) -> str:
        c = report.worst(kind)
        return f"{c.err:.1e}" if c else "-"
    p = report.worst("param")
    fd_worst = max(fd.checks, key=lambda c: c.err / c.tol) if fd and fd.checks else None
    checks = report.checks + (fd.checks if fd else [])
    margin = max((c.err / c.tol for c in checks), default=float("inf"))
    tol = min((c.tol for c in report.checks), default=0.0)
    passed = report.passed and (fd is None or fd.passed)
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
    parser.add_argument("--dtype", choices=("float32", "float64", "both"), default="both")
    parser.add_argument("--case", action="append", help="only these cases (repeatable); default: all")
    parser.add_argument("--kernels", choices=("fast", "textbook", "both"), default="both",
                        help="which path of the reference to prove (default both; reference/kernels.py)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", "-v", action="store_true", help="print every tensor of every case")


def run(args: argparse.Namespace) -> int:
    names = args.case or list(REGISTRY)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        print(f"error: unknown case(s) {unknown}; registered: {', '.join(REGISTRY)}", file=sys.stderr)
        return 2
    dtypes = ("float64", "float32") if args.dtype == "both" else (args.dtype,)
    rows, failures, start = [], [], time.perf_counter()
    paths = ("fast", "textbook") if getattr(args, "kernels", "both") == "both" else (args.kernels,)
    for name in names:
        for dtype in dtypes:
            for kernels in paths:
                report, fd = run_case(name, dtype, args.seed, kernels)
                rows.append(row(report, fd, kernels))
                for r in (report, fd):
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
    parser = argparse.ArgumentParser(prog="python -m oracle.verify", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
