"""Data-parallel training over MPI: one process ("rank") per share of the machines' cores,
each with the whole model and its shard of the data; after each step's backward the ranks'
gradients are summed in place, so every rank takes the same optimizer step.

    mpiexec -n 4 python train.py          # one machine, or several with -hosts / a hostfile
    srun --ntasks-per-node=2 python train.py

``import ferrotune`` under such a launcher (more than one process) calls :func:`init`: it
joins ``mpi4py``'s ``COMM_WORLD`` (``pip install 'ferrotune[mpi]'`` brings mpi4py and, from
wheels, an MPI runtime; an mpi4py built against a cluster's own MPI works too), sets the
worker threads per rank to the cores of the node divided by the ranks on it
(``RAYON_NUM_THREADS``, unless set) before the Rust thread pool starts, and makes an uncaught
exception on any rank print that rank's traceback and abort the whole job (no rank is left
waiting in a collective). :class:`ferrotune.Trainer` then shards the data, sums the
gradients and saves from rank 0 only; a script written for one process runs unchanged.
Launched as one process, nothing here touches MPI.

For your own loop::

    from ferrotune import distributed as dist
    dist.init()
    for idx in batches_of(dist.shard(order)):       # this rank's examples
        n = dist.all_reduce_sum([count_tokens(batch)])[0]
        model.forward_backward(ids, labels=labels, num_items_in_batch=n)
        dist.all_reduce_gradients(model)            # summed in place: the global mean gradient
        optimizer.step(); model.zero_grad()

The gradient of each rank is that of (its token losses) / (the step's token count over all
ranks), so the sum over ranks is the gradient of the token-mean loss of the global batch,
the same as one process on the whole batch (up to the order of the sums).
"""

from __future__ import annotations

import math
import os
import sys
import time
import traceback
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, TypeVar

import numpy as np

from ._core import ConfigError

__all__ = [
    "init",
    "rank",
    "world_size",
    "local_rank",
    "local_world_size",
    "is_main_process",
    "barrier",
    "wait",
    "agree_on_stop",
    "all_gather_u64",
    "all_reduce_sum",
    "all_reduce_gradients",
    "all_reduce_array",
    "gather",
    "shard",
    "GradientReducer",
]

T = TypeVar("T")

#: Environment variables in which launchers give the number of processes started
#: (MPICH/Hydra and PMI-based launchers, Open MPI, PMIx, Slurm's srun).
_LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_STEP_NUM_TASKS")

#: Gradient bytes per non-blocking all-reduce: consecutive blocks are merged until a bucket
#: holds at least this much (one GPT-2 124M block is 28 MB, so each is its own bucket).
BUCKET_BYTES = 4 << 20


class World(NamedTuple):
    rank: int
    size: int
    local_rank: int
    local_size: int
    # duplicates of COMM_WORLD (None for one process), one per purpose, so that ranks stopped
    # at different points by Ctrl-C cannot mismatch collectives: counts, barriers and gathers;
    # the gradient reductions; the interrupt's agreement
    comm: Any
    grad_comm: Any
    stop_comm: Any


_world: Optional[World] = None


def launched_size() -> int:
    """How many processes the launcher says it started (1 when not under one)."""
    sizes = [os.environ.get(v, "") for v in _LAUNCHER_SIZE_VARS]
    return max([int(s) for s in sizes if s.isdigit()] + [1])


def init() -> World:
    """Joins the MPI world when this process was started by ``mpiexec``/``srun`` as one of
    several (see the module docs); a single process gets a world of one. Idempotent."""
    global _world
    if _world is not None:
        return _world
    if launched_size() <= 1:
        _world = World(0, 1, 0, 1, None, None, None)
        return _world
    try:
        # mpi4py's default thread level (multiple): MPICH's progress thread
        # (MPIR_CVAR_ASYNC_PROGRESS=1) needs it
        from mpi4py import MPI
    except ImportError:
        raise ConfigError(
            f"this process was started by an MPI launcher as one of {launched_size()}, but mpi4py is not "
            "installed: pip install 'ferrotune[mpi]' (or start a single process)"
        ) from None
    world = MPI.COMM_WORLD
    if world.Get_size() != launched_size():
        raise ConfigError(
            f"the launcher started {launched_size()} processes but MPI sees a world of {world.Get_size()}: mpi4py's "
            "MPI is not the launcher's (use the mpiexec of the MPI mpi4py was built with; under Slurm, srun --mpi=pmi2 "
            "or pmix as the cluster's MPI needs)"
        )
    local = world.Split_type(MPI.COMM_TYPE_SHARED)
    _world = World(
        world.Get_rank(), world.Get_size(), local.Get_rank(), local.Get_size(), world.Dup(), world.Dup(), world.Dup()
    )
    local.Free()
    _default_threads(_world.local_size)
    sys.excepthook = _abort_on_uncaught
    return _world


