"""NumPy's matrix-product rate two ways: the best single product, and the sustained rate of every core.

    python benchmarks/gemm_rates.py                  # float32, 2048^3 and the large config's products
    python benchmarks/gemm_rates.py --dtype float64 --products 40

`python -m oracle bench` divides the step's median GFLOP/s by the *best* single 2048^3 product it
sees (about 80 ms each, sixty of them around a row): a short burst at the machine's quietest and
fastest. This script also measures what the cores sustain: each of the pool's threads runs
`--products` products back to back on its own rows (OpenBLAS single-threaded, as the training step
runs them, see reference/fast/pool.py::products_on_pool), and the rate is the total FLOPs over the
time until the last thread finishes. docs/performance.md ("The numbers") quotes both.

Shapes: the 2048^3 product of the benchmark's peak, and the forward products of the large config's
four Linear layers (4096 rows: batch 16 x T 256).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference.fast.pool import THREADS, for_products, products_on_pool  # noqa: E402

SHAPES = {                                                     # name: (rows M, inner K, columns N)
    "2048^3": (2048, 2048, 2048),
    "c_attn 4096x384 @ 384x1152": (4096, 384, 1152),
    "c_proj 4096x384 @ 384x384": (4096, 384, 384),
    "c_fc 4096x384 @ 384x1536": (4096, 384, 1536),
    "mlp c_proj 4096x1536 @ 1536x384": (4096, 1536, 384),
}


def best_single(a: np.ndarray, b: np.ndarray, out: np.ndarray, repeats: int) -> float:
    """GFLOP/s of the fastest of `repeats` products, rows split over the pool (the way the step runs
    them; the bench's peak also tries one BLAS-threaded call and keeps the faster)."""
    product = lambda: for_products(lambda lo, hi: np.matmul(a[lo:hi], b, out=out[lo:hi]), a.shape[0])  # noqa: E731
    product()
    best = min(_timed(product) for _ in range(repeats))
    return 2.0 * a.shape[0] * a.shape[1] * b.shape[1] / best / 1e9


def sustained(a: np.ndarray, b: np.ndarray, out: np.ndarray, products: int) -> float:
    """GFLOP/s of THREADS threads each running `products` products on its own rows, back to back."""
    bounds = [(i * a.shape[0] // THREADS, (i + 1) * a.shape[0] // THREADS) for i in range(THREADS)]

    def work(lo: int, hi: int) -> None:
        for _ in range(products):
            np.matmul(a[lo:hi], b, out=out[lo:hi])
    threads = [threading.Thread(target=work, args=bound) for bound in bounds]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 2.0 * a.shape[0] * a.shape[1] * b.shape[1] * products / (time.perf_counter() - t0) / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--products", type=int, default=40, help="back-to-back products per thread (default 40)")
    parser.add_argument("--repeats", type=int, default=10, help="single products timed for the best (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="times each shape is measured (default 3)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"{THREADS} threads, {args.dtype}; GFLOP/s per round: best single product | sustained")
    with products_on_pool():
        for name, (m, k, n) in SHAPES.items():
            a = rng.standard_normal((m, k)).astype(args.dtype)
            b = rng.standard_normal((k, n)).astype(args.dtype)
            out = np.empty((m, n), args.dtype)
            rounds = [(best_single(a, b, out, args.repeats), sustained(a, b, out, args.products))
                      for _ in range(args.rounds)]
            # Three significant digits, not a fixed point: a tiny product on a busy machine runs at well
            # under 1 GFLOP/s, which must not print as 0.
            cells = "  ".join(f"{best:5.3g} | {sus:5.3g}" for best, sus in rounds)
            print(f"{name:34s} {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
