"""The fast path's machinery: a thread pool, cache-sized blocks, matrix products on the pool, and
recycled memory. Used by the fast kernels (reference/fast/) only; the textbook path never imports it.

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
import queue
import re
import sys
import threading
from contextlib import contextmanager
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
_worker = threading.local()                                    # .busy: this thread is a pool worker


class Pool:
    """`n` daemon threads and the caller run fn(arg) for the items of `map`, taking them from one queue;
    the caller then waits for the items the threads took. With THREADS = 2 the pool has one thread: the
    caller working rather than waiting saves a hand-over per call (docs/performance.md measures it).

    Why not concurrent.futures.ThreadPoolExecutor: its futures and its idle counter are guarded by
    threading.Condition, whose __enter__ is Python code. A Ctrl-C (KeyboardInterrupt) that lands in the
    main thread just after __enter__ has taken the lock, before the `with` block is set up, leaves the lock
    held for ever (CPython runs signal handlers between any two calls; bpo-29988): the next `map`
    deadlocks, or a worker blocks on the lock and the interpreter hangs at exit joining it (a `train`
    that prints "interrupted" and never exits). tests/test_pool.py raises the
    interrupt after every C call of a pool call in turn.

    Here the only things shared between threads are `queue.SimpleQueue`s, written in C: an interrupt in
    `get` takes no item and holds no lock. Each `map` gets its own result queue, so an interrupted call's
    late results never reach a later call; the workers are daemon threads, so exit never waits for them.
    Arrays a worker still writes after an interrupt stay referenced by its task, so the Recycler does not
    hand them out again until it is done.
    """

    def __init__(self, n: int):
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.threads = [threading.Thread(target=self._work, name=f"numpy-gpt_{i}", daemon=True) for i in range(n)]
        for thread in self.threads:
            thread.start()

    def _work(self) -> None:
        _worker.busy = True                                    # nested for_blocks run inline (no deadlock)
        while True:
            self._run(self.tasks.get(), BaseException)

    @staticmethod
    def _run(task: tuple, catch: type[BaseException]) -> None:
        fn, index, arg, results = task
        try:
            value = fn(arg)
        except catch as error:                                 # handed to the caller, which raises it
            results.put((index, None, error))
        else:
            results.put((index, value, None))

    def map(self, fn: Callable, args: list) -> list:
        """[fn(a) for a in args], run on the pool; the first failing item's exception is raised."""
        results: queue.SimpleQueue = queue.SimpleQueue()
        for index, arg in enumerate(args):
            self.tasks.put((fn, index, arg, results))
        busy = getattr(_worker, "busy", False)
        try:
            _worker.busy = True                                # its own nested for_blocks run inline
            while True:
                try:
                    task = self.tasks.get_nowait()
                except queue.Empty:
                    break
                self._run(task, Exception)                     # a Ctrl-C here leaves map at once
                del task
        finally:
            _worker.busy = busy
        out, errors = [None] * len(args), []
        for _ in args:
            index, value, error = results.get()
            out[index] = value
            if error is not None:
                errors.append((index, error))
        if errors:
            raise min(errors, key=lambda e: e[0])[1]
        return out


_pool: tuple[int, Pool] | None = None                          # (pid that made it, pool)


def _executor() -> Pool:
    global _pool
    if _pool is None or _pool[0] != os.getpid():              # a forked child gets a pool of its own
        _pool = (os.getpid(), Pool(THREADS - 1))               # the caller is the THREADS-th
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


def in_task() -> bool:
    """True inside an item of the pool's work: on a pool thread, or in the caller running its share."""
    return getattr(_worker, "busy", False)


def _inline() -> bool:
    return THREADS == 1 or in_task()


def for_blocks(fn: Callable[[int, int], object], n: int, item_size: int = 1) -> list:
    """Call fn(lo, hi) on consecutive blocks [lo, hi) covering range(n), where one item holds
    `item_size` elements, about BLOCK_ELEMENTS elements per block; blocks run on THREADS threads.
    Returns the blocks' results in order. fn must write only to its own block of its outputs.
    Called from inside a block (a pool thread), it runs its blocks there, one after the other."""
    step = max(1, BLOCK_ELEMENTS // max(1, item_size))
    bounds = [(lo, min(lo + step, n)) for lo in range(0, n, step)]
    if _inline() or len(bounds) <= 1:
        return [fn(lo, hi) for lo, hi in bounds]
    return _executor().map(lambda b: fn(*b), bounds)


def for_products(fn: Callable[[int, int], object], n: int, item_size: int | None = None) -> list:
    """fn(lo, hi) over range(n) for work made of matrix products (see SPLIT_PRODUCTS).

    BLAS threaded: fn(0, n), once, on this thread. BLAS single-threaded: blocks of range(n) on the
    pool, THREADS equal ones (item_size None: a few large products) or for_blocks' cache-sized ones."""
    if not SPLIT_PRODUCTS or _inline() or n < 2:
        return [fn(0, n)]
    if item_size is not None:
        return for_blocks(fn, n, item_size)
    bounds = [(i * n // THREADS, (i + 1) * n // THREADS) for i in range(min(THREADS, n))]
    return _executor().map(lambda b: fn(*b), bounds)


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
