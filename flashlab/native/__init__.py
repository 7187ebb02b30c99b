"""flashlab.torch's C++ launch path (attention.cpp beside this file), built at run time.

A call flashlab.torch has prepared (flashlab.launch.prepared.Prepared: compiled kernels, plan,
constants) becomes a `Plan` of the extension: per launch the CUDA function handle, grid, block,
shared memory, which of the call's buffers goes in each pointer argument, and the constants'
bytes. `attention(q, k, v, fwd, bwd)` then runs a call with no Python in it: an autograd node
in C++ (torch's engine runs its backward without taking the GIL), outputs from torch's
allocator, launches through the driver's cuLaunchKernel on torch's current stream.

The extension is compiled once per source and torch version (torch.utils.cpp_extension.
load_inline, cached under torch's extensions directory; about a minute the first time). It
needs a C++ compiler and ninja, not the CUDA toolkit: kernels are launched by handle, and the
driver functions' addresses (cuLaunchKernel, cuCtxGetCurrent, cuCtxSetCurrent) come from the
driver library Python loads. `module()` returns None where it cannot be built (the reason in
`why_not()`); flashlab.torch then runs the same calls from Python. FLASHLAB_TORCH_NATIVE=0
turns it off.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib
import os
import sys
import warnings
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).with_name("attention.cpp")
FORWARD_BUFFERS = ("q", "k", "v", "o", "lse")
BACKWARD_BUFFERS = ("do", "q", "k", "v", "o", "lse", "dq", "dk", "dv")  # then workspace parts

_state: dict = {}  # "module": the extension or None, "why": why not; "driver": _driver()


def why_not() -> str | None:
    """Why module() is None (after it was called), or None."""
    return _state.get("why")


def module():
    """The built extension, or None (FLASHLAB_TORCH_NATIVE=0, no compiler or ninja, a failed
    build). Built on the first call; a failure is remembered, warned about once."""
    if "module" in _state:
        return _state["module"]
    mod, why = None, None
    if os.environ.get("FLASHLAB_TORCH_NATIVE", "1") == "0":
        why = "FLASHLAB_TORCH_NATIVE=0"
    else:
        try:
            mod = _build()
        except Exception as e:  # no compiler or ninja, a header this torch lacks
            why = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
            from ..install import install_hint

            warnings.warn(f"flashlab.torch: the C++ launch path did not build ({why}); calls run "
                          "from Python (more host time per call). It needs a C++ compiler and "
                          f"ninja ({install_hint('torch')}); FLASHLAB_TORCH_NATIVE=0 skips the "
                          "build.", RuntimeWarning, stacklevel=3)
    _state["module"], _state["why"] = mod, why
    return mod


def _driver():
    """(addresses of cuLaunchKernel, cuCtxGetCurrent, cuCtxSetCurrent; cuCtxGetCurrent)."""
    lib = ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
    get = lib.cuCtxGetCurrent
    get.argtypes, get.restype = [ctypes.POINTER(ctypes.c_void_p)], ctypes.c_int
    return [ctypes.cast(f, ctypes.c_void_p).value
            for f in (lib.cuLaunchKernel, get, lib.cuCtxSetCurrent)], get


def current_context() -> int:
    """The calling thread's current CUDA context (0 if none): where CuPy loaded the kernels."""
    if "driver" not in _state:
        _state["driver"] = _driver()
    ctx = ctypes.c_void_p()
    return (ctx.value or 0) if _state["driver"][1](ctypes.byref(ctx)) == 0 else 0


def _build():
    torch = importlib.import_module("torch")
    from torch.utils import cpp_extension

    text = SOURCE.read_text()
    tag = hashlib.sha256((text + torch.__version__).encode()).hexdigest()[:12]
    name = f"flashlab_native_{tag}"
    print(f"flashlab.torch: building its C++ launch path ({SOURCE.name}, once per source and "
          f"torch version; cached as {name})", file=sys.stderr, flush=True)
    return cpp_extension.load_inline(name=name, cpp_sources=[text], extra_cflags=["-O2"],
                                     with_cuda=False, verbose=False)


def const_bytes(c) -> bytes:
    """The bytes a kernel receives for a prepared call's constant argument `c`: a NumPy scalar
    or a Rows record, its bytes; a CuPy array (the trace slots' one-element stand-ins,
    launch/buffers.py, which the prepared call keeps alive), its device address."""
    if isinstance(c, (np.generic, np.ndarray)) and np.size(c) == 1:
        return np.asarray(c).tobytes()
    data = getattr(c, "data", None)
    if data is not None and isinstance(getattr(data, "ptr", None), int):  # a CuPy array
        return np.uint64(data.ptr).tobytes()
    raise TypeError(f"flashlab native: a constant argument of type {type(c).__name__}")


def plan(mod, call, buffers: tuple, do_strides=(), context: int | None = None):
    """The extension's Plan of prepared call `call` whose buffers, by index, are `buffers`
    (then the workspace parts in call.offsets' order). context: the CUDA context its kernels
    belong to, made current before each run where another is (None: the calling thread's)."""
    names = list(buffers) + list(call.offsets)
    steps = []
    for s in call.steps:
        slots, consts = s.split()
        steps.append((int(s.func.ptr), tuple(int(x) for x in s.grid),
                      tuple(int(x) for x in s.block), int(s.smem),
                      [names.index(n) for n in slots], [const_bytes(c) for c in consts]))
    if context is None:
        context = current_context()
    return mod.plan(_state["driver"][0], steps, [int(call.offsets[n]) for n in call.offsets],
                    int(call.workspace_bytes), [int(x) for x in do_strides], int(context),
                    f"{call.kernel} ({call.describe})")