def _default_threads(ranks_on_node: int) -> None:
    """RAYON_NUM_THREADS = the node's cores / its ranks (at least 1, at most the cores this
    process may run on), unless the user set it. Read when the Rust thread pool starts."""
    if "RAYON_NUM_THREADS" in os.environ:
        return
    cores = os.cpu_count() or 1
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    os.environ["RAYON_NUM_THREADS"] = str(max(1, min(allowed, cores // ranks_on_node)))


def _abort_on_uncaught(exc_type: Any, exc: BaseException, tb: Any) -> None:
    """sys.excepthook of a rank: its traceback, each line prefixed with the rank, then
    MPI_Abort, which ends every rank of the job (the others may be waiting for this one)."""
    w = init()
    if issubclass(exc_type, KeyboardInterrupt):
        sys.stderr.write(f"[rank {w.rank}] KeyboardInterrupt: stopping all {w.size} ranks\n")
        sys.stderr.flush()
        w.comm.Abort(130)
    text = "".join(traceback.format_exception(exc_type, exc, tb))
    sys.stderr.write("".join(f"[rank {w.rank}] {line}\n" for line in text.splitlines()))
    sys.stderr.write(f"[rank {w.rank}] aborting all {w.size} ranks\n")
    sys.stderr.flush()
    w.comm.Abort(1)


def rank() -> int:
    return init().rank


def world_size() -> int:
    return init().size


def local_rank() -> int:
    """This process's index among the ranks on its machine."""
    return init().local_rank


def local_world_size() -> int:
    return init().local_size


def is_main_process() -> bool:
    return init().rank == 0


def wait(requests: List[Any], timeout: Optional[float] = None) -> bool:
    """Waits for MPI requests by polling them (which also drives their progress), so that
    Ctrl-C (a KeyboardInterrupt) still reaches a rank waiting for the others; with
    ``timeout`` (seconds) gives up after it and returns False."""
    from mpi4py import MPI

    deadline = None if timeout is None else time.monotonic() + timeout
    while not MPI.Request.Testall(requests):
        if deadline is not None and time.monotonic() > deadline:
            return False
        time.sleep(0.0002)
    return True


def barrier(timeout: Optional[float] = None, _comm: Any = None) -> bool:
    """Waits for every rank; with ``timeout`` (seconds) gives up after it and returns False."""
    w = init()
    if w.size == 1:
        return True
    return wait([(_comm or w.comm).Ibarrier()], timeout)


def all_reduce_sum(values: Sequence[float]) -> List[float]:
    """The element-wise sums of ``values`` over the ranks (float64: counts stay exact)."""
    w = init()
    if w.size == 1:
        return [float(v) for v in values]
    from mpi4py import MPI

    buf = np.asarray(values, dtype=np.float64).copy()
    wait([w.comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM)])
    return buf.tolist()


def all_gather_u64(values: Sequence[int], timeout: Optional[float] = None, _comm: Any = None) -> Optional[np.ndarray]:
    """Every rank's ``values`` (integers in [0, 2**64)) as rows by rank; None when some rank
    did not arrive within ``timeout`` seconds."""
    w = init()
    mine = np.asarray(values, dtype=np.uint64)
    if w.size == 1:
        return mine[None, :]
    out = np.zeros((w.size, mine.size), dtype=np.uint64)
    return out if wait([(_comm or w.comm).Iallgather(mine, out)], timeout) else None


def agree_on_stop(values: Sequence[int], timeout: float) -> Optional[np.ndarray]:
    """:func:`all_gather_u64` among ranks that stopped (Ctrl-C) wherever they were, on a
    communicator of its own (the others may have stopped between two collectives)."""
    return all_gather_u64(values, timeout, init().stop_comm)


def gather(obj: T) -> List[T]:
    """Every rank's ``obj``, in rank order, on every rank (pickled: for metrics and predictions)."""
    w = init()
    return [obj] if w.size == 1 else list(w.comm.allgather(obj))


def _core_model(model: Any) -> Any:
    """The Rust model behind a ``ferrotune.Model`` (or a PeftModel wrapping one)."""
    while not hasattr(model, "grad_buffer"):
        model = model._core
    return model


def all_reduce_gradients(model: Any) -> None:
    """Sums ``model``'s gradients over the ranks, in place in its gradient buffer (blocking).
    Every rank must call it with the same model layout."""
    all_reduce_array(_core_model(model).grad_buffer())


def all_reduce_array(a: np.ndarray) -> None:
    """Sums a float32 array over the ranks, in place (blocking): what
    ``AdamW.backward_step(..., reduce_gradients=...)`` calls on each block's gradients."""
    w = init()
    if w.size > 1 and a.size:
        from mpi4py import MPI

        wait([w.grad_comm.Iallreduce(MPI.IN_PLACE, a, op=MPI.SUM)])


def shard(indices: Sequence[T]) -> List[T]:
    """This rank's share of ``indices``, as torch's ``DistributedSampler`` (drop_last=False):
    padded by repeating from the start to a multiple of the world size, then every
    ``world_size``-th item from position ``rank``. Every rank gets the same number of items;
    the ranks' shards interleaved give back ``indices`` (and the padding)."""
    w = init()
    items = list(indices)
    if w.size == 1 or not items:
        return items
    total = math.ceil(len(items) / w.size) * w.size
    padded = (items * math.ceil(total / len(items)))[:total]
    return padded[w.rank :: w.size]


class GradientReducer:
    """Sums a model's gradients over the ranks in place, overlapped with the backward.

    MPI moves a non-blocking reduction forward only inside MPI calls, so a bucket advances
    at each block boundary (the hook's ``Testall``) and while ``finish`` waits; with cores to
    spare, MPICH's progress thread (``MPIR_CVAR_ASYNC_PROGRESS=1``) moves it all the time.

    The gradient buffer's blocks are grouped into buckets (consecutive blocks, at least
    :data:`BUCKET_BYTES` each) in the order the backward finishes them (the last block
    first). :meth:`hook` is the ``on_block_done`` of the step's last backward: when the
    first block of a bucket is done the bucket's non-blocking all-reduce starts, and each
    call drives the pending ones. :meth:`finish`
    then reduces the rest (embeddings, final norm, heads, adapters: the tied embedding's
    gradient is written after the blocks) and waits for everything. Every rank issues the
    same buckets in the same order; :meth:`finish` alone (no hook ran) issues them all, so a
    rank whose backward did not call the hook still matches the others.
    """

    def __init__(self, model: Any) -> None:
        self._w = init()
        self._core = _core_model(model)
        used = [(l, a, b) for l, (a, b) in enumerate(self._core.block_grad_ranges()) if b > a]
        total = int(self._core.num_parameters(trainable_only=True))
        buckets: List[tuple] = []  # (start, end) in the gradient buffer, in issue order
        self._first_block: dict = {}  # block -> its bucket, for the block that completes one
        end = None
        for l, a, b in reversed(used):
            end = b if end is None else end
            if (end - a) * 4 >= BUCKET_BYTES or l == used[0][0]:
                self._first_block[l] = len(buckets)
                buckets.append((a, end))
                end = None
        # outside the blocks, reduced after the backward
        lo, hi = (used[0][1], used[-1][2]) if used else (0, 0)
        self.buckets = buckets + [(a, b) for a, b in ((0, lo), (hi, total)) if b > a]
        self._pending: List[Any] = []
        self._issued = 0
        self._buf: Optional[np.ndarray] = None

    def _issue_through(self, k: int) -> None:
        from mpi4py import MPI

        assert self._buf is not None
        while self._issued <= k:
            a, b = self.buckets[self._issued]
            self._pending.append(self._w.grad_comm.Iallreduce(MPI.IN_PLACE, self._buf[a:b], op=MPI.SUM))
            self._issued += 1

    def begin(self) -> Callable[[int], None]:
        """Starts a step's reduction; returns the hook for its last backward."""
        self._buf = self._core.grad_buffer()
        self._pending, self._issued = [], 0
        return self.hook

    def hook(self, block: int) -> None:
        from mpi4py import MPI

        k = self._first_block.get(block)
        if k is not None:
            self._issue_through(k)
        if self._pending:
            MPI.Request.Testall(self._pending)

    def finish(self) -> None:
        """Issues what is left and waits for every bucket: the gradients are then the sums."""
        if self._buf is None:
            self.begin()
        self._issue_through(len(self.buckets) - 1)
        wait(self._pending)
        self._pending, self._buf = [], None
