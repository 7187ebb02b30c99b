"""flash_attention / flash_attention_backward: one entry point for every implementation.

NumPy arrays run the references (flashlab.reference); CuPy arrays run a CUDA kernel
(flashlab.launch). Mixing the two is an error that says which argument to move.

backend= says where: "auto" (CuPy: the GPU; NumPy: the environment's FLASHLAB_BACKEND,
"reference" unless set), "reference" (the NumPy step-through), "cpu" (the CUDA C kernel
itself, compiled for the CPU by flashlab.cpu: NumPy in, NumPy out, no GPU needed; naive, fa1,
fa2 in float32) or "gpu" (CuPy arrays only). Which kernels
exist, what they take and which reference matches each is flashlab.registry's.

kernel="auto" picks, for CuPy arrays: "tc" (tensor cores) for float16 / bfloat16 on a GPU of
compute capability 8.0 or newer and a head dim it has (7.5: float16 at 64 and 128); "fa2" for float32 (or "fa1" where fa2 has
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

import os
import reprlib
import warnings

import numpy as np

from . import launch, lowp, registry
from .checks import check_array_type, check_backward, check_flag, check_qkv
from .launch import device
from .launch.plans import NoTileFits

KERNEL_NAMES = ("auto",) + registry.names()
BACKENDS = ("auto", "reference", "cpu", "gpu")
LOWP = lowp.LOWP_DTYPES
_warned_fallback = False
_warned_cpu_copies = False


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


def _where(backend, on_gpu: bool) -> str:
    """Where a call runs: "gpu", "cpu" (the CUDA C on the CPU) or "reference"."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got "
                         f"{reprlib.repr(backend)}")
    if backend == "auto":
        if on_gpu:
            return "gpu"
        env = os.environ.get("FLASHLAB_BACKEND", "reference") or "reference"
        if env not in ("reference", "cpu"):
            raise ValueError(f"FLASHLAB_BACKEND must be 'reference' or 'cpu', got {env!r}")
        return env
    if on_gpu and backend != "gpu":
        raise TypeError(f"backend={backend!r} takes NumPy arrays, but the inputs are CuPy arrays: "
                        "pass x.get() for each, or backend='gpu'")
    if not on_gpu and backend == "gpu":
        raise TypeError("backend='gpu' takes CuPy arrays: pass cupy.asarray(x) for each input, "
                        "or backend='cpu' to run the CUDA C kernel on the CPU")
    return backend


def _cpu_kernel(kernel: str, q) -> tuple[str, bool]:
    """(the kernel the CPU backend runs, whether on float32 copies): 'auto' is fa2 (fa1 where
    fa2 has no tile for the head dim), on float32 copies of other dtypes, with a warning once."""
    from .cpu.host import check_runs_on_cpu

    if kernel != "auto":
        check_runs_on_cpu(kernel)
        return kernel, False
    copies = q.dtype != np.float32
    if copies:
        global _warned_cpu_copies
        if not _warned_cpu_copies:
            _warned_cpu_copies = True
            warnings.warn(f"flash_attention(backend='cpu'): the CPU backend's kernels take "
                          f"float32; {q.dtype.name} inputs run on float32 copies and the outputs "
                          f"are cast back to {q.dtype.name}", stacklevel=3)
    return _fp32_kernel(q), copies


def _head_dim(q):
    return q.shape[-1] if q.ndim == 4 else None


def _fp32_kernel(q) -> str:
    """auto's float32 kernel: the fastest that has q's head dim, else the most general one
    (whose checks then say what to do): fa2, else fa1."""
    candidates = registry.for_auto("float32")
    fits = registry.for_auto("float32", _head_dim(q)) if _head_dim(q) is not None else ()
    return fits[0] if fits else candidates[-1]


def _lowp_kernel(q, compute_capability=None):
    """auto's kernel for 16-bit q (tc), where one takes its dtype and head dim (and runs on
    this compute capability), else None."""
    d = _head_dim(q)
    if q.dtype.name not in LOWP or d is None:
        return None
    fits = registry.for_auto(q.dtype.name, d, compute_capability)
    return fits[0] if fits else None


def resolve_kernel(kernel: str, q) -> str:
    """"auto" -> the fastest correct kernel for q (CuPy: this GPU, q's dtype and head dim).

    float16 / bfloat16: "tc" where it runs (compute capability 8.0+ at a head dim in
    TC_HEAD_DIMS; 7.5, a T4: float16 at head dims 64 and 128), else the float32 kernel (the
    caller upcasts, and warns once saying why). float32: "fa2", else "fa1".
    """
    _check_kernel(kernel)
    check_array_type("q", q)
    return _resolve(kernel, q)


