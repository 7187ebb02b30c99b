"""Ring attention (context parallelism): a sequence split over P ranks, key/value blocks passed
round the ring, partial outputs merged by their logsumexp -- Algorithm 1 with ranks as tiles.

    schedule      the split (contiguous, or zigzag for causal) and the ring's steps, a table
    algorithm     ring_forward / ring_backward for one rank, over any transport and local kernel
    transport     PipeRing (multiprocessing pipes, NumPy), TorchRing (torch.distributed:
                  gloo, or NCCL on GPUs); run_on_pipes starts a ring of processes on one machine,
                  run_in_threads one of threads

Tested on CPUs against the float64 oracle (tests/test_ring.py: pipes always, gloo where torch
is installed). The NCCL path with flashlab's GPU kernels has not run on GPUs yet.
"""
from .algorithm import NumpyOps, TorchOps, forward_backward, ring_backward, ring_forward
from .schedule import chunks_of, describe, schedule, shard, unshard
from .transport import PipeRing, TorchRing, run_in_threads, run_on_pipes

__all__ = ["ring_forward", "ring_backward", "forward_backward", "NumpyOps", "TorchOps", "schedule", "describe",
           "chunks_of", "shard", "unshard", "PipeRing", "TorchRing", "run_on_pipes",
           "run_in_threads"]
