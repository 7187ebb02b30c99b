"""The CPU side of a launch: what flashlab.launch's launchers need from "the device" when the
inputs are NumPy arrays and the kernel runs on the CPU backend.

`xp` stands where CuPy stands on the GPU path (empty, full, float32, cuda.Device, ...), so the
launchers (flashlab/launch/fa1.py, ...) run unchanged; `setup` checks the inputs (NumPy,
contiguous, float32, a kernel whose CUDA C the CPU runs) and returns the Launch they share.
The CPU's "device" has a T4's shared memory (64 KB a block), so the tiles are the ones a
student's Colab GPU would run.
"""
from __future__ import annotations

import types

import numpy as np

from .. import registry
from ..checks import Dims
from ..launch.device import Launch, _check_sizes, check_head_dim

LIMITS = {"smem_optin": 64 * 1024, "smem_default": 48 * 1024, "sm_count": 1, "l2_bytes": 0,
          "compute_capability": "cpu"}


class _Device:
    """cupy.cuda.Device's stand-in: one device, id 0, a no-op context."""

    def __init__(self, device_id=None):
        self.id = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


xp = types.SimpleNamespace(
    empty=np.empty, full=np.full, zeros=np.zeros, asarray=np.asarray, ndarray=np.ndarray,
    float32=np.float32, float64=np.float64, int32=np.int32, int64=np.int64, nan=np.nan,
    cuda=types.SimpleNamespace(Device=_Device,
                               runtime=types.SimpleNamespace(getDevice=lambda: 0),
                               memory=types.SimpleNamespace(OutOfMemoryError=MemoryError)))


def on_host(arrays: dict) -> bool:
    """True when every input is a NumPy array (the CPU backend's inputs)."""
    return all(isinstance(x, np.ndarray) for x in arrays.values())


def check_runs_on_cpu(kernel: str) -> None:
    """A clear error for a kernel whose source only a GPU runs (tc)."""
    spec = registry.get(kernel)
    if not spec.cpu:
        raise ValueError(f"kernel {kernel!r} cannot run on the CPU backend: it uses "
                         f"{spec.cpu_why}, which only an NVIDIA GPU runs. On the CPU use "
                         f"kernel={' or '.join(repr(k) for k in registry.for_cpu())} (float32), "
                         "or the step-through (backend='reference')")


def check_host_inputs(kernel: str, arrays: dict) -> None:
    """NumPy, C-contiguous, float32 (what the CPU backend's kernels take), each error naming
    the argument and the fix."""
    check_runs_on_cpu(kernel)
    for name, x in arrays.items():
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name} is a {type(x).__module__}.{type(x).__name__}, but the other "
                            f"inputs are NumPy arrays: the CPU backend takes NumPy arrays "
                            f"(numpy.asarray({name}))")
        if x.dtype != np.float32:
            raise TypeError(f"{name} has dtype {x.dtype}; kernel {kernel!r} on the CPU takes "
                            f"float32: pass {name}.astype(numpy.float32)")
        if not x.flags.c_contiguous:
            raise ValueError(f"{name} is not contiguous (shape {x.shape}, strides {x.strides}); "
                             f"pass numpy.ascontiguousarray({name})")


def setup(spec, dims: Dims, arrays: dict, trace: bool) -> Launch:
    """Checks shared by every CPU launch of kernel `spec`; the Launch they share."""
    check_host_inputs(spec.name, arrays)
    check_head_dim(spec.name, dims.d)
    _check_sizes(spec.name, dims)
    if trace:
        spec.check_traceable()
    desc = (f"q {(dims.B, dims.H, dims.Nq, dims.d)}, k {(dims.B, dims.H, dims.Nk, dims.d)}, "
            f"causal={dims.causal}, scale={dims.scale:.4g}, on the CPU")
    return Launch(xp, 0, LIMITS, spec, dims, np.float32(dims.scale), np.int32(dims.causal), desc,
                  backend="cpu")
