"""flashlab's CUDA kernels inside PyTorch: `flashlab.torch.flash_attention`, a torch custom op.

    import flashlab.torch
    o = flashlab.torch.flash_attention(q, k, v, is_causal=True)   # torch CUDA tensors
    o.sum().backward()                                            # q.grad, k.grad, v.grad

SDPA's layout (B, H, N, d), argument names (`is_causal`, `scale`) and top-left causal mask.
float16 and bfloat16 run the tensor-core kernel (tc) where it takes the head dim and the GPU,
float32 runs fa2 (fa1 where fa2 has no tile for the head dim): the registry's choice, as
`flashlab.flash_attention(kernel="auto")` makes it.

Under torch.compile the forward and the backward are torch.library custom ops
(`flashlab::attention_forward`, `flashlab::attention_backward`) with fake (meta)
implementations and a registered autograd formula, so torch.compile(model, fullgraph=True)
traces a model that calls it without a graph break; eagerly the same kernels run through an
autograd.Function (the custom op's Python dispatch costs more than a small kernel).

k, v may have fewer heads than q (enable_gqa=True, as SDPA) and window=(left, right) limits the
keys a query sees; both are compiled into the kernels (flashlab.mods) and take the path below.
mask_mod= and score_mod= run eagerly (flashlab.torch_variants).

Calls where 'auto' picks a kernel with prepared calls (tc for 16-bit, fa2 for float32) are
prepared once per shape and layout (flashlab.launch.prepared) and then run in C++
(flashlab.native: an autograd node that allocates from torch's allocator and launches on
torch's current stream), or, where that extension cannot be built, launched from Python with
the tensors' data_ptr()s the same way, so a model step can be captured in a CUDA graph. For tc,
q, k, v may be strided views (a packed qkv projection) and dq, dk, dv come back in their
layout; fa2 takes contiguous operands (others are copied). Other calls (fa1's head dims; 16-bit
on an older GPU) cross to CuPy through DLPack and run the CuPy API.

This module is named flashlab.torch; the real PyTorch is imported with
importlib.import_module("torch") (flashlab.torch_bridge), never this file. Importing it needs PyTorch; using it needs
CuPy and a CUDA GPU.
"""
from __future__ import annotations

from .api import flash_attention as _flash_attention
from .api import flash_attention_backward as _flash_attention_backward
from .torch_bridge import DTYPES as _DTYPES
from .torch_bridge import TorchStream as _Stream
from .torch_bridge import attention as _attention
from .torch_bridge import check as _check
from .torch_bridge import rows_ok as _rows_ok
from .torch_bridge import to_cupy as _to_cupy
from .torch_bridge import to_torch as _to_torch
from .torch_bridge import torch

# ---------------------------------------------------------------- the prepared path, per call

_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
_get_device = getattr(torch._C, "_cuda_getDevice", None) or torch.cuda.current_device
_streams: dict = {}  # stream handle -> StreamPtr


def _stream_ptr(index: int):
    """torch's current stream on GPU `index`, as CuPy's launch reads a stream (.ptr)."""
    ptr = _raw_stream(index) if _raw_stream is not None else \
        torch.cuda.current_stream(index).cuda_stream
    hit = _streams.get(ptr)
    if hit is None:
        from .launch.prepared import StreamPtr

        hit = _streams[ptr] = StreamPtr(ptr)
    return hit


_kernel_for: dict = {}  # (device, dtype, head dim, pass) -> the prepared-call kernel, or None
_strided: dict = {}  # kernel -> whether it reads strided rows (registry row_strides)


