"""The launcher: runs flashlab's CUDA kernels on CuPy arrays, one job per module.

    sources.py   kernels/, #include inlining (#line kept), the Source a launcher compiles
    compiler.py  the compile seam (Backend: CuPy/NVRTC today), module and function caches,
                 launch(); nvrtc_compile, the offline check without a GPU
    device.py    CuPy, device limits, input checks (dtype, device, head dim, sizes, GPU)
    plans.py     tile sizes and shared memory per kernel; tc's variants and instances
    prepared.py  a call's launches resolved once per shape (Prepared), run with buffers or
                 pointers: tc's launches, and flashlab.torch's per-call path
    buffers.py   output buffers, trace buffers
    naive.py, fa1.py, fa2.py, tc.py: one kernel's launches each (forward, backward)
    errors.py    KernelCompileError, KernelLaunchError

`forward` / `backward` check the inputs, look the kernel up in flashlab.registry and hand over
to its launcher module (spec.launcher). NumPy inputs run the same launchers on the CPU
backend (flashlab.cpu: the CUDA C compiled with a C++ compiler, CUDA threads as fibers). `source` is None (ours) or a Source whose text is what
gets compiled (a user's file, a planted bug: flashlab.course makes those). Importing this
package does not need CuPy; using a kernel does.
"""
from __future__ import annotations

import numpy as np

from .. import registry
from ..checks import check_backward, check_qkv
from .buffers import outputs, step_buffers
from .device import device_limits, setup
from .errors import KernelCompileError, KernelLaunchError
from .plans import plan
from .sources import Source

__all__ = ["forward", "backward", "prepare_forward", "prepare_backward", "launch_plan", "Source",
           "KernelCompileError", "KernelLaunchError"]


def _check_source(source):
    if source is not None and not isinstance(source, Source):
        raise TypeError(f"source must be None or a flashlab.launch.sources.Source, got "
                        f"{type(source).__name__} (a file: sources.user_file(path, kernel))")


def _setup(spec, dims, arrays: dict, trace: bool):
    """The GPU's checks and Launch for CuPy inputs; the CPU backend's for NumPy inputs."""
    from ..cpu import host

    return (host.setup if host.on_host(arrays) else setup)(spec, dims, arrays, trace)


def _variant(spec, variant, trace: bool) -> dict:
    """The launcher's keywords for an attention variant (none without one), after the checks."""
    if variant is None:
        return {}
    if not spec.mods:
        takes = ", ".join(n for n, s in registry.KERNELS.items() if s.mods)
        do = "does" if "," not in takes else "do"
        raise ValueError(f"kernel {spec.name!r} does not take attention variants yet ({takes} "
                         f"{do})")
    if trace and not spec.trace_mods:
        steps = ", ".join(n for n, s in registry.KERNELS.items() if s.trace_mods)
        raise ValueError(f"kernel {spec.name!r} has no trace build with an attention variant "
                         f"yet ({steps} has)")
    return {"variant": variant}


def forward(kernel: str, q, k, v, causal=False, softmax_scale=None, trace=False, out=None,
            source=None, config=None, variant=None):
    """Run kernel `kernel` forward. Returns (o, lse) or, with trace=True, (o, lse, Trace).

    out: optional (o, lse) buffers to write into. source: a Source to compile instead of ours.
    config: for kernels with tile tables ('tc'), a tile shape other than the default, for
    tuning: kernels/tc.cu's (dict(BC=, NW=, WM=, BK=)) or kernels/tc90.cu's (dict(BC=, NWG=,
    MINB=); compute capability 9.0 only).
    variant: a flashlab.mods.kernel.KernelVariant (window, mask_mod, score_mod) compiled into a
    kernel whose registry entry has mods (fa2, tc; traced: trace_mods, fa2); with one, k and v may have fewer heads
    than q (GQA: H_kv dividing H).
    """
    dims = check_qkv(q, k, v, causal, softmax_scale, gqa=variant is not None)
    spec = registry.get(kernel)
    _check_source(source)
    ctx = _setup(spec, dims, {"q": q, "k": k, "v": v}, trace)
    B, H, Nq, d = dims.B, dims.H, dims.Nq, dims.d
    extra = _variant(spec, variant, trace)
    with ctx.cp.cuda.Device(ctx.device):
        o, lse = outputs(ctx.cp, out, [(B, H, Nq, d), (B, H, Nq)], ("o", "lse"),
                         [q.dtype, np.float32])
        return spec.launch_module().forward(ctx, q, k, v, o, lse, trace=trace, source=source,
                                            config=config, **extra)


def backward(kernel: str, do, q, k, v, o, lse, causal=False, softmax_scale=None, trace=False,
             out=None, source=None, config=None, variant=None):
    """Run kernel `kernel` backward. Returns (dq, dk, dv) or, with trace=True, (dq, dk, dv, Trace).

    out: optional (dq, dk, dv) buffers to write into. config: 'tc' only, kernels/tc.cu's
    (dict(BR=, BC=, NW=, WS=, WKV=, WQ=, QS=)) or kernels/tc90.cu's (dict(BR=, BC=, QS=, MINB=)).
    variant: as forward's (the same one the forward ran).
    """
    dims = check_backward(do, q, k, v, o, lse, causal, softmax_scale, gqa=variant is not None)
    spec = registry.get(kernel)
    _check_source(source)
    ctx = _setup(spec, dims, {"do": do, "q": q, "k": k, "v": v, "o": o, "lse": lse}, trace)
    B, H, Nq, Nk, d, Hkv = dims.B, dims.H, dims.Nq, dims.Nk, dims.d, dims.kv_heads
    extra = _variant(spec, variant, trace)
    with ctx.cp.cuda.Device(ctx.device):
        dq, dk, dv = outputs(ctx.cp, out, [(B, H, Nq, d), (B, Hkv, Nk, d), (B, Hkv, Nk, d)],
                             ("dq", "dk", "dv"), [q.dtype] * 3)
        return spec.launch_module().backward(ctx, do, q, k, v, o, lse, dq, dk, dv, trace=trace,
                                             source=source, config=config, **extra)


