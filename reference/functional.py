"""Elementwise functions the layers share: erf, GELU (exact and tanh), softmax, and `for_blocks`.

NumPy has no `erf`, so it is evaluated here with the rational approximations of the Cephes
library (S. L. Moshier): relative error below 4e-16 in float64, so exact GELU agrees with
torch's to round-off. In float32, GELU's Phi uses the cheaper formula that PyTorch's own float32
kernel uses (Abramowitz-Stegun 7.1.26, error below 1.5e-7). Constants are Python floats so that
float32 arrays stay float32 (numpy's promotion rules would upcast on a numpy float64 scalar).

Speed (docs/performance.md): the multi-step elementwise functions (GELU, softmax and their
gradients, LayerNorm) run block by block through `for_blocks`. Each NumPy ufunc call streams its
whole operand through memory and uses one core; GELU alone is about 25 such passes. Working on
blocks of about 1 MB keeps a block's temporaries in the cache from one pass to the next, and
NumPy releases the GIL inside ufunc loops, so blocks spread over a few threads run on several
cores at once (as PyTorch's fused, multi-threaded kernels do). The result does not depend on the
number of threads: each block is computed the same way whichever thread takes it. Matrix products
run either threaded inside BLAS or, faster, split over the same pool with BLAS single-threaded
(`for_products`, `products_on_pool`). Large arrays come from `empty`, which recycles memory between
steps (see `Recycler`).
"""

from __future__ import annotations

import ctypes
import math
import os
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

# ------------------------------------------------------------------------- blocks and threads

BLOCK_ELEMENTS = 1 << 18                                       # 256 Ki elements: 1 MB of float32 per array


def _default_threads() -> int:
    """NUMPY_GPT_THREADS if set, else the cores this process may use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return int(os.environ.get("NUMPY_GPT_THREADS") or cores)


THREADS = _default_threads()
_pool: tuple[int, ThreadPoolExecutor] | None = None            # (pid that made it, pool)


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None or _pool[0] != os.getpid():              # a forked child gets a pool of its own
        _pool = (os.getpid(), ThreadPoolExecutor(THREADS, thread_name_prefix="numpy-gpt"))
    return _pool[1]


def _blas_fn(name: str):
    """OpenBLAS's openblas_<name> from the library numpy loaded (found in /proc/self/maps), or None
    (not Linux, or another BLAS)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # pragma: no cover - not Linux
        return None
    libs = [ctypes.CDLL(path) for path in sorted(set(re.findall(r"(/\S*openblas\S*\.so\S*)", maps)))]
    symbols = (f"scipy_openblas_{name}64_", f"openblas_{name}64_", f"openblas_{name}")
    return next((getattr(lib, sym) for lib in libs for sym in symbols if hasattr(lib, sym)), None)


def blas_threads() -> int:
    """How many threads numpy's BLAS uses (OpenBLAS's own answer; else the environment or the cores)."""
    fn = _blas_fn("get_num_threads")
    env = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    return int(fn()) if fn is not None else int(env or os.cpu_count() or 1)


def set_blas_threads(n: int) -> bool:
    """Set numpy's BLAS threads; False where that is not possible (not OpenBLAS)."""
    fn = _blas_fn("set_num_threads")
    if fn is None:  # pragma: no cover - numpy's wheels ship OpenBLAS
        return False
    fn(ctypes.c_int(n))
    return True


# Who runs the matrix products in parallel. By default BLAS does: each call is threaded inside
# OpenBLAS. Inside `products_on_pool()` (the benchmark, `train` and `sample` use it) or with
# OPENBLAS_NUM_THREADS=1, BLAS runs on one core and `for_products` spreads the products over this
# module's pool instead: attention's many small (T, hd) products then run whole on each core, about
# 25% faster than split over both cores (where every product pays a thread hand-over), a block of
# the batch keeps its scores in its core's cache from the first product to the last, and no idle
# BLAS thread spins on a core the elementwise blocks need. The numbers are the same either way, bit
# for bit at the benchmark's sizes (a row of a product is computed alike whichever call computes
# it); on very small products OpenBLAS may pick another kernel for a block, which rounds
# differently (tests/test_bench.py::test_products_on_the_pool_give_the_same_numbers).
SPLIT_PRODUCTS = THREADS > 1 and blas_threads() == 1