def _fast(q, direction: str = "forward"):
    """The kernel q runs through prepared calls for this pass, or None: on a GPU, the kernel
    kernel='auto' picks for q's dtype and head dim where its launcher prepares calls (tc for
    16-bit, fa2 for float32) and its tiles for the pass fit the GPU's shared memory. Where None,
    the CuPy API's 'auto' runs (fa1's head dims; 16-bit at another head dim, on an older GPU, or
    where the pass's tiles do not fit, as tc's backward at d = 256 in 99 KB: float32 copies,
    with its warning)."""
    key = (q.get_device(), q.dtype, q.shape[-1], direction)
    if key not in _kernel_for:
        from . import registry
        from .launch import launch_plan
        from .launch.device import device_limits
        from .launch.plans import NoTileFits

        cc = int(device_limits(key[0])["compute_capability"])
        fits = registry.for_auto(_DTYPES[q.dtype], q.shape[-1], cc)
        spec = registry.get(fits[0]) if fits else None
        name = None
        if spec is not None and _DTYPES[q.dtype] in spec.dtypes \
                and hasattr(spec.launch_module(), "prepare_forward"):
            try:
                launch_plan(spec.name, key[0], q.shape[-1], direction)
                name = spec.name
                _strided[name] = spec.row_strides
            except NoTileFits:  # the CuPy API's 'auto' falls back, and says why
                pass
        _kernel_for[key] = name
    return _kernel_for[key]


def _in_place(kernel: str, x, address: bool = True) -> bool:
    """`kernel` reads x without a copy: rows on 16 bytes (tc), else contiguous and 16-byte
    aligned (fa2's float4 loads). address=False: its strides alone."""
    if _strided[kernel]:
        return _rows_ok(x, address)
    return x.is_contiguous() and (not address or x.data_ptr() % 16 == 0)


def _writes_strided(q, direction: str = "forward") -> bool:
    """o (direction "forward") or the gradients ("backward") of a call like q come back in q's
    layout (_out_like): the prepared path of a kernel with row strides; else contiguous (fa2's
    prepared calls, the CuPy API)."""
    kernel = _fast(q, direction)
    return kernel is not None and _strided[kernel]


def _readable(kernel: str, x):
    """x, or a copy `kernel` reads in place (a fresh allocation: contiguous and aligned)."""
    if _in_place(kernel, x):
        return x
    return x.clone(memory_format=torch.contiguous_format) if x.is_contiguous() else x.contiguous()


def _out_like(q, strided: bool = True):
    """The output (or gradient) for q's layout: contiguous (B, H, N, d) for a contiguous q or
    a kernel that writes contiguous arrays only (strided False), else heads inside rows,
    (B, N, H, d) in memory seen as (B, H, N, d), as SDPA returns for the transposed views a
    model passes, so that o.transpose(1, 2).reshape(B, N, H d) is free and the gradients of a
    packed qkv projection stack into it row by row. Decided by q's layout alone (before any
    copy _readable makes), as the fake (meta) implementations decide it."""
    B, H, N, d = q.shape
    if q.is_contiguous() or not strided:
        return q.new_empty((B, H, N, d))
    return torch.empty_strided((B, H, N, d), (N * H * d, d, H * d, 1), dtype=q.dtype,
                               device=q.device)


# (direction, device, dtype, shapes, strides, causal, scale) -> launch.prepared.Prepared, for
# layouts the kernel reads in place (a key is stored only after its checks passed)
_calls: dict = {}
_CALLS_MAX = 512


def _store(key, call):
    if len(_calls) >= _CALLS_MAX:  # shapes that keep changing: start over, never grow
        _calls.clear()
    _calls[key] = call
    return call


def _run(call, index: int, bufs: dict, workspace=None) -> None:
    """call.run on torch's current stream of GPU `index` (made the current device if not)."""
    if index != _get_device():
        with torch.cuda.device(index):
            call.run(bufs, _stream_ptr(index), workspace, pointers=True)
    else:
        call.run(bufs, _stream_ptr(index), workspace, pointers=True)


def _forward_key(index, q, k, v, is_causal, scale, window) -> tuple:
    return ("f", index, q.dtype, q.shape, k.shape, v.shape, q.stride(), k.stride(), v.stride(),
            is_causal, scale, window)


