"""Run a kernel in trace mode and hold it to its step-through, tile by tile, on the GPU or on
the CPU backend (flashlab.cpu: the same CUDA C, compiled for the CPU).

`check_kernel` works for every traceable kernel of flashlab.registry: the registry says which
step-through a kernel follows (spec.steps_fn), which dtypes it takes, how close its trace must
come (spec.tolerance) and which pieces of the launch plan its step-through needs to walk the
tiles as the kernel did (spec.step_plan). The trace format and the comparison are
flashlab.trace's; this module is the only one that puts a launcher and a step-through side by side.
A planted bug's name and a user's file become here the Source the launcher compiles.
"""
from __future__ import annotations

import numpy as np

from . import launch, lowp, registry
from .course import patched
from .launch.sources import Source, user_file
from .registry import TC_UNITS, UNIT_ROUNDOFF  # noqa: F401  (their home; kept importable here)
from .trace import compare, record

__all__ = ["check_kernel", "kernel_source", "STEP_THROUGH", "TC_UNITS", "UNIT_ROUNDOFF"]

#: kernel -> (forward algorithm, backward algorithm), for the traceable kernels
STEP_THROUGH = {n: registry.get(n).algorithms for n in registry.traceable()}


def _dtype_of(spec, dtype: str) -> str:
    """The input dtype a check runs: float32 for the fp32 kernels, else `dtype` (16-bit)."""
    if spec.takes_dtype("float32"):
        return "float32"
    return lowp.lowp_dtype(dtype).name


def kernel_source(kernel: str, bug: str | None = None, source=None) -> Source | None:
    """The Source a check runs: a user's file (a path, or a Source already), with planted bug
    `bug` (flashlab.course.bugs) when given; None for ours without a bug."""
    src = user_file(source, kernel) if source is not None and not isinstance(source, Source) \
        else source
    return patched(bug, kernel, src) if bug is not None else src


def default_backend() -> str:
    """Where a kernel check runs when not told: "gpu" where CuPy sees one, else "cpu"."""
    return "gpu" if launch.device.gpu_available() else "cpu"


def check_kernel(kernel: str, direction: str = "forward", B=1, H=2, Nq=256, Nk=None, d=64,
                 causal=False, softmax_scale=None, seed=0, bug=None, rtol=None, atol=None,
                 source=None, dtype="bfloat16", backend=None, window=None, mask_mod=None,
                 score_mod=None):
    """Run `kernel` in trace mode on random inputs and compare it with its step-through.

    Returns (divergence or None, kernel trace, reference trace). backend: "gpu" (CuPy), "cpu"
    (the CPU backend, flashlab.cpu; fp32 kernels only) or None (default_backend()). The fp32
    kernels' reference runs in float64 on the same (float32) inputs with the kernel's own Br and
    Bc (rtol 1e-3, atol 1e-4). A 16-bit kernel ('tc') takes `dtype` (float16 / bfloat16) inputs
    and is compared with its own twin, which makes the same 16-bit roundings (rtol = atol =
    TC_UNITS units of roundoff). bug: a planted bug's name (flashlab.course.bugs). source: a .cu
    file to run instead of ours (same kernels, same signatures). window, mask_mod, score_mod:
    an attention variant, compiled into the kernel and run by the step-through (kernels whose
    registry entry has trace_mods: fa2, forward and backward).
    """
    backend = default_backend() if backend is None else backend
    if backend not in ("gpu", "cpu"):
        raise ValueError(f"backend must be 'gpu' or 'cpu', got {backend!r}")
    spec = registry.get(kernel)
    if not spec.traceable:
        raise ValueError(f"kernel must be one of {sorted(registry.traceable())} to trace, "
                         f"got {kernel!r}")
    steps_fn = spec.steps_fn(direction)  # checks direction
    keywords = {k: x for k, x in (("window", window), ("mask_mod", mask_mod),
                                  ("score_mod", score_mod)) if x is not None}
    variant = None
    if keywords:
        from .mods.kernel import KernelVariant

        variant = KernelVariant.of(window, mask_mod, score_mod)
    src = kernel_source(kernel, bug, source)
    name = _dtype_of(spec, dtype)
    trace_rtol, trace_atol = spec.tolerance.trace_tolerance(name)
    rtol = trace_rtol if rtol is None else rtol
    atol = trace_atol if atol is None else atol
    Nk = Nq if Nk is None else Nk
    rng = np.random.default_rng(seed)
    shapes = ((B, H, Nq, d), (B, H, Nk, d), (B, H, Nk, d), (B, H, Nq, d))
    if name == "float32":
        host = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        to_ref = lambda x: np.asarray(x).astype(np.float64)  # noqa: E731
        ref_label = None
    else:  # the twin takes the 16-bit arrays themselves and rounds as the kernel does
        host = [lowp.from_float32(rng.standard_normal(s).astype(np.float32), name) for s in shapes]
        to_ref = np.asarray
        ref_label = f"reference {kernel} ({name})"
    if backend == "gpu":
        import cupy as cp

        to_device, to_host = cp.asarray, (lambda x: x.get())
    else:
        to_device, to_host = np.array, np.asarray  # copies: the launch must not touch `host`
    gq, gk, gv, gdo = (to_device(x) for x in host)
    qr, kr, vr, dor = (to_ref(x) for x in host)
    if direction == "forward":
        _, _, actual = launch.forward(kernel, gq, gk, gv, causal, softmax_scale, trace=True,
                                      source=src, variant=variant)
        args = (qr, kr, vr)
    else:
        o, lse = launch.forward(kernel, gq, gk, gv, causal, softmax_scale,  # ours: only G2/B1 checked
                                variant=variant)
        _, _, _, actual = launch.backward(kernel, gdo, gq, gk, gv, o, lse, causal, softmax_scale,
                                          trace=True, source=src, variant=variant)
        args = (dor, qr, kr, vr, to_ref(to_host(o)), to_ref(to_host(lse)))
    extra = {}
    if spec.step_plan(direction):  # the tile walk the step-through must copy: the plan that ran
        p = launch.launch_plan(kernel, gq.device.id if backend == "gpu" else "cpu", d, direction,
                               source=src)
        extra = {key: p[key] for key in spec.step_plan(direction)}
    steps = steps_fn(*args, causal, softmax_scale, Br=actual.Br, Bc=actual.Bc, **extra,
                     **keywords)
    expected, _ = record(steps, ref_label)
    if bug is not None:
        actual.label = f"{kernel} {direction} with bug {bug!r}"
    elif source is not None:
        where = (source.origin or source.name) if isinstance(source, Source) else source
        actual.label = f"{where} ({kernel} {direction})"
    return compare(expected, actual, rtol=rtol, atol=atol), actual, expected