@contextmanager
def products_on_pool(enable: bool = True) -> Iterator[bool]:
    """Within the block, run matrix products on the pool with BLAS single-threaded (or, enable=False,
    leave them to BLAS's threads); yields whether the pool runs them. Restores both settings after."""
    global SPLIT_PRODUCTS
    before, threads = SPLIT_PRODUCTS, blas_threads()
    want = enable and THREADS > 1
    if want and not set_blas_threads(1):  # pragma: no cover - not OpenBLAS: leave the products to BLAS
        want = False
    SPLIT_PRODUCTS = want
    try:
        yield want
    finally:
        SPLIT_PRODUCTS = before
        set_blas_threads(threads)


_worker = threading.local()                                    # .busy: this thread is a pool worker


def _run(fn: Callable, arg):
    _worker.busy = True                                        # nested for_blocks run inline (no deadlock)
    return fn(arg)


def _inline() -> bool:
    return THREADS == 1 or getattr(_worker, "busy", False)


def for_blocks(fn: Callable[[int, int], object], n: int, item_size: int = 1) -> list:
    """Call fn(lo, hi) on consecutive blocks [lo, hi) covering range(n), where one item holds
    `item_size` elements, about BLOCK_ELEMENTS elements per block; blocks run on THREADS threads.
    Returns the blocks' results in order. fn must write only to its own block of its outputs.
    Called from inside a block (a pool thread), it runs its blocks there, one after the other."""
    step = max(1, BLOCK_ELEMENTS // max(1, item_size))
    bounds = [(lo, min(lo + step, n)) for lo in range(0, n, step)]
    if _inline() or len(bounds) <= 1:
        return [fn(lo, hi) for lo, hi in bounds]
    return list(_executor().map(partial(_run, lambda b: fn(*b)), bounds))


def for_each(fn: Callable, items: list) -> list:
    """[fn(item) for item in items], spread over THREADS threads (for independent elementwise work)."""
    if _inline() or len(items) <= 1:
        return [fn(item) for item in items]
    return list(_executor().map(partial(_run, fn), items))


def for_products(fn: Callable[[int, int], object], n: int, item_size: int | None = None) -> list:
    """fn(lo, hi) over range(n) for work made of matrix products (see SPLIT_PRODUCTS).

    BLAS threaded: fn(0, n), once, on this thread. BLAS single-threaded: blocks of range(n) on the
    pool, THREADS equal ones (item_size None: a few large products) or for_blocks' cache-sized ones."""
    if not SPLIT_PRODUCTS or _inline() or n < 2:
        return [fn(0, n)]
    if item_size is not None:
        return for_blocks(fn, n, item_size)
    bounds = [(i * n // THREADS, (i + 1) * n // THREADS) for i in range(min(THREADS, n))]
    return list(_executor().map(partial(_run, lambda b: fn(*b)), bounds))


def column_sums(a: np.ndarray, before: Callable[[int, int], object] | None = None) -> np.ndarray:
    """a.sum(0) of a 2-d array, over for_blocks' blocks of rows, the blocks' sums added in block order
    (so the result does not depend on the thread count). `before(lo, hi)`, if given, first updates
    rows lo:hi in place, and each block is summed while it is still in cache."""
    def block(lo: int, hi: int) -> np.ndarray:
        if before is not None:
            before(lo, hi)
        return a[lo:hi].sum(0)
    total = np.zeros(a.shape[1], a.dtype)
    for part in for_blocks(block, a.shape[0], a.shape[1]):
        total += part
    return total


# ------------------------------------------------------------------------- recycled arrays


class Recycler:
    """Large arrays handed out again once nothing refers to them, instead of fresh memory each time.

    A training step allocates about a gigabyte of activations and temporaries. NumPy gives large
    blocks back to the operating system when they are freed (glibc unmaps every block above 32 MB
    at once), and the next step gets fresh pages that fault in on first write: on the benchmark
    machine a GEMM writing a fresh 24 MB output runs at half speed, and float64 steps take 25% longer
    (docs/performance.md). `empty` reuses a buffer of the same size and dtype when one is free.

    A buffer is free when only this recycler refers to it: its reference count. Any live array
    made from it (the returned array, a reshape, a transpose, a slice kept in a layer's cache)
    refers to it, so a buffer still in use is never handed out twice. Free buffers are kept while
    the recycler holds at most `slack` times the most memory it ever had in use at once; beyond
    that the least recently used free ones are released, so varying shapes (sampling with a
    growing context) cannot grow it without bound. Arrays below `min_bytes` come from np.empty.
    """

    def __init__(self, min_bytes: int = 1 << 20, slack: float = 1.25):
        self.min_bytes, self.slack = min_bytes, slack
        self.buffers: list[np.ndarray] = []                    # 1-d, owned by the recycler
        self.last_used: list[int] = []                         # tick of each buffer's last hand-out
        self.tick = 0
        self.peak_in_use = 0                                   # bytes
        self.lock = threading.Lock()

    def _is_free(self, i: int) -> bool:
        return sys.getrefcount(self.buffers[i]) == 2           # the list, and getrefcount's argument

    def empty(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        """An uninitialised array, like np.empty(shape, dtype)."""
        dtype, size = np.dtype(dtype), math.prod(shape)
        if size * dtype.itemsize < self.min_bytes:
            return np.empty(shape, dtype)
        with self.lock:
            self.tick += 1
            free = [i for i in range(len(self.buffers)) if self._is_free(i)]
            found = next((i for i in free if self.buffers[i].dtype == dtype and self.buffers[i].size == size), None)
            if found is None:
                self._release(free, size * dtype.itemsize)
                self.buffers.append(np.empty(size, dtype))
                self.last_used.append(self.tick)
                found = len(self.buffers) - 1
            self.last_used[found] = self.tick
            return self.buffers[found].reshape(shape)

    def _release(self, free: list[int], new_bytes: int) -> None:
        """Before allocating new_bytes: drop least recently used free buffers while the recycler would
        hold more than slack x the most it ever had in use at once."""
        total = sum(b.nbytes for b in self.buffers) + new_bytes
        self.peak_in_use = max(self.peak_in_use, total - sum(self.buffers[i].nbytes for i in free))
        dropped = set()
        for i in sorted(free, key=lambda j: self.last_used[j]):
            if total <= self.slack * self.peak_in_use:
                break
            total -= self.buffers[i].nbytes
            dropped.add(i)
        self.buffers = [b for i, b in enumerate(self.buffers) if i not in dropped]
        self.last_used = [t for i, t in enumerate(self.last_used) if i not in dropped]

    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buffers)


RECYCLER = Recycler()
empty = RECYCLER.empty                                         # the layers' np.empty for large arrays


SQRT_2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

# erf(x) = x T(x^2) / U(x^2) for |x| <= 1
_ERF_T = (9.60497373987051638749e0, 9.00260197203842689217e1, 2.23200534594684319226e3,
          7.00332514112805075473e3, 5.55923013010394962768e4)
_ERF_U = (1.0, 3.35617141647503099647e1, 5.21357949780152679795e2, 4.59432382970980127987e3,
          2.26290000613890934246e4, 4.92673942608635921086e4)
# erfc(x) = exp(-x^2) P(x) / Q(x) for 1 <= x < 8
_ERFC_P = (2.46196981473530512524e-10, 5.64189564831068821977e-1, 7.46321056442269912687e0,
           4.86371970985681366614e1, 1.96520832956077098242e2, 5.26445194995477358631e2,
           9.34528527171957607540e2, 1.02755188689515710272e3, 5.57535335369399327526e2)
_ERFC_Q = (1.0, 1.32281951154744992508e1, 8.67072140885989742329e1, 3.54937778887819891062e2,
           9.75708501743205489753e2, 1.82390916687909736289e3, 2.24633760818710981792e3,
           1.65666309194161350182e3, 5.57535340817727675546e2)

def _polyval(coeffs: tuple[float, ...], x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Horner's rule, highest power first, keeping x's dtype (in place on one new array, or `out`)."""
    out = np.multiply(x, coeffs[0], out=out)
    for c in coeffs[1:-1]:
        out += c
        out *= x
    out += coeffs[-1]
    return out


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, elementwise, in x's dtype.

    Speed: the first range's formula is evaluated on every element (on x clipped to [-1, 1], so
    that no element can overflow), then the elements beyond 1 are gathered by integer index, evaluated
    with the second range's formula and scattered back. Boolean-mask gathers and scatters cost
    about 8x more than integer ones in NumPy, and np.where-style blends evaluate both formulas
    everywhere.
    """
    x = np.ascontiguousarray(x)                                # C order: the flat indices below assume it
    xc = np.clip(x, -1.0, 1.0)                                 # beyond 1 the value is replaced below
    z = xc * xc
    out = _polyval(_ERF_T, z)
    out *= xc
    out /= _polyval(_ERF_U, z)                                 # x T(x^2) / U(x^2), |x| <= 1
    big = np.flatnonzero(np.abs(x) > 1.0)                      # (n_big,) flat indices, often none
    xb = x.reshape(-1).take(big)
    # erfc(6) = 2e-17 is below half an ulp of 1 even in float64, so |x| >= 6 gives exactly +-1
    # and Cephes's third range (x >= 8) is never needed: cap |x| at 6 instead.
    al = np.minimum(np.abs(xb), 6.0)
    erfc = np.exp(-al * al)
    erfc *= _polyval(_ERFC_P, al)
    erfc /= _polyval(_ERFC_Q, al)                              # exp(-x^2) P(x) / Q(x), 1 < |x| < 8
    out.reshape(-1)[big] = np.copysign(1.0 - erfc, xb)
    return out


# Phi(x) in float32: Abramowitz & Stegun 7.1.26 (C. Hastings), |error in erf| <= 1.5e-7, which is
# the approximation PyTorch's vectorised CPU kernel evaluates for float32 erf (and so for float32
# GELU). It costs one exp and a degree-5 polynomial, a third of the Cephes evaluation above.
# Written for Phi(x) = (1 + erf(x / sqrt 2)) / 2: the 1/sqrt(2) is folded into p, the 1/2 into the a_i.
_AS_P = 0.3275911 / SQRT_2
_AS_A = tuple(0.5 * a for a in (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592))


def _float32_cdf_and_density(x: np.ndarray, cdf: np.ndarray | None = None,
                             density: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(Phi(x), exp(-x^2/2)) in float32, computed in the two output buffers (new ones if not given)."""
    buf = np.abs(x, out=density)
    buf *= _AS_P
    buf += 1.0
    t = np.reciprocal(buf, out=buf)                            # t = 1 / (1 + p |x| / sqrt 2)
    tail = _polyval(_AS_A, t, out=cdf)
    tail *= t                                                  # (a1 t + ... + a5 t^5) / 2
    with np.errstate(over="ignore"):                           # x^2 = inf for |x| > 1.8e19: exp gives 0
        e = np.multiply(x, x, out=buf)                         # t is no longer needed: reuse its buffer
    e *= -0.5
    np.exp(e, out=e)
    tail *= e                                                  # = Phi(-|x|), the small tail
    cdf = np.subtract(0.5, tail, out=tail)
    np.copysign(cdf, x, out=cdf)
    cdf += 0.5                                                 # 1 - tail for x >= 0, tail for x < 0
    return cdf, e                                              # (a masked select costs 10x more)


def normal_cdf(x: np.ndarray) -> np.ndarray:
    """Phi(x) = (1 + erf(x / sqrt 2)) / 2, in x's dtype: Cephes in float64 (round-off), the
    Abramowitz-Stegun form PyTorch uses in float32 (absolute error below 1e-7)."""
    if x.dtype == np.float32:
        return _float32_cdf_and_density(x)[0]
    cdf = erf(x * (1.0 / SQRT_2))
    cdf += 1.0
    cdf *= 0.5
    return cdf


def normal_pdf(x: np.ndarray) -> np.ndarray:
    """phi(x) = exp(-x^2 / 2) / sqrt(2 pi)."""
    with np.errstate(over="ignore"):                           # x^2 = inf: exp gives 0, as it should
        pdf = x * x
    pdf *= -0.5
    np.exp(pdf, out=pdf)
    pdf *= INV_SQRT_2PI
    return pdf


def gelu(x: np.ndarray, approximate: str = "none") -> np.ndarray:
    """GELU(x) = x * Phi(x), exactly (erf) or with the tanh approximation."""
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x**3)))
    return x * normal_cdf(x)


def gelu_grad(x: np.ndarray, approximate: str = "none") -> np.ndarray:
    """d GELU / dx, elementwise (derived in docs/gelu.md)."""
    return gelu_and_grad(x, approximate)[1]


def gelu_and_grad(x: np.ndarray, approximate: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """(GELU(x), GELU'(x)) sharing the expensive part: the MLP computes both in its forward, so
    its backward is one multiplication (and caches GELU'(x) where it would cache x).
    Computed block by block (see the module docstring), into two new arrays."""
    y, grad = empty(x.shape, x.dtype), empty(x.shape, x.dtype)
    xf, yf, gf = np.ascontiguousarray(x).reshape(-1), y.reshape(-1), grad.reshape(-1)
    for_blocks(lambda lo, hi: _gelu_and_grad_block(xf[lo:hi], approximate, yf[lo:hi], gf[lo:hi]), xf.size)
    return y, grad


def _gelu_and_grad_block(x: np.ndarray, approximate: str, y: np.ndarray, grad: np.ndarray) -> None:
    """GELU(x) into y and GELU'(x) into grad, using them as the scratch space."""
    if approximate == "tanh":
        np.multiply(x, x, out=y)
        np.multiply(y, 3 * 0.044715, out=grad)
        grad += 1.0
        grad *= SQRT_2_OVER_PI                                 # dinner = sqrt(2/pi) (1 + 3 0.044715 x^2)
        y *= 0.044715
        y += 1.0
        y *= x
        y *= SQRT_2_OVER_PI                                    # inner = sqrt(2/pi) (x + 0.044715 x^3)
        t = np.tanh(y, out=y)
        grad *= x
        grad *= 0.5                                            # x dinner / 2
        tmp = np.multiply(t, t)                                # block-sized
        np.subtract(1.0, tmp, out=tmp)
        grad *= tmp                                            # x (1 - t^2) dinner / 2
        t += 1.0
        t *= 0.5                                               # (1 + t) / 2
        grad += t
        t *= x                                                 # GELU = x (1 + t) / 2
        return
    if x.dtype == np.float32:
        cdf, density = _float32_cdf_and_density(x, y, grad)
        density *= INV_SQRT_2PI                                # phi(x), from the exp the cdf needed
    else:
        cdf = y
        cdf[...] = normal_cdf(x)
        density = grad
        density[...] = normal_pdf(x)
    density *= x
    density += cdf                                             # GELU'(x) = Phi(x) + x phi(x)
    cdf *= x                                                   # GELU(x) = x Phi(x)


def softmax(x: np.ndarray, axis: int = -1, out: np.ndarray | None = None) -> np.ndarray:
    """Numerically stable softmax: subtracting the row max keeps exp() <= 1; -inf entries give 0.

    `out=x` computes it in place (attention does, on its freshly made scores). It runs block by
    block over the leading axis (see the module docstring), with `axis` moved last (a view)."""
    out = np.empty(x.shape, x.dtype) if out is None else out
    xs, outs = (np.atleast_2d(np.moveaxis(a, axis, -1)) for a in (x, out))   # (..., n) views
    for_blocks(lambda lo, hi: _softmax_block(xs[lo:hi], outs[lo:hi]), xs.shape[0], xs[0].size)
    return out


def _softmax_block(x: np.ndarray, out: np.ndarray) -> None:
    m = np.max(x, axis=-1, keepdims=True)
    e = np.subtract(x, m, out=out)
    np.exp(e, out=e)
    e *= 1.0 / np.einsum("...i->...", e)[..., None]           # row sums (einsum: 3x faster than sum on
                                                               # short rows); one division per row


def softmax_backward(dp: np.ndarray, p: np.ndarray, axis: int = -1, out: np.ndarray | None = None) -> np.ndarray:
    """Given p = softmax(s) and dL/dp, return dL/ds = p * (dp - sum(dp * p)). `out=dp` works in place.
    Block by block, like softmax.

    Derived in docs/softmax.md."""
    out = np.empty(dp.shape, dp.dtype) if out is None else out
    dps, ps, outs = (np.atleast_2d(np.moveaxis(a, axis, -1)) for a in (dp, p, out))
    for_blocks(lambda lo, hi: _softmax_backward_block(dps[lo:hi], ps[lo:hi], outs[lo:hi]), dps.shape[0], dps[0].size)
    return out


def _softmax_backward_block(dp: np.ndarray, p: np.ndarray, out: np.ndarray) -> None:
    dot = np.einsum("...i,...i->...", dp, p)[..., None]       # row dot products, without a temporary
    ds = np.subtract(dp, dot, out=out)
    ds *= p