def _backward_key(index, do, q, k, v, o, is_causal, scale, window) -> tuple:
    return ("b", index, q.dtype, q.shape, k.shape, do.stride(), q.stride(), k.stride(),
            v.stride(), o.stride(), is_causal, scale, window)


def _variant(q, k, window):
    """The flashlab.mods.kernel.KernelVariant the kernels compile in for `window` ((left,
    right) or None) and GQA (k with fewer heads than q), or None for plain attention (made on a
    prepared call's miss only)."""
    if window is None and k.shape[1] == q.shape[1]:
        return None
    from .mods.kernel import KernelVariant

    return KernelVariant.of(window=window)


def _resolved(kernel: str, key, given: tuple, prepare):
    """(the operands `kernel` reads: `given`, with a fresh copy of each one whose layout it
    cannot read in place; the prepared call for them). A call is stored under `key` (the given
    layouts) with which operands it copies, where every copy was made for the operand's strides
    rather than its address: the next call with this key makes the same copies and runs without
    preparing, so nothing crosses to CuPy (DLPack) after the first call, as a CUDA-graph
    capture needs (a packed qkv view in float32 is copied on every call, in torch)."""
    hit = _calls.get(key)
    if hit is not None:
        call, copied = hit
        ops = tuple(_readable(kernel, x) if c else x for x, c in zip(given, copied))
        if not any(x.data_ptr() & 15 for x, c in zip(ops, copied) if not c):
            return ops, call
    from . import launch

    layout_ok = tuple(_in_place(kernel, x, address=False) for x in given)
    ops = tuple(_readable(kernel, x) for x in given)
    call = prepare(launch, ops)
    if all(a is b or not ok for a, b, ok in zip(ops, given, layout_ok)):
        _store(key, (call, tuple(not ok for ok in layout_ok)))
    return ops, call


def _prepared_forward(kernel: str, q, k, v, is_causal: bool, scale: float, window=None):
    """The forward per call: a cache hit (this layout, 16-byte aligned pointers) allocates o
    and lse and launches; a miss checks and prepares (launch.prepare_forward). Operands whose
    rows the kernel cannot read in place are copied (_resolved)."""
    index = q.get_device()
    key = _forward_key(index, q, k, v, is_causal, scale, window)
    o = _out_like(q, _strided[kernel])
    (q, k, v), call = _resolved(kernel, key, (q, k, v), lambda launch, ops: launch.prepare_forward(
        kernel, *(_to_cupy(x, False) for x in ops), _to_cupy(o, False), causal=is_causal,
        softmax_scale=scale, variant=_variant(q, k, window)))
    lse = q.new_empty(q.shape[:3], dtype=torch.float32)
    _run(call, index, {"q": q.data_ptr(), "k": k.data_ptr(), "v": v.data_ptr(),
                       "o": o.data_ptr(), "lse": lse.data_ptr()})
    return o, lse


def _prepared_backward(kernel: str, do, q, k, v, o, lse, is_causal: bool, scale: float,
                       window=None):
    """The backward per call, as _prepared_forward: dq, dk, dv laid out like q, k, v
    (_out_like), one workspace. With GQA the kernels write dk and dv per query head, summed
    here over each group (in torch, so a graph capture takes it too)."""
    index = q.get_device()
    key = _backward_key(index, do, q, k, v, o, is_causal, scale, window)
    dq, dk, dv = (_out_like(x, _strided[kernel]) for x in (q, k, v))
    group = q.shape[1] // k.shape[1]
    dk_h, dv_h = (dk, dv) if group == 1 else (q.new_empty(q.shape[:2] + k.shape[2:])
                                              for _ in range(2))
    (do, q, k, v, o), call = _resolved(
        kernel, key, (do, q, k, v, o), lambda launch, ops: launch.prepare_backward(
            kernel, *(_to_cupy(x, False) for x in ops), _to_cupy(lse), causal=is_causal,
            softmax_scale=scale, grads=tuple(_to_cupy(g, False) for g in (dq, dk_h, dv_h)),
            variant=_variant(q, k, window)))
    ptrs = [x.data_ptr() for x in (do, q, k, v, o)]
    work = q.new_empty((call.workspace_bytes,), dtype=torch.uint8)  # freed in stream order
    _run(call, index, {"do": ptrs[0], "q": ptrs[1], "k": ptrs[2], "v": ptrs[3], "o": ptrs[4],
                       "lse": lse.data_ptr(), "dq": dq.data_ptr(), "dk": dk_h.data_ptr(),
                       "dv": dv_h.data_ptr()}, work.data_ptr())
    if group > 1:  # query heads h * group .. h * group + group - 1 read key/value head h
        for per_head, out in ((dk_h, dk), (dv_h, dv)):
            torch.sum(per_head.unflatten(1, (k.shape[1], group)), dim=2, out=out)
    return dq, dk, dv