def _prepared_launcher(kernel: str):
    spec = registry.get(kernel)
    mod = spec.launch_module()
    if not hasattr(mod, "prepare_forward"):
        have = ", ".join(n for n, s in registry.KERNELS.items()
                         if hasattr(s.launch_module(), "prepare_forward"))
        raise ValueError(f"kernel {kernel!r} has no prepared calls (kernels that have: {have})")
    return spec, mod


def _rows(spec, mod, named: dict):
    """name -> (batch, head, row) element strides of each array, for a kernel with row_strides
    (strides compiled into its calls); None for one that takes contiguous arrays only."""
    return {n: mod.element_strides(x) for n, x in named.items()} if spec.row_strides else None


def prepare_forward(kernel: str, q, k, v, o, causal=False, softmax_scale=None, variant=None):
    """The forward launches of `kernel` ('tc', 'fa2') for CuPy arrays like q, k, v and output o
    (shapes, dtype, strides, device; what they hold is not read), checked as forward() checks
    them and resolved without running: a flashlab.launch.prepared.Prepared, cached per key,
    whose run({"q", "k", "v", "o", "lse": arrays or device pointers}, stream) launches. This
    is what flashlab.torch calls once per shape and then runs with torch's pointers. variant:
    a flashlab.mods.kernel.KernelVariant compiled in, as forward() takes it (k, v may then have
    fewer heads than q)."""
    dims = check_qkv(q, k, v, causal, softmax_scale, gqa=variant is not None)
    spec, mod = _prepared_launcher(kernel)
    _variant(spec, variant, False)
    ctx = setup(spec, dims, {"q": q, "k": k, "v": v, "o": o}, False)
    with ctx.cp.cuda.Device(ctx.device):
        p = launch_plan(kernel, ctx.device, dims.d, "forward")
        _, targs = step_buffers(ctx, False, "forward", p, ())
        rows = _rows(spec, mod, dict(zip("qkvo", (q, k, v, o))))
        return mod.prepare_forward(ctx, q.dtype, rows, p, targs=targs, variant=variant)


def prepare_backward(kernel: str, do, q, k, v, o, lse, causal=False, softmax_scale=None,
                     grads=None, variant=None):
    """prepare_forward for the backward: buffers do, q, k, v, o, lse, dq, dk, dv, and one
    workspace of .workspace_bytes that run(workspace=address) carves. grads: CuPy arrays like
    the dq, dk, dv a run writes (their strides are compiled into the call, checked as q's
    are); None: contiguous (B, H, N, d). variant: as prepare_forward's; with GQA the call
    writes dk and dv per query head, (B, H, Nk, d), which the caller sums over each group."""
    dims = check_backward(do, q, k, v, o, lse, causal, softmax_scale, gqa=variant is not None)
    spec, mod = _prepared_launcher(kernel)
    _variant(spec, variant, False)
    named = {"do": do, "q": q, "k": k, "v": v, "o": o, "lse": lse}
    if grads is not None:
        named.update(_grads(dims, q, grads))
    ctx = setup(spec, dims, named, False)
    with ctx.cp.cuda.Device(ctx.device):
        p = launch_plan(kernel, ctx.device, dims.d, "backward")
        _, targs = step_buffers(ctx, False, "backward", p, ())
        rows = _rows(spec, mod, {n: named[n] for n in ("q", "k", "v", "do", "o")})
        for n, shape in zip(("dq", "dk", "dv"), ((dims.Nq, dims.d), (dims.Nk, dims.d),
                                                  (dims.Nk, dims.d))):
            if rows is not None:
                rows[n] = mod.element_strides(named[n]) if n in named else \
                    (dims.H * shape[0] * shape[1], shape[0] * shape[1], shape[1])
        return mod.prepare_backward(ctx, q.dtype, rows, p, targs=targs, variant=variant)


def _grads(dims, q, grads) -> dict:
    """name -> array of prepare_backward's grads (dq, dk, dv), each checked for its shape and
    dtype (the strides are setup's check, as the operands')."""
    if len(grads) != 3:
        raise ValueError(f"grads must hold 3 arrays (dq, dk, dv), got {len(grads)}")
    out = {}
    for name, g, n in zip(("dq", "dk", "dv"), grads, (dims.Nq, dims.Nk, dims.Nk)):
        want = (dims.B, dims.H, n, dims.d)
        if tuple(g.shape) != want or g.dtype != q.dtype:
            raise ValueError(f"{name} must be a {q.dtype} array of shape {want}, got "
                             f"{g.dtype} {tuple(g.shape)}")
        out[name] = g
    return out


def launch_plan(kernel: str, device: int, d: int, direction: str, config=None,
                source=None) -> dict:
    """The tile plan a launch of `kernel` on GPU `device` (or device="cpu": the CPU backend)
    uses (what ran, for the trace check): the launcher's own launch_plan where it has variants
    and configs, else plans.plan with the device's shared memory."""
    spec = registry.get(kernel)
    if device == "cpu":
        from ..cpu import host

        host.check_runs_on_cpu(kernel)
        return plan(kernel, d, direction, host.LIMITS["smem_optin"])
    own = getattr(spec.launch_module(), "launch_plan", None)
    if own is not None:
        return own(device, d, direction, config, source)
    return plan(kernel, d, direction, device_limits(device)["smem_optin"])
