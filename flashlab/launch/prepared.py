"""A call resolved once: its launches (kernel function, grid, block, shared memory and constant
arguments) kept per shape, so a repeated call only fills in its buffers and launches.

A launcher (tc.py) builds a `Prepared` from the plan, the compiled module and the sizes; the
next call with the same key runs `Prepared.run(buffers, stream)`, which puts the buffers (CuPy
arrays, or device pointers as ints: flashlab.torch passes torch's data_ptr()) before each
launch's constant arguments and calls the driver's launch directly
(cupy.cuda.function.Function, on `stream`). The constants are packed once into host memory
that CuPy passes by address (CPointer), so a run converts nothing but its buffers. Nothing is
allocated and nothing waits for the GPU, so a run can be captured in a CUDA graph. Scratch
memory a call needs is one workspace the caller allocates from its own allocator (torch's,
inside flashlab.torch) and hands over as `workspace` (Prepared.carve gives each part's
address). `rows` packs one operand's strides as the kernels' `struct Rows` (tc_blocks.cuh).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from operator import itemgetter

import numpy as np

from .compiler import function, set_smem
from .errors import KernelLaunchError

# kernels/tc_blocks.cuh's struct Rows { long long b, h; int n; }: 24 bytes, 8-aligned
ROWS_DTYPE = np.dtype({"names": ["b", "h", "n"], "formats": [np.int64, np.int64, np.int32]},
                      align=True)
assert ROWS_DTYPE.itemsize == 24
WORKSPACE_ALIGN = 256  # bytes between workspace parts, as cudaMalloc aligns
CACHE_MAX = 512  # prepared calls a launcher keeps (shapes that keep changing: start over)


def rows(strides) -> np.ndarray:
    """The kernel argument `Rows` for element strides (batch, head, row[, 1]) of one operand:
    a one-element NumPy record, which CuPy passes by value."""
    r = np.zeros(1, ROWS_DTYPE)
    r["b"], r["h"], r["n"] = strides[0], strides[1], strides[2]
    return r


class Slot(str):
    """A buffer's place in a launch's argument list: the name run() looks up. A step's slots
    come before its constants."""


@dataclass(frozen=True)
class Step:
    """One kernel launch of a prepared call. args: its arguments in order, Slot(name) for each
    buffer of the call first, then constants (NumPy scalars, Rows records, arrays that stay)."""

    func: object  # cupy.cuda.function.Function of the device the call was prepared on
    grid: tuple
    block: tuple
    smem: int
    args: tuple
    label: str = ""  # the kernel instance, for errors

    def split(self) -> tuple[tuple, tuple]:
        """(slot names, constants); a slot after a constant is a launcher's mistake."""
        n = 0
        while n < len(self.args) and isinstance(self.args[n], Slot):
            n += 1
        if any(isinstance(a, Slot) for a in self.args[n:]):
            raise ValueError(f"{self.label}: buffer slots must come before the constants")
        return tuple(str(a) for a in self.args[:n]), self.args[n:]


def cached(cache: dict, key, build) -> "Prepared":
    """cache[key], made by build() on a miss; a full cache starts over, never grows."""
    hit = cache.get(key)
    if hit is None:
        if len(cache) >= CACHE_MAX:
            cache.clear()
        hit = cache[key] = build()
    return hit


def kernel_step(mod, name: str, grid, block, args, smem: int) -> Step:
    """A Step of kernel `name` of compiled module `mod`: its function on the current device,
    opted in to `smem` bytes of dynamic shared memory."""
    raw = function(mod, name)
    set_smem(raw, smem)
    return Step(raw.kernel, grid, block, smem, args, name)


def _cupy_pointers():
    """(CPointer, CIntptr) of CuPy's kernel-argument module, or (None, None) without it (the
    tests' stand-in). Read from the `cupy` module in use (sys.modules), not by importing
    cupy.cuda.function: where real CuPy was imported before the tests' stand-in replaced it
    (a GPU machine running the whole suite), that import would find the real submodule."""
    cp = sys.modules.get("cupy")
    if cp is None:
        try:
            import cupy as cp
        except ImportError:
            return None, None
    function = getattr(getattr(cp, "cuda", None), "function", None)
    if function is None and getattr(cp, "__file__", None):  # a real CuPy that did not expose it
        try:
            from cupy.cuda import function
        except (ImportError, AttributeError):
            return None, None
    return getattr(function, "CPointer", None), getattr(function, "CIntptr", None)


