"""The GPU side of a launch: CuPy, the device and its limits, and the checks on inputs
(CuPy validates nothing): type, device, contiguity, dtype, sizes, head dim, compute capability,
each error naming the argument and the fix. Importing this module does not need CuPy."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .. import registry
from ..checks import Dims


def _cupy():
    try:
        import cupy
    except ImportError as e:  # pragma: no cover - depends on the machine
        from ..install import install_hint
        raise RuntimeError(
            f"the CUDA kernels need CuPy: {install_hint('cuda13')} (or the cuda12 extra); "
            "NumPy inputs run the references without it") from e
    return cupy


def gpu_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def available_kernels() -> list[str]:
    """Names of the kernels that run on CuPy arrays on this machine ([] without a GPU): those
    whose lowest compute capability (registry) the current GPU has."""
    if not gpu_available():
        return []
    cp = _cupy()
    cc = int(device_limits(cp.cuda.Device().id)["compute_capability"])
    return [n for n, spec in registry.KERNELS.items() if cc >= spec.min_cc]


@lru_cache(maxsize=None)
def device_limits(device_id: int) -> dict:
    cp = _cupy()
    with cp.cuda.Device(device_id) as dev:
        attrs = dev.attributes
        cc = dev.compute_capability
    return {
        "smem_optin": int(attrs.get("MaxSharedMemoryPerBlockOptin", 48 * 1024)),
        "smem_default": 48 * 1024,
        "sm_count": int(attrs.get("MultiProcessorCount", 1)),
        "l2_bytes": int(attrs.get("L2CacheSize", 0)),
        "compute_capability": cc,
    }


_dtype_names: dict = {}


def _dtype_name(dtype) -> str:
    """np.dtype(dtype).name, remembered per dtype object (a launch asks 5-8 times; NumPy's name
    lookup is microseconds each)."""
    name = _dtype_names.get(dtype)
    if name is None:
        name = _dtype_names[dtype] = np.dtype(dtype).name
    return name


def _fp32_fallback() -> str:
    return registry.for_auto("float32")[0]


def check_device_inputs(kernel: str, names_arrays: dict, dtypes=None) -> int:
    """Every array is a CuPy array on one device, of the dtype the kernel takes (float32; for a
    16-bit kernel float16 or bfloat16, one for all, lse float32), contiguous (or, for a kernel
    with row_strides, rows contiguous and 16-byte aligned: check_rows); returns the device id."""
    cp = _cupy()
    spec = registry.get(kernel)
    first_name, device = None, None
    dtypes = dtypes or {}
    for name, x in names_arrays.items():
        if not isinstance(x, cp.ndarray):
            raise TypeError(
                f"{name} is a {type(x).__module__}.{type(x).__name__}, but the other inputs are "
                f"CuPy arrays: pass all inputs as CuPy arrays (cupy.asarray({name})) or all as NumPy")
        if device is None:
            first_name, device = name, x.device.id
        elif x.device.id != device:
            raise ValueError(f"{name} is on GPU {x.device.id} but {first_name} is on GPU {device}: "
                             f"move them to one device ({name} = cupy.asarray({name}) "
                             f"inside `with cupy.cuda.Device({device}):`)")
        want = dtypes.get(name, ("float32",))
        if _dtype_name(x.dtype) not in want:
            if len(spec.dtypes) > 1 and name != "lse":
                raise TypeError(
                    f"{name} has dtype {x.dtype}; kernel {spec.describe()} takes "
                    f"{' or '.join(spec.dtypes)} with one dtype for every input: pass "
                    f"{name}.astype(cupy.{spec.dtypes[-1]}), or use kernel={_fp32_fallback()!r} "
                    "for float32")
            raise TypeError(f"{name} has dtype {x.dtype}; kernel {kernel!r} takes "
                            f"{' or '.join(want)}: pass {name}.astype(cupy.{want[0]})")
        if spec.row_strides and name != "lse":
            check_rows(spec.name, name, x)
        elif not x.flags.c_contiguous:
            raise ValueError(f"{name} is not contiguous (shape {x.shape}, strides {x.strides}); "
                             f"pass cupy.ascontiguousarray({name})")
        elif spec.align and name in ("q", "k", "v", "do") and x.data.ptr % spec.align:
            raise ValueError(f"{name} starts {x.data.ptr % spec.align} bytes past a "
                             f"{spec.align}-byte boundary (a view at an offset into another "
                             f"array); kernel {kernel!r} reads rows {spec.align} bytes at a time: "
                             f"pass {name}.copy()")
    return device


ROW_ALIGN = 16  # bytes: the kernels copy rows in 16-byte pieces (cp.async)


def check_rows(kernel: str, name: str, x) -> None:
    """A strided operand kernel `kernel` reads without a copy: the last dim contiguous, every
    stride non-negative, every row starting on 16 bytes (as a view of a packed qkv projection
    is). Else a ValueError naming `name`, its strides and the fix."""
    item = x.dtype.itemsize
    strides = x.strides
    ok = (strides[-1] == item or x.shape[-1] == 1) and all(s >= 0 for s in strides) \
        and all(s % ROW_ALIGN == 0 for s in strides[:-1]) and x.data.ptr % ROW_ALIGN == 0
    if not ok:
        raise ValueError(
            f"{name} (shape {x.shape}, strides {strides} bytes) is a view kernel {kernel!r} cannot "
            f"read in place: it takes the last dim contiguous and batch, head and row strides "
            f"that are non-negative multiples of {ROW_ALIGN} bytes, with the first row "
            f"{ROW_ALIGN}-byte aligned; pass cupy.ascontiguousarray({name})")


def _check_sizes(kernel: str, dims: Dims):
    if dims.B * dims.H > 65535:
        raise ValueError(f"B*H = {dims.B * dims.H} heads exceed the 65535 thread-block rows of "
                         f"kernel {kernel!r}; split the batch")
    if max(dims.Nq, dims.Nk) * dims.d >= 2**31:
        raise ValueError(f"N*d = {max(dims.Nq, dims.Nk) * dims.d} per head passes 2^31; "
                         f"kernel {kernel!r} indexes a head with 32-bit ints")


def check_head_dim(kernel: str, d: int):
    """A clear error where kernel `kernel` has no head dim d (registry: spec.takes_head_dim),
    saying what to do: the kernel with the most head dims, or auto's float32 kernels."""
    spec = registry.get(kernel)
    if spec.takes_head_dim(d):
        return
    widest = registry.get(registry.for_auto("float32")[-1])  # fa1: any d up to its max
    any_d = f"any d up to {widest.max_head_dim}"
    if spec.head_dims is None:
        raise ValueError(f"head_dim {d} is not supported by kernel {kernel!r} (d <= "
                         f"{spec.max_head_dim}); split the head")
    supported = f"head_dim {d} is not supported by kernel {kernel!r} (supported: " \
                f"{', '.join(map(str, spec.head_dims))})"
    if spec.takes_dtype("float32"):
        raise ValueError(f"{supported}; use kernel={widest.name!r} ({any_d}) or pad the head dim")
    runs = " or ".join(registry.for_auto("float32"))
    raise ValueError(f"{supported}; pad the head dim to one of those, or use kernel='auto' "
                     f"(runs {runs} on float32 copies), or kernel={widest.name!r} on float32 "
                     f"inputs ({any_d})")


