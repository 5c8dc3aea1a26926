"""The fast path's thread pool (reference/fast/pool.py) survives Ctrl-C at any moment.

CPython raises a pending KeyboardInterrupt right after a C call returns. A pool whose threads share
Python-level locks (threading.Condition, as concurrent.futures' executor has) can be left with a lock
taken and never released: the next call deadlocks, or the interpreter hangs at exit joining a worker.
The test below raises the interrupt after *every* C call of a pool call, one position per try, and
checks that the pool still gives the right answer afterwards and that the process exits.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

EVERY_POSITION = textwrap.dedent("""
    import faulthandler, sys
    import numpy as np
    from reference.fast import pool
    faulthandler.dump_traceback_later(30, exit=True)        # a deadlock ends the run with the stacks
    pool.THREADS, pool.SPLIT_PRODUCTS = 2, True
    a = np.arange(64, dtype=np.float64).reshape(8, 8)

    def product(lo, hi):
        return a[lo:hi] @ a

    def check():
        assert np.array_equal(np.concatenate(pool.for_products(product, 8)), a @ a)

    class Interrupt:
        def __init__(self, at):
            self.at, self.seen = at, 0

        def __call__(self, frame, event, arg):
            if event == "c_return":
                self.seen += 1
                if self.seen == self.at:
                    raise KeyboardInterrupt                  # where CPython would raise a real Ctrl-C

    check()                                                  # the pool's threads exist before the first try
    at = 1
    while True:
        interrupt = Interrupt(at)
        sys.setprofile(interrupt)
        try:
            check()
        except KeyboardInterrupt:
            pass
        finally:
            sys.setprofile(None)
        check()                                              # still works, and gives the right answer
        if interrupt.seen < at:                              # every position of a whole call was tried
            break
        at += 1
    print(at - 1, "positions")
""")


def test_ctrl_c_after_any_c_call_of_a_pool_call_leaves_the_pool_working_and_the_process_exits():
    proc = subprocess.run([sys.executable, "-c", EVERY_POSITION], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[0]) >= 4, proc.stdout     # the tries did reach into the call


def test_the_pool_runs_every_item_and_keeps_their_order():
    from reference.fast.pool import Pool
    assert Pool(3).map(lambda x: x * x, list(range(50))) == [x * x for x in range(50)]


def test_an_error_in_a_worker_reaches_the_caller_and_the_pool_goes_on():
    from reference.fast.pool import Pool
    p = Pool(2)

    def f(x):
        if x in (3, 5):
            raise ValueError(f"item {x}")
        return x

    with pytest.raises(ValueError, match="item 3"):            # the first failing item, as map reports it
        p.map(f, list(range(8)))
    assert p.map(f, [0, 1, 2]) == [0, 1, 2]


def test_the_workers_do_not_keep_the_interpreter_alive():
    from reference.fast.pool import Pool
    assert all(t.daemon for t in Pool(2).threads)
    np.testing.assert_equal(Pool(1).map(np.sum, [np.ones(3)]), [3.0])
