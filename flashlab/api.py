"""flash_attention / flash_attention_backward: one entry point for every implementation.

NumPy arrays run the references (flashlab.reference); CuPy arrays run a CUDA kernel
(flashlab.cuda_kernel_ops). Mixing the two is an error that says which argument to move.

kernel="auto" picks, for CuPy arrays: "tc" (tensor cores) for float16 / bfloat16 on a GPU of
compute capability 8.0 or newer and a head dim it has; "fa2" for float32 (or "fa1" where fa2 has
no tile for the head dim). float16 / bfloat16 on an older GPU run fa2 on float32 copies, with a
warning the first time. For NumPy arrays "auto" is tc's step-through for float16 / bfloat16 at
tc's head dims, else fa2's (in the inputs' dtype).

lse (return_lse=True) is float32, except for float64 NumPy inputs, whose lse stays float64: the
float64 references are the oracle, and a float32 lse would hold their gradients to about 1e-7.

Arguments are checked before anything reads them: q, k, v (do, o, lse) must be NumPy or CuPy
arrays, causal and return_lse True or False, softmax_scale None or a finite real number > 0,
kernel one of KERNEL_NAMES; each error names the argument.
"""
from __future__ import annotations

import reprlib
import warnings

import numpy as np

from . import lowp
from . import reference as ref
from .checks import check_array_type, check_backward, check_flag, check_qkv

KERNEL_NAMES = ("auto", "naive", "fa1", "fa2", "tc")
LOWP = lowp.LOWP_DTYPES
_REF_FORWARD = {"naive": ref.naive_attention, "fa1": ref.fa1_forward, "fa2": ref.fa2_forward,
                "tc": ref.tc_forward}
_REF_BACKWARD = {"fa1": ref.fa1_backward, "fa2": ref.fa2_backward, "tc": ref.tc_backward}
_warned_fallback = False


def _is_cupy(x) -> bool:
    return type(x).__module__.startswith("cupy")


def _check_kernel(kernel) -> None:
    if not isinstance(kernel, str):
        raise TypeError(f"kernel must be a str, one of {', '.join(KERNEL_NAMES)}; got "
                        f"{reprlib.repr(kernel)} ({type(kernel).__name__})")
    if kernel not in KERNEL_NAMES:
        raise ValueError(f"kernel must be one of {', '.join(KERNEL_NAMES)}, got {reprlib.repr(kernel)}")


_LAYOUTS = {"lse": "(B, H, N)"}  # the others: (B, H, N, d)


def _route(kernel: str, arrays: dict) -> bool:
    """True for the GPU path. Checks the kernel name, that every input is an array (before
    resolve_kernel reads q.dtype) and that they are all NumPy or all CuPy."""
    _check_kernel(kernel)
    for name, x in arrays.items():
        check_array_type(name, x, _LAYOUTS.get(name, "(B, H, N, d)"))
    kinds = {name: _is_cupy(x) for name, x in arrays.items()}
    if len(set(kinds.values())) > 1:
        gpu = [n for n, c in kinds.items() if c]
        cpu = [n for n, c in kinds.items() if not c]
        raise TypeError(f"{', '.join(gpu)} are CuPy arrays but {', '.join(cpu)} are not: pass all "
                        "inputs as CuPy arrays (GPU kernels) or all as NumPy (references)")
    return any(kinds.values())


def _fp32_kernel(q) -> str:
    from .cuda_kernel_ops import FA2_HEAD_DIMS

    return "fa2" if q.ndim == 4 and q.shape[-1] in FA2_HEAD_DIMS else "fa1"


def resolve_kernel(kernel: str, q) -> str:
    """"auto" -> the fastest correct kernel for q (CuPy: this GPU, q's dtype and head dim).

    float16 / bfloat16: "tc" where it runs (compute capability >= 8.0, head dim in
    TC_HEAD_DIMS), else the float32 kernel (the caller upcasts). float32: "fa2", else "fa1".
    """
    _check_kernel(kernel)
    check_array_type("q", q)
    return _resolve(kernel, q)


def _resolve(kernel: str, q) -> str:
    """resolve_kernel for checked arguments."""
    if kernel != "auto":
        return kernel
    from . import cuda_kernel_ops as ops

    if not _is_cupy(q):  # the references: tc's twin where the kernel would run, else fa2's
        lowp_tc = q.dtype.name in LOWP and q.ndim == 4 and q.shape[-1] in ops.TC_HEAD_DIMS
        return "tc" if lowp_tc else "fa2"
    if q.dtype.name not in LOWP:
        return _fp32_kernel(q)

    cc = int(ops.device_limits(q.device.id)["compute_capability"])
    if cc >= ops.TC_MIN_CC and q.ndim == 4 and q.shape[-1] in ops.TC_HEAD_DIMS:
        return "tc"
    return _fp32_kernel(q)


def _fallback(kernel: str, q, why_cc: bool) -> None:
    """Say once per process that 16-bit inputs run a float32 kernel on upcast copies."""
    global _warned_fallback
    if _warned_fallback:
        return
    _warned_fallback = True
    from . import cuda_kernel_ops as ops

    reason = (f"this GPU has compute capability "
              f"{ops.device_limits(q.device.id)['compute_capability']} (tc needs 8.0+)" if why_cc
              else f"kernel 'tc' has no head dim {q.shape[-1]} (it has "
                   f"{', '.join(map(str, ops.TC_HEAD_DIMS))})")
    warnings.warn(f"flash_attention(kernel='auto'): {q.dtype.name} inputs run kernel {kernel!r} "
                  f"on float32 copies because {reason}; outputs are cast back to {q.dtype.name}",
                  stacklevel=3)


