"""The exchanges between ranks: the communicators (one process, or MPI's COMM_WORLD through mpi4py) and
the ring reduce-scatter, all-gather and all-reduce that data parallel training is built on
(reference/programs/distributed.py; docs/data-parallel.md derives the ring and its cost).

mpi4py is imported only when the environment says this process is one of several MPI ranks
(`world_comm`), so one-process training never loads it. Install it with the `dist` extra.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["LocalComm", "MPIComm", "PeerLost", "world_comm", "world_size_from_env", "ring_allreduce",
           "ring_reduce_scatter", "ring_allgather"]

# The environment variables MPI launchers set for each rank (MPICH/Hydra and Open MPI).
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE")


# ------------------------------------------------------------------------------------- communicators


class LocalComm:
    """One process: rank 0 of 1. Every collective is the identity."""

    rank, size = 0, 1

    def allgather(self, obj) -> list:
        return [obj]

    def bcast(self, obj, root: int = 0):
        return obj

    def sendrecv(self, send: np.ndarray, dest: int, recv: np.ndarray, source: int) -> None:
        raise RuntimeError("one process has no peer to exchange with")

    def gather_array(self, part: np.ndarray, counts: list[int]) -> np.ndarray | None:
        return part.copy()

    def abort(self, code: int) -> None:
        raise SystemExit(code)


class PeerLost(RuntimeError):
    """An MPI exchange failed because another rank is gone (killed, its machine lost): MPI's own words."""


class MPIComm:
    """mpi4py's COMM_WORLD behind the few operations training needs: Python objects (allgather, bcast) and
    NumPy buffers (sendrecv, gather), plus abort (MPI_Abort: the launcher ends every rank). An exchange
    with a rank that has died raises PeerLost (mpi4py raises MPI.Exception; MPICH's message last)."""

    def __init__(self, comm=None):
        from mpi4py import MPI                                     # the dist extra
        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()

    def _exchange(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except self.MPI.Exception as e:
            lines = [x.strip() for x in str(e).splitlines() if x.strip()]
            raise PeerLost(lines[-1] if lines else str(e)) from None

    def allgather(self, obj) -> list:
        return self._exchange(self.comm.allgather, obj)

    def bcast(self, obj, root: int = 0):
        return self._exchange(self.comm.bcast, obj, root=root)

    def sendrecv(self, send: np.ndarray, dest: int, recv: np.ndarray, source: int) -> None:
        self._exchange(self.comm.Sendrecv, sendbuf=send, dest=dest, recvbuf=recv, source=source)

    def gather_array(self, part: np.ndarray, counts: list[int]) -> np.ndarray | None:
        """The ranks' 1-D parts, concatenated in rank order, on rank 0 (None elsewhere)."""
        out = np.empty(sum(counts), part.dtype) if self.rank == 0 else None
        self._exchange(self.comm.Gatherv, part, [out, counts] if self.rank == 0 else None, root=0)
        return out

    def abort(self, code: int) -> None:
        self.comm.Abort(code)


def world_size_from_env(environ=os.environ) -> int:
    """How many ranks the MPI launcher started (1 when not under mpiexec)."""
    for var in _SIZE_VARS:
        if environ.get(var, "").isdigit():
            return int(environ[var])
    return 1


def world_comm():
    """This process's communicator: MPI's COMM_WORLD when started by mpiexec with N > 1 ranks (ImportError
    with the install line when mpi4py is missing), else LocalComm."""
    if world_size_from_env() > 1:
        try:
            return MPIComm()
        except ImportError:
            raise ImportError("this process was started by mpiexec with several ranks but mpi4py is not "
                              "installed; pip install -e '.[dist]' (mpi4py and mpich)") from None
    return LocalComm()


# ------------------------------------------------------------------------------------- the ring


def ring_reduce_scatter(comm, flat: np.ndarray, chunks: list[tuple[int, int]]) -> None:
    """Sum `flat` over the ranks, in place, for this rank's own chunk only: afterwards flat[chunks[r]] on rank
    r is the sum over every rank. N - 1 steps; in step s rank r sends chunk (r - s - 1) mod N to rank r + 1
    and adds the chunk (r - s - 2) mod N it receives from rank r - 1 into its own copy. Each chunk's sum
    starts at rank c + 1 and goes once round the ring, the same order on every run: bits are reproducible.
    Each rank sends (N - 1)/N of the vector."""
    r, n = comm.rank, comm.size
    longest = max(b - a for a, b in chunks)
    recv = np.empty(longest, flat.dtype)
    for s in range(n - 1):
        sa, sb = chunks[(r - s - 1) % n]
        ra, rb = chunks[(r - s - 2) % n]
        comm.sendrecv(flat[sa:sb], (r + 1) % n, recv[:rb - ra], (r - 1) % n)
        flat[ra:rb] += recv[:rb - ra]


def ring_allgather(comm, flat: np.ndarray, chunks: list[tuple[int, int]]) -> None:
    """Every rank's own chunk copied to every rank, in place: N - 1 steps, in step s rank r passes chunk
    (r - s) mod N to rank r + 1. Each rank sends (N - 1)/N of the vector."""
    r, n = comm.rank, comm.size
    for s in range(n - 1):
        sa, sb = chunks[(r - s) % n]
        ra, rb = chunks[(r - s - 1) % n]
        comm.sendrecv(flat[sa:sb], (r + 1) % n, flat[ra:rb], (r - 1) % n)


def ring_allreduce(comm, flat: np.ndarray, chunks: list[tuple[int, int]]) -> None:
    """The sum over ranks of `flat`, in place, the same bits on every rank: reduce-scatter, then
    all-gather. Each rank sends and receives 2 (N - 1)/N of the vector (docs/data-parallel.md)."""
    ring_reduce_scatter(comm, flat, chunks)
    ring_allgather(comm, flat, chunks)
