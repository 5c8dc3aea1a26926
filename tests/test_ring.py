"""The ring all-reduce of reference/programs/collectives.py on N threads standing in for N ranks (no MPI
needed): reduce-scatter leaves rank r the sum of chunk r, all-gather copies every chunk everywhere, the
all-reduce gives every rank the same bits, equal to the sum to round-off, for N = 1..5 and vectors
shorter than N; and ZeRO-1's step over the slices equals AdamW on the whole, bit for bit. A ring one
step short is caught."""

from __future__ import annotations

import queue
import threading

import numpy as np
import pytest

from reference.module import Parameter
from reference.optim import AdamW
from reference.programs import collectives as D
from reference.programs.distributed import DataParallel, shard_bounds


class ThreadComm:
    """Rank `rank` of `size` threads; sendrecv through one queue per (source, dest) pair."""

    def __init__(self, rank, size, queues):
        self.rank, self.size, self.queues = rank, size, queues

    def sendrecv(self, send, dest, recv, source):
        self.queues[self.rank, dest].put(send.copy())
        recv[...] = self.queues[source, self.rank].get(timeout=10)


def on_ranks(size, body):
    """Run body(comm) on `size` threads; their results in rank order."""
    queues = {(a, b): queue.Queue() for a in range(size) for b in range(size)}
    out, errors = [None] * size, []

    def go(r):
        try:
            out[r] = body(ThreadComm(r, size, queues))
        except Exception as e:                                 # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=go, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return out


def vectors(size, length):
    rng = np.random.default_rng(size * 100 + length)
    return [rng.standard_normal(length) for _ in range(size)]


@pytest.mark.parametrize("size", [1, 2, 3, 5])
@pytest.mark.parametrize("length", [3, 17])
def test_ring_allreduce_sums_and_every_rank_holds_the_same_bits(size, length):
    xs = vectors(size, length)
    chunks = shard_bounds(length, size)

    def body(comm):
        flat = xs[comm.rank].copy()
        D.ring_allreduce(comm, flat, chunks)
        return flat
    got = on_ranks(size, body)
    want = np.sum(xs, axis=0)
    assert all(np.array_equal(g, got[0]) for g in got)
    assert np.max(np.abs(got[0] - want)) <= 1e-15 * size * np.max(np.abs(xs))


@pytest.mark.parametrize("size", [2, 3, 4])
def test_reduce_scatter_then_allgather(size):
    xs = vectors(size, 11)
    chunks = shard_bounds(11, size)

    def body(comm):
        flat = xs[comm.rank].copy()
        D.ring_reduce_scatter(comm, flat, chunks)
        a, b = chunks[comm.rank]
        own = flat[a:b].copy()
        D.ring_allgather(comm, flat, chunks)
        return own, flat
    got = on_ranks(size, body)
    want = np.sum(xs, axis=0)
    for r, (own, flat) in enumerate(got):
        a, b = chunks[r]
        assert np.allclose(own, want[a:b], rtol=1e-15, atol=1e-15)
        assert np.array_equal(flat[a:b], own)               # the all-gather copies, it does not add
        assert np.array_equal(flat, got[0][1])


def test_a_ring_one_step_short_is_caught():
    xs = vectors(3, 9)
    chunks = shard_bounds(9, 3)

    def short(comm):
        flat = xs[comm.rank].copy()
        r, n = comm.rank, comm.size
        recv = np.empty(9)
        for s in range(n - 2):                                 # the bug: N - 2 steps
            sa, sb = chunks[(r - s - 1) % n]
            ra, rb = chunks[(r - s - 2) % n]
            comm.sendrecv(flat[sa:sb], (r + 1) % n, recv[:rb - ra], (r - 1) % n)
            flat[ra:rb] += recv[:rb - ra]
        D.ring_allgather(comm, flat, chunks)
        return flat
    got = on_ranks(3, short)
    assert np.max(np.abs(got[0] - np.sum(xs, axis=0))) > 1e-3


@pytest.mark.parametrize("size", [2, 3])
def test_zero1_slices_equal_adamw_on_the_whole_bit_for_bit(size):
    rng = np.random.default_rng(7)
    shapes = [(4, 3), (3,), (5, 2)]
    init = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(4)]

    def groups(params):
        return [{"params": [p for p in params if p.data.ndim >= 2], "weight_decay": 0.1},
                {"params": [p for p in params if p.data.ndim < 2], "weight_decay": 0.0}]
    whole = [Parameter(x.copy()) for x in init]
    opt = AdamW(groups(whole), lr=1e-2, betas=(0.9, 0.99))
    for g in grads:
        for p, gi in zip(whole, g):
            p.grad[...] = gi
        opt.step()

    def body(comm):
        params = [Parameter(x.copy()) for x in init]
        adamw = AdamW(groups(params), lr=1e-2, betas=(0.9, 0.99))
        dp = DataParallel(comm, zero_stage=1)
        dp.attach(params, adamw)
        lo, hi = dp.chunks[comm.rank]
        for g in grads:
            dp.zero.grad = np.concatenate([x.ravel() for x in g])[lo:hi]     # this rank's slice of the summed gradient
            dp.step(adamw)                                     # its slice's AdamW, then the parameters all-gathered
        return [p.data.copy() for p in params]
    for got in on_ranks(size, body):
        assert all(np.array_equal(a, p.data) for a, p in zip(got, whole))