def _gpu_lowp_fallback(kernel: str, q) -> bool:
    """True when 'auto' sent 16-bit CuPy inputs to a float32 kernel (and warns, once)."""
    if q.dtype.name not in LOWP or kernel == "tc":
        return False
    from . import cuda_kernel_ops as ops

    cc = int(ops.device_limits(q.device.id)["compute_capability"])
    _fallback(kernel, q, why_cc=cc < ops.TC_MIN_CC)
    return True


def _check_tc_head_dim(q) -> None:
    """kernel="tc" on NumPy arrays: the step-through's default tiles are the kernel's, which
    exist for TC_HEAD_DIMS only (flash_attention cannot take the Br, Bc the reference would need)."""
    from .cuda_kernel_ops import TC_HEAD_DIMS

    d = q.shape[-1] if q.ndim == 4 else None
    if d is None or d in TC_HEAD_DIMS:
        return  # a wrong rank: check_qkv says so
    tiles = (f"; for the step-through at d = {d} call flashlab.reference.tc_forward / tc_backward "
             "with Br=, Bc= (multiples of 16)" if d % 16 == 0 else "")
    raise ValueError(f"head_dim {d} is not supported by kernel 'tc' (supported: "
                     f"{', '.join(map(str, TC_HEAD_DIMS))}): use kernel='auto' or kernel='fa2' "
                     f"(the NumPy references take any head dim), or pad the head dim{tiles}")


def _lse_out(lse):
    """The NumPy path's lse: float32 as the kernels', float64 kept for float64 inputs."""
    return lse if lse.dtype == np.float64 else lse.astype(np.float32, copy=False)


def flash_attention(q, k, v, causal=False, softmax_scale=None, kernel="auto", return_lse=False):
    """Attention softmax(tau q k^T) v over (B, H, N, d) arrays.

    kernel: "naive" (A0), "fa1" (A1), "fa2" (F2), "tc" (F2 on tensor cores: float16 or
    bfloat16 inputs, sm_80+, head dims 32, 64, 128) or "auto" (see the module docstring). CuPy
    arrays run the CUDA kernel; NumPy arrays run the matching reference in their own dtype.
    softmax_scale: tau, None for 1/sqrt(d), else a finite real number > 0. Returns o (q's dtype),
    or (o, lse) with return_lse=True: lse (B, H, Nq), what flash_attention_backward needs, is
    float32, or float64 for float64 NumPy inputs.
    """
    check_flag("return_lse", return_lse)
    if _route(kernel, {"q": q, "k": k, "v": v}):
        from . import cuda_kernel_ops as ops

        name = _resolve(kernel, q)
        if kernel == "auto" and name != "tc" and q.dtype.name in LOWP:
            # checked before the fallback's warning, and before the copies hide a dtype mismatch
            check_qkv(q, k, v, causal, softmax_scale)
            _gpu_lowp_fallback(name, q)
            o, lse = ops.forward(name, *(lowp.to_float32(x) for x in (q, k, v)), causal,
                                 softmax_scale)
            o = lowp.from_float32(o, q.dtype.name)
        else:
            o, lse = ops.forward(name, q, k, v, causal, softmax_scale)
    else:
        name = _resolve(kernel, q)
        if name == "tc":
            _check_tc_head_dim(q)
        o, lse = _REF_FORWARD[name](q, k, v, causal, softmax_scale)
        o, lse = o.astype(q.dtype, copy=False), _lse_out(lse)  # naive promotes bfloat16
    return (o, lse) if return_lse else o


def flash_attention_backward(do, q, k, v, o, lse, causal=False, softmax_scale=None, kernel="auto"):
    """Gradients (dq, dk, dv) of sum(do * o) for o = flash_attention(q, k, v), in q's dtype.

    do, o: like q; lse (B, H, Nq): flash_attention's, any float dtype (float32 as it returns it,
    or float64 for float64 NumPy inputs). Arguments as flash_attention's.
    """
    arrays = {"do": do, "q": q, "k": k, "v": v, "o": o, "lse": lse}
    if _route(kernel, arrays):
        from . import cuda_kernel_ops as ops

        name = _resolve(kernel, q)
        if kernel == "auto" and name != "tc" and q.dtype.name in LOWP:
            check_backward(do, q, k, v, o, lse, causal, softmax_scale)
            _gpu_lowp_fallback(name, q)
            f32 = [lowp.to_float32(x) for x in (do, q, k, v, o)]
            grads = ops.backward(name, *f32, lse, causal, softmax_scale)
            return tuple(lowp.from_float32(g, q.dtype.name) for g in grads)
        return ops.backward(name, do, q, k, v, o, lse, causal, softmax_scale)
    if kernel == "naive":  # A0's backward recomputes P: o and lse are checked, not read
        check_backward(do, q, k, v, o, lse, causal, softmax_scale)
        grads = ref.naive_attention_backward(do, q, k, v, causal, softmax_scale)
        return tuple(g.astype(q.dtype, copy=False) for g in grads)  # bfloat16 comes back float32
    name = _resolve(kernel, q)
    if name == "tc":
        _check_tc_head_dim(q)
    return _REF_BACKWARD[name](do, q, k, v, o, lse, causal, softmax_scale)


def available_kernels() -> list[str]:
    """Kernels that run on CuPy arrays here; [] without CuPy or a GPU (NumPy always works)."""
    from .cuda_kernel_ops import available_kernels as avail

    return avail()