def _by_address(consts: tuple) -> tuple:
    """(the constants as CuPy's CPointer to host memory holding their bytes, which the driver
    copies when the launch is made; the host arrays and CuPy arrays they keep alive). NumPy
    scalars and records become their bytes, a CuPy array its device address. Without CuPy's
    argument module (tests' stand-in) the constants are kept as given."""
    CPointer, _ = _cupy_pointers()
    if CPointer is None:
        return consts, ()
    out, keep = [], []
    for c in consts:
        if isinstance(c, (np.generic, np.ndarray)):
            host = np.array(c).reshape(1)  # a copy of its bytes that lives with the call
        elif hasattr(c, "data") and hasattr(c.data, "ptr"):  # a CuPy array: its address
            host = np.array([c.data.ptr], np.uint64)
            keep.append(c)
        else:
            out.append(c)
            continue
        keep.append(host)
        out.append(CPointer(host.ctypes.data))
    return tuple(out), tuple(keep)


class Prepared:
    """A call's launches in order, and the workspace they share: parts name -> bytes, which the
    caller allocates as one buffer of workspace_bytes and passes with run(workspace=pointer)."""

    def __init__(self, kernel: str, steps, workspace: dict | None = None, describe: str = ""):
        self.kernel = kernel
        self.steps = tuple(steps)
        self.describe = describe
        self.offsets, at = {}, 0
        for name, nbytes in (workspace or {}).items():
            self.offsets[name] = at
            at += -(-int(nbytes) // WORKSPACE_ALIGN) * WORKSPACE_ALIGN
        self.workspace_bytes = at
        plan, self._keep = [], []
        for s in self.steps:
            names, consts = s.split()
            packed, keep = _by_address(consts)
            self._keep.append(keep)
            get = itemgetter(*names) if len(names) > 1 else (lambda b, n=names[0]: (b[n],))
            plan.append((s.func, s.grid, s.block, s.smem, get, packed))
        self._plan = tuple(plan)
        self._intptr = _cupy_pointers()[1]  # an int buffer passed as intptr_t, no conversion

    def carve(self, base: int) -> dict:
        """name -> device address of each workspace part, in a buffer starting at `base`."""
        return {name: base + off for name, off in self.offsets.items()}

    def run(self, bufs: dict, stream=None, workspace: int | None = None,
            pointers: bool = False) -> None:
        """Launch every step on `stream` (an object with the stream handle as .ptr; None: CuPy's
        current stream) with `bufs` (name -> CuPy array or device address) as the buffers, and
        the workspace parts carved from `workspace` (a device address, workspace_bytes long).
        pointers: every buffer is a device address (an int), passed without conversion."""
        if self.offsets:
            if workspace is None:
                raise ValueError(f"prepared {self.kernel} call needs a workspace of "
                                 f"{self.workspace_bytes} bytes")
            bufs = {**bufs, **self.carve(workspace)}
        intptr = self._intptr if pointers else None
        try:
            for func, grid, block, smem, get, consts in self._plan:
                ptrs = get(bufs)
                if intptr is not None:  # device addresses as intptr_t, not Python scalars
                    ptrs = tuple(map(intptr, ptrs))
                func(grid, block, ptrs + consts, smem, stream)
        except KeyError as e:
            raise KeyError(f"prepared {self.kernel} call needs buffer {e.args[0]!r}") from None
        except Exception as e:
            raise KernelLaunchError(f"kernel {self.kernel!r} failed to launch ({self.describe}): "
                                    f"{e}") from e


class StreamPtr:
    """A stream handle as CuPy's launch reads it (.ptr), without a cupy.cuda.Stream object."""

    __slots__ = ("ptr",)

    def __init__(self, ptr: int):
        self.ptr = ptr