# ------------------------------------------------------- dispatch: prepared, else the CuPy API

def _forward(q, k, v, is_causal: bool, scale: float, window=None):
    """(o, lse): o like q (_out_like on the prepared path, else contiguous), lse (B, H, Nq)
    float32, the logsumexp the backward takes. window: None or (left, right); k, v may have
    fewer heads than q (GQA, checked by the caller)."""
    kernel = _fast(q)
    if kernel is not None:
        return _prepared_forward(kernel, q, k, v, is_causal, scale, window)
    with _Stream(q.device):
        o, lse = _flash_attention(_to_cupy(q), _to_cupy(k), _to_cupy(v), causal=is_causal,
                                  softmax_scale=scale, return_lse=True, window=window)
        return _to_torch(o, q.dtype), _to_torch(lse, torch.float32)


def _backward_kernels(do, q, k, v, o, lse, is_causal: bool, scale: float, window=None):
    kernel = _fast(q, "backward")
    if kernel is not None:
        return _prepared_backward(kernel, do, q, k, v, o, lse, is_causal, scale, window)
    with _Stream(q.device):
        dq, dk, dv = _flash_attention_backward(
            _to_cupy(do), _to_cupy(q), _to_cupy(k), _to_cupy(v), _to_cupy(o), _to_cupy(lse),
            causal=is_causal, softmax_scale=scale, window=window)
        return tuple(_to_torch(g, q.dtype) for g in (dq, dk, dv))


def _window(window_left: int, window_right: int):
    """The custom ops' window arguments as the kernels take them: (-1, -1) is no window."""
    return None if (window_left, window_right) == (-1, -1) else (window_left, window_right)