@dataclass(frozen=True)
class Launch:
    """What every launch of one call shares: CuPy, the device and its limits, the kernel's
    registry entry, the sizes, tau and causal as the kernels take them, and a description of
    the call for error messages."""

    cp: object
    device: int
    limits: dict
    spec: object  # registry.KernelSpec
    dims: Dims
    tau: np.float32
    causal: np.int32
    desc: str
    backend: str = "cupy"  # launch.compiler's backend: "cupy" (the GPU) or "cpu" (flashlab.cpu)


def setup(spec, dims: Dims, arrays: dict, trace: bool) -> Launch:
    """Checks shared by every launch of kernel `spec`; returns the Launch they share."""
    first = _dtype_name(next(iter(arrays.values())).dtype)
    one = (first,) if first in spec.dtypes else spec.dtypes
    dtypes = {name: ("float32",) if name == "lse" else one for name in arrays}
    device = check_device_inputs(spec.name, arrays, dtypes)
    check_head_dim(spec.name, dims.d)
    if spec.min_cc:
        cc = int(device_limits(device)["compute_capability"])
        if cc < spec.min_cc:
            why = f" ({spec.min_cc_why})" if spec.min_cc_why else ""
            raise RuntimeError(f"kernel {spec.name!r} needs a GPU of compute capability "
                               f"{spec.min_cc // 10}.{spec.min_cc % 10} or newer{why}; this one is "
                               f"{cc // 10}.{cc % 10}: use kernel='auto' (falls back to "
                               f"{_fp32_fallback()} in float32)")
        short = spec.why_not(first, dims.d, cc) if first in spec.dtypes else ""
        if short:  # a variant runs here, not at this dtype / head dim (tc on a T4: float16)
            raise RuntimeError(f"kernel {spec.name!r} does not run {first} at head dim "
                               f"{dims.d} on this GPU: {short}; use kernel='auto' (falls back "
                               f"to {_fp32_fallback()} in float32)")
    _check_sizes(spec.name, dims)
    if trace:
        spec.check_traceable()
    desc = (f"q {(dims.B, dims.H, dims.Nq, dims.d)}, k {(dims.B, dims.H, dims.Nk, dims.d)}, "
            f"causal={dims.causal}, scale={dims.scale:.4g}")
    return Launch(_cupy(), device, device_limits(device), spec, dims, np.float32(dims.scale),
                  np.int32(dims.causal), desc)
