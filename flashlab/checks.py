"""Input checks shared by the references and the kernel launchers.

Every error names the argument, what was passed and what is allowed, so a student never meets an
IndexError from deep inside a loop nest.
"""
from __future__ import annotations

import math
import numbers
import reprlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Dims:
    """The sizes of one attention call (layout (B, H, N, d), as PyTorch's SDPA)."""

    B: int
    H: int
    Nq: int
    Nk: int
    d: int
    scale: float  # tau, the softmax scale
    causal: bool
    Hkv: int = 0  # key/value heads where they are fewer than H (GQA, gqa=True checks); 0: H

    @property
    def kv_heads(self) -> int:
        return self.Hkv or self.H


def is_array(x) -> bool:
    """True for a NumPy array or a CuPy one (told by its type's module: CuPy is never imported)."""
    return isinstance(x, np.ndarray) or (
        type(x).__module__.startswith("cupy") and hasattr(x, "shape") and hasattr(x, "dtype"))


def _type_name(x) -> str:
    """list, str, torch.Tensor, ...: the type as a user would write it."""
    t = type(x)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__.split('.')[0]}.{t.__name__}"


def _repr(value) -> str:
    """repr, shortened (a 400-digit int, a long string) to fit an error message."""
    return reprlib.repr(value)


def check_array_type(name: str, x, layout: str = "(B, H, N, d)") -> None:
    """TypeError naming `name` unless x is a NumPy or CuPy array (lists and tuples are not)."""
    if is_array(x):
        return
    if isinstance(x, (list, tuple)):
        hint = f": convert it first, e.g. np.asarray({name})"
    elif type(x).__module__.startswith("torch"):
        hint = (": flashlab.torch.flash_attention takes torch CUDA tensors, or convert with "
                f"cupy.from_dlpack({name}) / {name}.numpy()")
    else:
        hint = ""
    raise TypeError(f"{name} must be a NumPy or CuPy array of shape {layout}, got {_type_name(x)}"
                    f"{hint}")


