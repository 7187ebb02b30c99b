"""How blocks travel round the ring: each rank sends to rank + 1 and receives from rank - 1.

A transport has `rank`, `size` and `start(arrays) -> pending`: it starts sending the tuple
`arrays` to the next rank and returns at once; `pending.wait()` returns the tuple the previous
rank sent in its matching `start`. Starts and waits pair up in order, so a rank may have several
transfers in flight (the backward sends K, V before computing and dK, dV after).

- PipeRing: multiprocessing pipes between processes on one machine (`run_on_pipes` starts them;
  `run_in_threads`: the ranks as threads of one process, for notebooks), NumPy arrays; what CI
  runs, with no torch.
- TorchRing: torch.distributed point-to-point (`batch_isend_irecv`), gloo on CPUs or NCCL on GPUs,
  processes launched by torchrun or torch.multiprocessing. Keep NCCL's NVLink multicast off
  where the machine asks for it (NCCL_NVLS_ENABLE=0).
"""
from __future__ import annotations

import multiprocessing as mp
import queue
import threading
import traceback


class PipeRing:
    """A ring rank over multiprocessing pipes: to_next sends to rank + 1, from_prev receives
    from rank - 1. One sender thread keeps the sends in start order."""

    def __init__(self, rank: int, size: int, to_next, from_prev):
        self.rank, self.size = rank, size
        self._next, self._prev = to_next, from_prev
        self._outbox: queue.Queue = queue.Queue()
        self._sent = self._received = 0
        self._sender = threading.Thread(target=self._send_loop, daemon=True)
        self._sender.start()

    def _send_loop(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            self._next.send(item)

    def start(self, arrays: tuple) -> "_PipePending":
        self._outbox.put((self._sent, tuple(arrays)))
        self._sent += 1
        return _PipePending(self)

    def _receive(self) -> tuple:
        seq, arrays = self._prev.recv()
        if seq != self._received:  # a transfer out of order: a bug in the ring, not the data
            raise RuntimeError(f"rank {self.rank}: received transfer {seq}, expected "
                               f"{self._received}")
        self._received += 1
        return arrays

    def close(self) -> None:
        self._outbox.put(None)
        self._sender.join()


class _PipePending:
    def __init__(self, ring: PipeRing):
        self._ring = ring

    def wait(self) -> tuple:
        return self._ring._receive()


def _rank_main(fn, rank, size, to_next, from_prev, args, results) -> None:
    ring = PipeRing(rank, size, to_next, from_prev)
    try:
        results.put((rank, True, fn(ring, *args)))
    except BaseException:  # the parent raises it, naming the rank
        results.put((rank, False, traceback.format_exc()))
    finally:
        ring.close()


def run_on_pipes(fn, size: int, args_per_rank: list, timeout: float = 300.0) -> list:
    """fn(ring, *args_per_rank[r]) in `size` processes, one per rank, joined by pipes into a
    ring; returns their results in rank order. fn must be importable (a module-level function);
    an error in a rank is raised here with that rank's traceback."""
    if len(args_per_rank) != size:
        raise ValueError(f"args_per_rank has {len(args_per_rank)} entries for {size} ranks")
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    pipes = [ctx.Pipe(duplex=False) for _ in range(size)]  # pipe r: rank r - 1 -> rank r
    results = ctx.Queue()
    procs = [ctx.Process(target=_rank_main,
                         args=(fn, r, size, pipes[(r + 1) % size][1], pipes[r][0],
                               tuple(args_per_rank[r]), results), daemon=True)
             for r in range(size)]
    for p in procs:
        p.start()
    try:
        return _collect(results, size, timeout)
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()


def _collect(results, size: int, timeout: float) -> list:
    """The ranks' results from _rank_main, in rank order; a failed rank's traceback raised."""
    out = [None] * size
    for _ in range(size):
        rank, ok, value = results.get(timeout=timeout)
        if not ok:
            raise RuntimeError(f"ring rank {rank} failed:\n{value}")
        out[rank] = value
    return out


def run_in_threads(fn, size: int, args_per_rank: list, timeout: float = 300.0) -> list:
    """run_on_pipes with the ranks as threads of this process (the same pipes and PipeRing):
    for a notebook, where starting processes from the kernel is fragile; NumPy releases the GIL
    in its products, so the ranks still overlap."""
    if len(args_per_rank) != size:
        raise ValueError(f"args_per_rank has {len(args_per_rank)} entries for {size} ranks")
    pipes = [mp.Pipe(duplex=False) for _ in range(size)]
    results: queue.Queue = queue.Queue()
    threads = [threading.Thread(target=_rank_main, daemon=True,
                                args=(fn, r, size, pipes[(r + 1) % size][1], pipes[r][0],
                                      tuple(args_per_rank[r]), results))
               for r in range(size)]
    for t in threads:
        t.start()
    out = _collect(results, size, timeout)
    for t in threads:
        t.join(timeout=5)
    return out


class TorchRing:
    """A ring rank over torch.distributed (its default group, initialised by the caller):
    tensors go to rank + 1 and come from rank - 1 with batch_isend_irecv, so NCCL pairs each
    send with its receive without deadlock."""

    def __init__(self, group=None):
        import torch.distributed as dist

        self._dist, self._group = dist, group
        self.rank, self.size = dist.get_rank(group), dist.get_world_size(group)

    def start(self, tensors: tuple) -> "_TorchPending":
        import torch

        if self.size == 1:  # a ring of one: the block comes back to its sender
            return _TorchPending([], tuple(t.clone() for t in tensors), ())
        dist = self._dist
        nxt, prev = (self.rank + 1) % self.size, (self.rank - 1) % self.size
        sent = tuple(t.contiguous() for t in tensors)  # kept alive until wait
        bufs = tuple(torch.empty_like(t) for t in sent)
        ops = [dist.P2POp(dist.isend, t, nxt, self._group) for t in sent]
        ops += [dist.P2POp(dist.irecv, b, prev, self._group) for b in bufs]
        return _TorchPending(dist.batch_isend_irecv(ops), bufs, sent)


class _TorchPending:
    def __init__(self, requests, bufs, sent):
        self._requests, self._bufs, self._sent = requests, bufs, sent

    def wait(self) -> tuple:
        for r in self._requests:
            r.wait()
        return self._bufs