def _resolve(kernel: str, q, direction: str = "forward") -> str:
    """resolve_kernel for checked arguments; direction: the pass about to run, whose tiles must
    fit this GPU's shared memory (tc's backward at d = 256 does not in 99 KB)."""
    if kernel != "auto":
        return kernel
    if not _is_cupy(q):  # the references: tc's twin where the kernel would run, else fa2's
        return _lowp_kernel(q) or registry.for_auto("float32")[0]
    if q.dtype.name not in LOWP:
        return _fp32_kernel(q)
    cc = int(device.device_limits(q.device.id)["compute_capability"])
    name = _lowp_kernel(q, cc)
    if name is not None and _no_room(name, q, direction):
        name = None
    return name or _fp32_kernel(q)


def _no_room(name: str, q, direction: str) -> str:
    """Why kernel `name`'s tiles for this pass do not fit q's GPU ("" where they do): the
    launcher's plan refuses them (plans.NoTileFits, naming the bytes)."""
    try:
        launch.launch_plan(name, q.device.id, _head_dim(q), direction)
    except NoTileFits as e:
        return e.why
    return ""


def _fallback(kernel: str, q, direction: str = "forward") -> None:
    """Say once per process that 16-bit inputs run a float32 kernel on upcast copies."""
    global _warned_fallback
    if _warned_fallback:
        return
    _warned_fallback = True
    cc = int(device.device_limits(q.device.id)["compute_capability"])
    spec = _lowp_spec(q)
    reason = spec.why_not(q.dtype.name, q.shape[-1], cc) or \
        f"the {direction} of {_no_room(spec.name, q, direction)}"
    warnings.warn(f"flash_attention(kernel='auto'): {q.dtype.name} inputs run kernel {kernel!r} "
                  f"on float32 copies because {reason}; outputs are cast back to {q.dtype.name}",
                  stacklevel=3)


def _lowp_spec(q):
    """The kernel that takes q's 16-bit dtype (tc), the one 'auto' fell back from."""
    return registry.get(registry.for_auto(q.dtype.name)[0])


def _runs_natively(kernel: str, q) -> bool:
    """The kernel takes q's dtype itself (no float32 copies)."""
    return registry.get(kernel).takes_dtype(q.dtype.name)


def _gpu_lowp_fallback(kernel: str, q, direction: str = "forward") -> bool:
    """True when 'auto' sent 16-bit CuPy inputs to a float32 kernel (and warns, once)."""
    if q.dtype.name not in LOWP or _runs_natively(kernel, q):
        return False
    _fallback(kernel, q, direction)
    return True


def _check_reference_head_dim(spec, q) -> None:
    """kernel="tc" on NumPy arrays: the step-through's default tiles are the kernel's, which
    exist for its tile tables' head dims only (flash_attention cannot take the Br, Bc the
    reference would need)."""
    dims = spec.reference_head_dims()
    d = _head_dim(q)
    if dims is None or d is None or d in dims:
        return  # a wrong rank: check_qkv says so
    fwd, bwd = (path.partition(":")[2] for path in spec.reference)
    tiles = (f"; for the step-through at d = {d} call flashlab.reference.{fwd} / {bwd} "
             "with Br=, Bc= (multiples of 16)" if d % 16 == 0 else "")
    raise ValueError(f"head_dim {d} is not supported by kernel {spec.name!r} (supported: "
                     f"{', '.join(map(str, dims))}): use kernel='auto' or "
                     f"kernel={registry.for_auto('float32')[0]!r} "
                     f"(the NumPy references take any head dim), or pad the head dim{tiles}")


def _lse_out(lse):
    """The NumPy path's lse: float32 as the kernels', float64 kept for float64 inputs."""
    return lse if lse.dtype == np.float64 else lse.astype(np.float32, copy=False)