def check_flag(name: str, value) -> bool:
    """causal, return_lse: True or False (NumPy's bool too); never a string or a number."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {_repr(value)} ({_type_name(value)})")
    return bool(value)


def _shape(x, name: str, layout: str) -> tuple:
    check_array_type(name, x, layout)
    return tuple(int(s) for s in x.shape)


def _is_float_dtype(dtype) -> bool:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        return False
    # ml_dtypes' bfloat16 is a float NumPy does not list under np.floating
    return np.issubdtype(dt, np.floating) or dt.name == "bfloat16"


def check_array(name: str, x, rank: int = 4, layout: str = "(B, H, N, d)") -> tuple:
    """Check that `x` is a float array of the given rank; returns its shape."""
    shape = _shape(x, name, layout)
    if len(shape) != rank:
        raise ValueError(f"{name} must have rank {rank}, layout {layout}; got shape {shape}")
    if not _is_float_dtype(x.dtype):
        raise ValueError(
            f"{name} has dtype {x.dtype}; flashlab needs a floating dtype "
            f"(float16, bfloat16, float32 or float64): cast it first, e.g. {name}.astype('float32')"
        )
    return shape


def check_scale(softmax_scale, d: int) -> float:
    """tau in softmax(tau q k^T): None (1/sqrt(d)) or a real number (int, float, NumPy scalar;
    not bool, not str), finite and > 0. Zero (often 1 // math.sqrt(d)) and negative values are
    refused: they make attention uniform or favour the least similar keys."""
    if softmax_scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(softmax_scale, (bool, np.bool_)) or not isinstance(softmax_scale, numbers.Real):
        hint = ": pass float(softmax_scale)" if is_array(softmax_scale) else ""
        raise TypeError(f"softmax_scale must be a real number (int or float) or None, got "
                        f"{_repr(softmax_scale)} ({_type_name(softmax_scale)}){hint}")
    try:
        tau = float(softmax_scale)
    except OverflowError:  # an int past float's range
        tau = math.inf
    if not math.isfinite(tau) or tau <= 0.0:
        raise ValueError(f"softmax_scale must be finite and > 0 (None gives 1/sqrt(d) = "
                         f"{1.0 / math.sqrt(max(d, 1)):.4g}), got {_repr(softmax_scale)}")
    return tau


def check_qkv(q, k, v, causal=False, softmax_scale=None, gqa: bool = False) -> Dims:
    """Validate the forward inputs: q (B, H, Nq, d), k and v (B, H, Nk, d), one float dtype;
    gqa: k and v may have H_kv heads, H_kv dividing H (Dims.Hkv)."""
    sq = check_array("q", q)
    sk = check_array("k", k)
    sv = check_array("v", v)
    B, H, Nq, d = sq
    if B < 1 or H < 1:
        raise ValueError(f"q has shape {sq}: batch B and heads H must be >= 1")
    if Nq < 1:
        raise ValueError(f"q has N = {Nq} queries (shape {sq}); need N >= 1")
    if d < 1:
        raise ValueError(f"head dim d = {d} (q shape {sq}); need d >= 1")
    Hkv = sk[1] if gqa and sk[:2] == sv[:2] and sk[0] == B and sk[1] >= 1 and H % sk[1] == 0 \
        else H
    if sk[:2] != (B, Hkv) or sv[:2] != (B, Hkv):
        if gqa:
            raise ValueError(f"k and v must be (B, H_kv, Nk, d) with q's B and H_kv dividing q's "
                             f"H: got q {sq}, k {sk}, v {sv}")
        raise ValueError(
            f"q, k, v must share batch and heads (B, H): got q {sq}, k {sk}, v {sv}"
        )
    if sk[2] < 1:
        raise ValueError(f"k has N = {sk[2]} keys (shape {sk}); need N >= 1")
    if sk[2] != sv[2]:
        raise ValueError(f"k and v must have the same number of keys: got k {sk}, v {sv}")
    if sk[3] != d:
        raise ValueError(f"k head dim {sk[3]} differs from q head dim {d} (q {sq}, k {sk})")
    if sv[3] != d:
        raise ValueError(
            f"v head dim {sv[3]} differs from q head dim {d} (q {sq}, v {sv}); "
            "flashlab needs one head dim for q, k and v"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(
            f"q, k, v must share one dtype: got q {q.dtype}, k {k.dtype}, v {v.dtype}"
        )
    causal = check_flag("causal", causal)
    return Dims(B, H, Nq, sk[2], d, check_scale(softmax_scale, d), causal,
                Hkv if Hkv != H else 0)


def check_like(name: str, x, shape: tuple, dtype, what: str) -> None:
    """Check that an extra input (do, o, lse) has the shape and dtype the call implies."""
    got = _shape(x, name, f"{tuple(shape)} ({what})")
    if got != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} ({what}); got {got}")
    if x.dtype != dtype:
        raise ValueError(f"{name} has dtype {x.dtype}; expected {np.dtype(dtype)} to match q")


def check_backward(do, q, k, v, o, lse, causal=False, softmax_scale=None,
                   gqa: bool = False) -> Dims:
    """Validate backward inputs: do and o like q, lse (B, H, Nq)."""
    dims = check_qkv(q, k, v, causal, softmax_scale, gqa)
    qshape = (dims.B, dims.H, dims.Nq, dims.d)
    check_like("do", do, qshape, q.dtype, "the gradient of o, shaped like q")
    check_like("o", o, qshape, q.dtype, "the forward output, shaped like q")
    got = _shape(lse, "lse", f"{qshape[:3]} (B, H, Nq)")
    if got != qshape[:3]:
        raise ValueError(f"lse must have shape {qshape[:3]} (B, H, Nq); got {got}")
    if not _is_float_dtype(lse.dtype):
        raise ValueError(f"lse has dtype {lse.dtype}; it must be floating")
    return dims


def check_block(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)