@torch.library.custom_op("flashlab::attention_forward", mutates_args=())
def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool,
                      scale: float, window_left: int,
                      window_right: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(o, lse): o like q, lse (B, H, Nq) float32, the logsumexp the backward takes; k, v
    may have fewer heads (GQA); window (-1, -1): none."""
    return _forward(q, k, v, is_causal, scale, _window(window_left, window_right))


@attention_forward.register_fake
def _(q, k, v, is_causal, scale, window_left, window_right):
    return _out_like(q, _writes_strided(q)), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("flashlab::attention_backward", mutates_args=())
def attention_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       o: torch.Tensor, lse: torch.Tensor, is_causal: bool, scale: float,
                       window_left: int,
                       window_right: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward_kernels(do, q, k, v, o, lse, is_causal, scale,
                             _window(window_left, window_right))


@attention_backward.register_fake
def _(do, q, k, v, o, lse, is_causal, scale, window_left, window_right):
    strided = _writes_strided(q, "backward")  # laid out as _prepared_backward (or the CuPy API) lays them out
    return _out_like(q, strided), _out_like(k, strided), _out_like(v, strided)


def _setup_context(ctx, inputs, output):
    q, k, v, is_causal, scale, window_left, window_right = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse)
    ctx.is_causal, ctx.scale, ctx.window = is_causal, scale, (window_left, window_right)


def _backward(ctx, do, dlse):
    q, k, v, o, lse = ctx.saved_tensors
    dq, dk, dv = attention_backward(do, q, k, v, o, lse, ctx.is_causal, ctx.scale, *ctx.window)
    return dq, dk, dv, None, None, None, None


attention_forward.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------- the C++ launch path

# (dtypes, devices, shapes, strides of q, k, v, is_causal, scale as given) -> (the extension's
# attention, forward plan, backward plan, and the two Prepared calls they were made from): a hit
# was checked when it was stored
_native: dict = {}


def _native_entry(kernel: str, q, k, v, is_causal: bool, scale: float):
    """(attention, forward plan, backward plan, forward and backward Prepared) of
    flashlab.native for these operands, or None (not built, or rows the kernels cannot read in
    place: the Python path copies them). The backward is prepared for dO laid out as o (what a
    model's o.transpose(1, 2).reshape gives back); another layout is copied into that one."""
    from . import native

    ext = native.module()
    if ext is None or not (_in_place(kernel, q) and _in_place(kernel, k) and _in_place(kernel, v)):
        return None
    from . import launch

    o = _out_like(q, _strided[kernel])  # as the extension lays it out (contiguous for fa2's q)
    lse = q.new_empty(q.shape[:3], dtype=torch.float32)
    cq, ck, cv, co = (_to_cupy(x, False) for x in (q, k, v, o))
    fwd = launch.prepare_forward(kernel, cq, ck, cv, co, causal=is_causal, softmax_scale=scale)
    grads = tuple(_to_cupy(_out_like(x, _strided[kernel]), False) for x in (q, k, v))
    bwd = launch.prepare_backward(kernel, co, cq, ck, cv, co, _to_cupy(lse), causal=is_causal,
                                  softmax_scale=scale, grads=grads)
    with torch.cuda.device(q.get_device()):  # the plans take q's device's (primary) context
        # the Prepared calls ride along: they hold the kernels whose handles the plans launch
        # (compiler's module cache holds them too, for the process)
        return (ext.attention, native.plan(ext, fwd, native.FORWARD_BUFFERS),
                native.plan(ext, bwd, native.BACKWARD_BUFFERS, o.stride()), fwd, bwd)


def flash_attention(q, k, v, is_causal: bool = False, scale=None, *, enable_gqa=False,
                    window=None, mask_mod=None, score_mod=None, causal=None, softmax_scale=None):
    """softmax(scale q k^T) v for torch CUDA tensors q (B, H, Nq, d), k, v (B, H, Nk, d) of one
    dtype (float16, bfloat16 or float32), differentiable, traceable by torch.compile. As
    torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=, scale=,
    enable_gqa=); `causal` and `softmax_scale` are the older names of the same arguments.

    enable_gqa=True lets k, v have H_kv heads dividing H, and window=(left, right) lets query i
    see keys i - left .. i + right (-1: unbounded; flashlab.flash_attention's window=). Both
    take the same path as plain calls (prepared once per shape, a custom op under torch.compile,
    capturable in a CUDA graph), with the variant compiled into the kernels. mask_mod(b, h,
    q_idx, kv_idx) and score_mod(score, b, h, q_idx, kv_idx) (flashlab.mods) run eagerly
    (flashlab.torch_variants): under torch.compile such a call is a graph break."""
    if causal is not None:
        is_causal = causal
    if softmax_scale is not None:
        scale = softmax_scale
    if mask_mod is not None or score_mod is not None:
        return _with_variant(q, k, v, is_causal, scale, enable_gqa,
                             {n: x for n, x in (("window", window), ("mask_mod", mask_mod),
                                                ("score_mod", score_mod)) if x is not None})
    key = None
    if window is None and not torch.compiler.is_compiling():  # one lookup, then C++
        try:
            key = (q.dtype, k.dtype, v.dtype, q.get_device(), k.get_device(), v.get_device(),
                   q.shape, k.shape, v.shape, q.stride(), k.stride(), v.stride(), is_causal, scale)
        except AttributeError:  # not tensors: the checks below say so
            key = None
        hit = _native.get(key)
        if hit is not None and not (q.data_ptr() | k.data_ptr() | v.data_ptr()) & 15:
            return hit[0](q, k, v, hit[1], hit[2])
    return _checked(q, k, v, is_causal, scale, key, bool(enable_gqa), _window_arg(window))


def _window_arg(window):
    """window= as (left, right) ints >= -1, or None; else a ValueError naming it."""
    if window is None:
        return None
    ok = isinstance(window, (tuple, list)) and len(window) == 2 and all(
        isinstance(w, int) and not isinstance(w, bool) and w >= -1 for w in window)
    if not ok:
        raise ValueError(f"flashlab.torch.flash_attention: window must be (left, right), two "
                         f"ints >= -1 (-1: unbounded on that side), got {window!r}")
    return None if tuple(window) == (-1, -1) else (int(window[0]), int(window[1]))


def _operands(q, k, v, gqa: bool) -> None:
    """Each operand a 4-d CUDA tensor of a dtype the kernels take, all on one device, of one
    dtype, and k, v with q's heads unless GQA is asked for (SDPA's enable_gqa)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check(name, x)
    if not (q.get_device() == k.get_device() == v.get_device()):
        raise ValueError(f"flashlab.torch.flash_attention: q, k, v must be on one device; got "
                         f"{q.device}, {k.device}, {v.device}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"flashlab.torch.flash_attention: q, k, v must share one dtype; got "
                        f"{q.dtype}, {k.dtype}, {v.dtype}")
    if not gqa and (k.shape[1] != q.shape[1] or v.shape[1] != q.shape[1]):
        raise ValueError(f"flashlab.torch.flash_attention: k and v have {k.shape[1]} and "
                         f"{v.shape[1]} heads, q {q.shape[1]}: pass enable_gqa=True for "
                         f"grouped-query attention (as SDPA takes it)")
    if k.shape[1] != v.shape[1] or q.shape[1] % k.shape[1]:
        raise ValueError(f"flashlab.torch.flash_attention: k and v have {k.shape[1]} and "
                         f"{v.shape[1]} heads, q {q.shape[1]}: with enable_gqa=True k and v "
                         f"need one number of heads that divides q's")


@torch.compiler.disable  # a mod is a Python function: eager, a graph break under torch.compile
def _with_variant(q, k, v, is_causal, scale, enable_gqa, variant: dict):
    """flash_attention with mask_mod or score_mod (and any window, GQA): checked here, run by
    flashlab.torch_variants (the CuPy API's variant builds)."""
    from . import torch_variants

    _operands(q, k, v, gqa=bool(enable_gqa))
    scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
    return torch_variants.attention(q, k, v, bool(is_causal), scale, variant)


def _checked(q, k, v, is_causal, scale, key, gqa: bool = False, window=None):
    """flash_attention after its checks: the custom op under torch.compile; else the C++ path
    (stored under `key` for the next call) where it is built (plain attention), else the
    Python one."""
    is_causal = bool(is_causal)
    _operands(q, k, v, gqa=gqa)
    scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
    if torch.compiler.is_compiling():  # the custom op: traced without a graph break
        return attention_forward(q, k, v, is_causal, scale, *(window or (-1, -1)))[0]
    kernel = _fast(q)
    plain = window is None and k.shape[1] == q.shape[1]
    if plain and kernel is not None and key is not None and not (q.data_ptr() | k.data_ptr() |
                                                                 v.data_ptr()) & 15:
        entry = _native_entry(kernel, q, k, v, is_causal, scale)
        if entry is not None:
            if len(_native) >= _CALLS_MAX:  # shapes that keep changing: start over
                _native.clear()
            _native[key] = entry
            return entry[0](q, k, v, entry[1], entry[2])
    # the Python path: torch.library's Python dispatch costs about 0.35 ms a call (measured on
    # the H200), several times the kernel at small shapes, so outside torch.compile the same
    # kernels run through a plain autograd.Function (torch_bridge.attention)
    return _attention((_forward, _backward_kernels), q, k, v, is_causal, scale, window)