def _variant(kernel, backend, arrays: dict, window, mask_mod, score_mod):
    """Where an attention variant (a window, a mod, or k and v with fewer heads than q: GQA)
    runs: None (the call has none), "reference" (the variant oracle, flashlab.reference.variants,
    on NumPy arrays with kernel 'auto' or the A0 baseline), "steps" (NumPy arrays and a kernel
    whose step-through takes variants: registry step_mods) or the name of the kernel that compiles
    it (a kernel whose registry entry has mods in a dtype it takes: fa2 on float32 CuPy arrays
    or on the CPU backend, tc on 16-bit CuPy arrays; 'auto' picks as it would without the
    variant). Anything else is an error that says what runs it."""
    q, k = arrays["q"], arrays["k"]
    gqa = getattr(q, "ndim", 0) == 4 and getattr(k, "ndim", 0) == 4 and q.shape[1] != k.shape[1]
    named = [n for n, x in (("window", window), ("mask_mod", mask_mod), ("score_mod", score_mod))
             if x is not None] + (["GQA (k, v with fewer heads than q)"] if gqa else [])
    if not named:
        return None
    what = ", ".join(named)
    where = _where(backend, _route(kernel, arrays))
    takes = [n for n, spec in registry.KERNELS.items() if spec.mods]
    if where != "reference":
        name = kernel if kernel != "auto" else _resolve(kernel, q) if where == "gpu" \
            else _fp32_kernel(q)
        why = (f"kernel {name!r} does not take them yet ({', '.join(takes)} do)"
               if name not in takes else
               f"kernel {name!r} takes {', '.join(registry.get(name).dtypes)} with variants, "
               f"not {q.dtype}" if not _runs_natively(name, q) else None)
        if why is None:
            return name
        raise ValueError(f"{what}: {why}; the float64-capable oracle runs every variant on NumPy "
                         f"arrays (backend='reference')")
    if kernel != "auto" and registry.get(kernel).step_mods:
        return "steps"
    if kernel != "auto" and not registry.get(kernel).baseline:
        base = next(n for n, spec in registry.KERNELS.items() if spec.baseline)
        steps = ", ".join(n for n, spec in registry.KERNELS.items() if spec.step_mods)
        raise ValueError(f"{what}: kernel {kernel!r} has no variants in its step-through yet "
                         f"(the step-throughs of {steps} take them); kernel={base!r} (or 'auto') "
                         f"runs them on NumPy arrays: A0 with the variant, S materialised")
    return "reference"


def flash_attention(q, k, v, causal=False, softmax_scale=None, kernel="auto", return_lse=False,
                    backend="auto", *, window=None, mask_mod=None, score_mod=None):
    """Attention softmax(tau q k^T) v over (B, H, N, d) arrays.

    kernel: "naive" (A0), "fa1" (A1), "fa2" (F2), "tc" (F2 on tensor cores: float16 or
    bfloat16 inputs, sm_80+, head dims 32, 64, 96, 128, 256) or "auto" (see the module docstring). CuPy
    arrays run the CUDA kernel; NumPy arrays run the matching reference in their own dtype.
    softmax_scale: tau, None for 1/sqrt(d), else a finite real number > 0. Returns o (q's dtype),
    or (o, lse) with return_lse=True: lse (B, H, Nq), what flash_attention_backward needs, is
    float32, or float64 for float64 NumPy inputs. backend: see the module docstring ("cpu"
    runs the CUDA C kernel on the CPU).

    Variants: k, v with H_kv heads dividing q's H (GQA); window=(left, right): query i sees
    keys i - left .. i + right (-1: unbounded), top-left aligned as causal is (query i and key
    i are one position whatever Nq and Nk); FlashAttention's bottom-right alignment for
    Nq != Nk is mask_mod=mods.sliding_window(left, right, offset=mods.bottom_right(Nq, Nk))
    (or mods.causal(offset=...));
    mask_mod(b, h, q_idx, kv_idx) -> bool and score_mod(score, b, h, q_idx, kv_idx), as
    FlexAttention's (flashlab.mods). A row no key is visible to gives 0 and lse -inf. NumPy
    arrays run them in the oracle (kernel 'auto' or the A0 baseline) or in fa2's step-through
    (kernel='fa2', forward and backward); fa2 (float32, CuPy arrays or
    backend='cpu') and tc (float16 / bfloat16 CuPy arrays) compile window, mask_mod, score_mod
    and GQA in, forward and backward; the other kernels say so.
    """
    check_flag("return_lse", return_lse)
    route = _variant(kernel, backend, {"q": q, "k": k, "v": v}, window, mask_mod, score_mod)
    if route == "reference":
        from .reference.variants import variant_attention

        o, lse = variant_attention(q, k, v, causal, softmax_scale, window=window,
                                   mask_mod=mask_mod, score_mod=score_mod)
        o, lse = o.astype(q.dtype, copy=False), _lse_out(lse)
        return (o, lse) if return_lse else o
    if route == "steps":  # the kernel's step-through, with the variant
        o, lse = registry.get(kernel).reference_fn("forward")(
            q, k, v, causal, softmax_scale, window=window, mask_mod=mask_mod, score_mod=score_mod,
            gqa=True)
        o, lse = o.astype(q.dtype, copy=False), _lse_out(lse)
        return (o, lse) if return_lse else o
    if route is not None:  # a kernel compiles the variant in (GQA alone too)
        from .mods.kernel import KernelVariant

        o, lse = launch.forward(route, q, k, v, causal, softmax_scale,
                                variant=KernelVariant.of(window, mask_mod, score_mod))
        return (o, lse) if return_lse else o
    where = _where(backend, _route(kernel, {"q": q, "k": k, "v": v}))
    if where == "cpu":
        check_qkv(q, k, v, causal, softmax_scale)
        name, copies = _cpu_kernel(kernel, q)
        if copies:
            f32 = [np.ascontiguousarray(x, np.float32) for x in (q, k, v)]
            o, lse = launch.forward(name, *f32, causal, softmax_scale)
            o = o.astype(q.dtype)
        else:
            o, lse = launch.forward(name, q, k, v, causal, softmax_scale)
    elif where == "gpu":
        name = _resolve(kernel, q)
        if kernel == "auto" and not _runs_natively(name, q) and q.dtype.name in LOWP:
            # checked before the fallback's warning, and before the copies hide a dtype mismatch
            check_qkv(q, k, v, causal, softmax_scale)
            _gpu_lowp_fallback(name, q)
            o, lse = launch.forward(name, *(lowp.to_float32(x) for x in (q, k, v)), causal,
                                    softmax_scale)
            o = lowp.from_float32(o, q.dtype.name)
        else:
            o, lse = launch.forward(name, q, k, v, causal, softmax_scale)
    else:
        spec = registry.get(_resolve(kernel, q))
        _check_reference_head_dim(spec, q)
        o, lse = spec.reference_fn("forward")(q, k, v, causal, softmax_scale)
        o, lse = o.astype(q.dtype, copy=False), _lse_out(lse)  # naive promotes bfloat16
    return (o, lse) if return_lse else o


