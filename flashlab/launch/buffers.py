"""Device buffers a launch writes: the outputs (fresh, or the caller's after a check) and, in
trace mode, the trace arrays the kernel fills in flashlab.trace's format (NaN-poisoned, steps -1
until written); untraced builds get one pair of never-touched dummies per GPU instead."""
from __future__ import annotations

import numpy as np

from ..checks import Dims
from ..trace import Trace


def outputs(cp, out, shapes, names, dtypes=None):
    """Output buffers: fresh, or the caller's (tests pass NaN-poisoned ones) after a check."""
    dtypes = dtypes or [np.float32] * len(shapes)
    if out is None:
        return [cp.empty(s, dt) for s, dt in zip(shapes, dtypes)]
    if len(out) != len(shapes):
        raise ValueError(f"out must hold {len(shapes)} arrays ({', '.join(names)})")
    for name, buf, shape, dt in zip(names, out, shapes, dtypes):
        if buf.shape != shape or buf.dtype != np.dtype(dt) or not buf.flags.c_contiguous:
            raise ValueError(f"out {name} must be a contiguous {np.dtype(dt).name} array of "
                             f"shape {shape}")
    return list(out)


def trace_buffers(cp, algorithm, dims: Dims, Br, Bc):
    """(empty Trace, name -> device array, device seq), the arrays NaN / -1 poisoned."""
    empty = Trace.empty(algorithm, "", dims.B, dims.H, dims.Nq, dims.Nk, dims.d, Br, Bc)
    bufs = {name: cp.full((dims.B * dims.H,) + v.shape[2:], cp.nan, dtype=cp.float32)
            for name, v in empty.values.items()}
    seq = cp.full((dims.B * dims.H,) + empty.seq.shape[2:], -1, dtype=cp.int64)
    return empty, bufs, seq


def finish_trace(empty, bufs, seq, label):
    """The Trace of a traced run: the device arrays copied into `empty`'s host arrays."""
    tr = empty
    tr.label = label
    for name, buf in bufs.items():
        tr.values[name] = _host(buf).astype(np.float64).reshape(tr.values[name].shape)
    tr.seq = _host(seq).reshape(tr.seq.shape)
    return tr


def _host(buf):
    """A device array's host copy (a CPU-backend array is one already)."""
    return buf if isinstance(buf, np.ndarray) else buf.get()


_dummies: dict = {}  # (array module, device) -> the untraced build's trace arguments


def trace_args(cp, trace, algorithm, dims: Dims, Br, Bc, names):
    """(state for finish_trace or None, the kernel's four trace arguments): the buffers of
    `names` (in the kernel's argument order) and seq, or dummies the untraced build never
    touches (one pair per GPU)."""
    if trace:
        empty, bufs, seq = trace_buffers(cp, algorithm, dims, Br, Bc)
        return (empty, bufs, seq), tuple(bufs[n] for n in names) + (seq,)
    dev = (id(cp), cp.cuda.Device().id)
    if dev not in _dummies:
        _dummies[dev] = (cp.empty(1, cp.float32), cp.empty(1, cp.int64))
    f, i = _dummies[dev]
    return None, (f, f, f, i)


def step_buffers(ctx, trace, direction, p, names):
    """trace_args for one launch of ctx's kernel: its algorithm in `direction`, plan p's tiles."""
    return trace_args(ctx.cp, trace, ctx.spec.algorithm(direction), ctx.dims, p["Br"], p["Bc"],
                      names)


def finish(ctx, state, direction, *outs):
    """The launcher's return: the outputs, and with them the Trace when the run was traced."""
    if state is None:
        return outs
    return outs + (finish_trace(*state, f"{ctx.spec.name} {direction}"),)