def flash_attention_backward(do, q, k, v, o, lse, causal=False, softmax_scale=None, kernel="auto",
                             backend="auto", *, window=None, mask_mod=None, score_mod=None):
    """Gradients (dq, dk, dv) of sum(do * o) for o = flash_attention(q, k, v), in q's dtype.

    do, o: like q; lse (B, H, Nq): flash_attention's, any float dtype (float32 as it returns it,
    or float64 for float64 NumPy inputs). Arguments as flash_attention's; with GQA, dk and dv
    have k's heads (each summed over its group of query heads).
    """
    arrays = {"do": do, "q": q, "k": k, "v": v, "o": o, "lse": lse}
    route = _variant(kernel, backend, arrays, window, mask_mod, score_mod)
    if route == "steps":  # the kernel's step-through, with the variant
        return registry.get(kernel).reference_fn("backward")(
            do, q, k, v, o, lse, causal, softmax_scale, window=window, mask_mod=mask_mod,
            score_mod=score_mod, gqa=True)
    if route not in (None, "reference", "steps"):  # a kernel compiles the variant in
        from .mods.kernel import KernelVariant

        return launch.backward(route, do, q, k, v, o, lse, causal, softmax_scale,
                               variant=KernelVariant.of(window, mask_mod, score_mod))
    if route == "reference":
        from .reference.variants import variant_attention_backward

        B, H, Nq = np.shape(q)[:3]
        for name, x, shape in (("o", o, np.shape(q)), ("lse", lse, (B, H, Nq))):
            if tuple(np.shape(x)) != tuple(shape):
                raise ValueError(f"{name} must have shape {tuple(shape)} (flash_attention's "
                                 f"outputs for q); got {tuple(np.shape(x))}")
        grads = variant_attention_backward(do, q, k, v, causal, softmax_scale, window=window,
                                           mask_mod=mask_mod, score_mod=score_mod)
        return tuple(g.astype(q.dtype, copy=False) for g in grads)
    where = _where(backend, _route(kernel, arrays))
    if where == "cpu":
        check_backward(do, q, k, v, o, lse, causal, softmax_scale)
        name, copies = _cpu_kernel(kernel, q)
        ins = [np.ascontiguousarray(x, np.float32) for x in (do, q, k, v, o)] if copies \
            else [do, q, k, v, o]  # an explicit kernel's launch checks the dtypes itself
        grads = launch.backward(name, *ins, np.ascontiguousarray(lse, np.float32), causal,
                                softmax_scale)  # lse: float32 as the kernels take it
        return tuple(g.astype(q.dtype, copy=False) for g in grads)
    if where == "gpu":
        name = _resolve(kernel, q, "backward")
        if kernel == "auto" and not _runs_natively(name, q) and q.dtype.name in LOWP:
            check_backward(do, q, k, v, o, lse, causal, softmax_scale)
            _gpu_lowp_fallback(name, q, "backward")
            f32 = [lowp.to_float32(x) for x in (do, q, k, v, o)]
            grads = launch.backward(name, *f32, lse, causal, softmax_scale)
            return tuple(lowp.from_float32(g, q.dtype.name) for g in grads)
        return launch.backward(name, do, q, k, v, o, lse, causal, softmax_scale)
    spec = registry.get(_resolve(kernel, q))
    _check_reference_head_dim(spec, q)
    # naive's reference (A0 recomputes P) checks o and lse without reading them
    return spec.reference_fn("backward")(do, q, k, v, o, lse, causal, softmax_scale)


def available_kernels() -> list[str]:
    """Kernels that run on CuPy arrays here; [] without CuPy or a GPU (NumPy always works)."""
    return device.available_kernels()
