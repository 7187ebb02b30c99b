"""Attention variants on the GPU: flashlab's tensor-core kernel with the variant compiled in,
against FlexAttention (torch.compile'd flex_attention with its block mask) on the same variant,
and SDPA's flash backend where it has the variant (causal). `flashlab bench --variant ...
--compare flex` and scripts/gpu_check.sh's `variants` mode run it.

    rows = variant_bench(["window=1024", "alibi"], d=128, seq=4096, batch=4, heads=16)

Each row is checked before it is timed: flashlab's output and dQ on query rows 0..127 of the
first head against the float64 reference of the same variant (flashlab.reference.variants) by
FlashAttention's rule (flashlab.lowp); a row that fails is reported WRONG and not timed. Times:
median ms of queued calls between CUDA events (timing.time_gpu), forward, and forward plus
backward (flashlab: launch.forward then launch.backward; the peers: autograd), on one stream.
"""
from __future__ import annotations

import numpy as np

DEFAULTS = {"window": 1024, "softcap": 30.0, "gqa": 4}
NAMES = ("causal", "causal-mask", "window", "document", "alibi", "softcap", "gqa")
HELP = ("causal (built-in), causal-mask (causal as a mask_mod), window[=LEFT] (sliding window, "
        "causal, default 1024), document (5 packed documents, causal), alibi (causal), "
        "softcap[=C] (causal, default 30), gqa[=G] (G query heads per key/value head, causal, "
        "default 4), or all")


def parse(spec: str) -> list[tuple[str, float | None]]:
    """'window=512,alibi' -> [("window", 512), ("alibi", None)]; 'all' -> every variant with its
    default. A ValueError names what is wrong."""
    out = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part == "all":
            out += [(n, DEFAULTS.get(n)) for n in NAMES]
            continue
        name, _, value = part.partition("=")
        if name not in NAMES:
            raise ValueError(f"--variant {part}: unknown; choose {HELP}")
        if value and name not in DEFAULTS:
            raise ValueError(f"--variant {part}: {name} takes no value")
        try:
            v = float(value) if value else DEFAULTS.get(name)
        except ValueError:
            raise ValueError(f"--variant {part}: {value!r} is not a number") from None
        if name in ("window", "gqa") and v is not None and (v != int(v) or v < 1):
            raise ValueError(f"--variant {part}: {name} needs a whole number >= 1")
        if name == "softcap" and v is not None and v <= 0:
            raise ValueError(f"--variant {part}: the cap must be > 0")
        out.append((name, v))
    if not out:
        raise ValueError(f"--variant: name at least one of {HELP}")
    return out


def label(name: str, value) -> str:
    return name if value is None else f"{name}={value:g}"


def _variant(name: str, value, N: int, H: int):
    """(flashlab keywords, flex mask_mod, flex score_mod or None, causal, H_kv) for one variant
    at N tokens and H query heads."""
    import torch

    from .. import mods

    lengths = np.array([512, 1024, 256, 768, 1536])  # packed documents, in proportion to N
    doc = np.repeat(np.arange(len(lengths)), (lengths * N) // lengths.sum())
    doc = np.concatenate([doc, np.full(N - len(doc), doc[-1])])
    tdoc = torch.as_tensor(doc, device="cuda")
    slopes = 2.0 ** (-8.0 * (np.arange(H) + 1) / H)
    tslopes = torch.as_tensor(slopes, device="cuda", dtype=torch.float32)

    def causal(b, h, q, kv):
        return q >= kv

    if name == "causal":
        return {}, causal, None, True, H
    if name == "causal-mask":
        return {"mask_mod": mods.causal()}, causal, None, False, H
    if name == "window":
        left = int(value)
        return ({"window": (left, 0)}, lambda b, h, q, kv: (q >= kv) & (q - kv <= left), None,
                False, H)
    if name == "document":
        return ({"mask_mod": mods.document(doc)},
                lambda b, h, q, kv: (tdoc[q] == tdoc[kv]) & (q >= kv), None, True, H)
    if name == "alibi":
        return ({"score_mod": mods.alibi(slopes)}, causal,
                lambda s, b, h, q, kv: s + tslopes[h] * (kv - q), True, H)
    if name == "softcap":
        c = float(value)
        return ({"score_mod": mods.softcap(c)}, causal,
                lambda s, b, h, q, kv: c * torch.tanh(s / c), True, H)
    if name == "gqa":
        if H % int(value):
            raise ValueError(f"--variant gqa={value:g}: {H} heads do not split into groups of "
                             f"{value:g}")
        return {}, causal, None, True, H // int(value)
    raise AssertionError(name)


def _check(q, k, v, do, o, dq, causal, kw, rows=128) -> float:
    """FlashAttention's rule on query rows 0..rows-1 of head (0, 0) (they see the same keys
    with or without the later rows): the worst of err / bound over o and dQ (inf on a NaN)."""
    from .. import lowp
    from ..reference.variants import variant_attention, variant_attention_backward
    from .torch_peers import _to_cupy

    hq, hk, hv, hdo = (_to_cupy(x[:1, :1]).get() for x in (q, k, v, do))  # bf16 on the host
    dtype = "bfloat16"
    hq, hdo = hq[:, :, :rows], hdo[:, :, :rows]
    as64 = [lowp.to_float32(x).astype(np.float64) for x in (hq, hk, hv, hdo)]
    worst = 0.0
    o64, _ = variant_attention(*as64[:3], causal, **kw)
    o16, _ = variant_attention(hq, hk, hv, causal, stored=dtype, **kw)
    g64 = variant_attention_backward(as64[3], *as64[:3], causal, **kw)[0]
    g16 = variant_attention_backward(hdo, hq, hk, hv, causal, stored=dtype, **kw)[0]
    for out, ref, naive in ((o, o64, o16), (dq, g64, g16)):
        got = out[:1, :1, :rows].get()
        try:
            _, err, bound = lowp.within_fa_rule(got, ref, naive)
        except ValueError:
            return float("inf")
        worst = max(worst, err / bound)
    return worst


def _times(fwd, both, repeat) -> tuple[float, float]:
    """(forward ms, forward + backward ms): time_gpu's medians."""
    from .timing import time_gpu

    return (time_gpu(fwd, [None], warmup=3, repeat=repeat)[0],
            time_gpu(both, [None], warmup=3, repeat=repeat)[0])


def _flashlab(q, k, v, do, causal, kw, repeat, check):
    import cupy as cp

    from .. import launch
    from ..mods.kernel import KernelVariant
    from .torch_peers import _to_cupy

    cq, ck, cv, cdo = (_to_cupy(x) for x in (q, k, v, do))  # zero-copy
    variant = None if not kw and q.shape[1] == k.shape[1] else KernelVariant.of(
        kw.get("window"), kw.get("mask_mod"), kw.get("score_mod"))
    out = (cp.empty(cq.shape, cq.dtype), cp.empty(cq.shape[:3], cp.float32))
    grads = (cp.empty(cq.shape, cq.dtype), cp.empty(ck.shape, cq.dtype),
             cp.empty(ck.shape, cq.dtype))

    def fwd(_=None):
        launch.forward("tc", cq, ck, cv, causal, out=out, variant=variant)

    def both(_=None):
        fwd()
        launch.backward("tc", cdo, cq, ck, cv, *out, causal, out=grads, variant=variant)

    both()
    worst = _check(q, k, v, do, out[0], grads[0], causal, kw) if check else None
    if worst is not None and not worst <= 1.0:
        return worst, None, None
    return (worst, *_times(fwd, both, repeat))


def _flex(q, k, v, do, mask, score, repeat):
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    B, H, N, d = q.shape
    bm = create_block_mask(mask, None, None, N, N, device="cuda")
    flex = torch.compile(flex_attention, dynamic=False)
    gqa = k.shape[1] != H
    tq, tk, tv = (x.detach().requires_grad_() for x in (q, k, v))

    def fwd(_=None):
        with torch.no_grad():
            flex(q, k, v, score_mod=score, block_mask=bm, enable_gqa=gqa)

    def both(_=None):
        o = flex(tq, tk, tv, score_mod=score, block_mask=bm, enable_gqa=gqa)
        torch.autograd.grad(o, (tq, tk, tv), do)

    return _times(fwd, both, repeat)


def _sdpa_flash(q, k, v, do, repeat):
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    tq, tk, tv = (x.detach().requires_grad_() for x in (q, k, v))

    def fwd(_=None):
        with torch.no_grad(), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            sdpa(q, k, v, is_causal=True)

    def both(_=None):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            o = sdpa(tq, tk, tv, is_causal=True)
        torch.autograd.grad(o, (tq, tk, tv), do)

    return _times(fwd, both, repeat)


def variant_bench(variants, d: int, seq: int = 4096, batch: int = 4, heads: int = 16,
                  repeat: int = 20, compare=("flex",), check: bool = True, progress=None):
    """One row per (name, value) of `variants` (parse's list): flashlab's forward and forward +
    backward ms, and Flex's (compare has "flex") and SDPA flash's (causal, full heads) on the
    same bf16 inputs. Needs CuPy, torch and a CUDA GPU."""
    import torch

    # one torch.compile'd flex_attention per variant and direction: more recompiles than
    # dynamo's default limit of 8, past which it falls back to the unfused (S materialised) path
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
    rows = []
    for name, value in variants:
        kw, mask, score, causal, Hkv = _variant(name, value, seq, heads)
        if progress:
            progress(f"{label(name, value)} d={d}")
        g = torch.Generator(device="cuda").manual_seed(0)
        q, do = (torch.randn((batch, heads, seq, d), device="cuda", dtype=torch.bfloat16,
                             generator=g) for _ in range(2))
        k, v = (torch.randn((batch, Hkv, seq, d), device="cuda", dtype=torch.bfloat16,
                            generator=g) for _ in range(2))
        row = {"variant": label(name, value), "d": d}
        row["check"], row["flashlab_fwd"], row["flashlab_fwdbwd"] = _flashlab(
            q, k, v, do, causal, kw, repeat, check)
        if row["flashlab_fwd"] is not None and "flex" in compare:
            try:
                row["flex_fwd"], row["flex_fwdbwd"] = _flex(q, k, v, do, mask, score, repeat)
            except Exception as e:  # say what failed, keep the other rows
                row["flex_error"] = f"{type(e).__name__}: {e}"[:300]
        if row["flashlab_fwd"] is not None and name == "causal":
            row["sdpa_flash_fwd"], row["sdpa_flash_fwdbwd"] = _sdpa_flash(q, k, v, do, repeat)
        rows.append(row)
    return rows


def table(rows) -> tuple[list, list]:
    """(headers, rows) for tabulate: ms forward and backward (forward + backward minus forward),
    and each peer's time over flashlab's (above 1: flashlab is faster)."""
    headers = ["d", "variant", "check", "flashlab fwd", "flex fwd", "flex/flashlab",
               "flashlab bwd", "flex bwd", "flex/flashlab"]
    out = []
    for r in rows:
        chk = "-" if r["check"] is None else \
            (f"ok ({r['check']:.2f})" if r["check"] <= 1.0 else f"WRONG ({r['check']:.3g})")
        if r["flashlab_fwd"] is None:
            out.append([r["d"], r["variant"], chk] + ["not timed"] * 6)
            continue
        fb = r["flashlab_fwdbwd"] - r["flashlab_fwd"]
        line = [r["d"], r["variant"], chk, f"{r['flashlab_fwd']:.3f}"]
        if "flex_fwd" in r:
            xb = r["flex_fwdbwd"] - r["flex_fwd"]
            line += [f"{r['flex_fwd']:.3f}", f"{r['flex_fwd'] / r['flashlab_fwd']:.2f}x",
                     f"{fb:.3f}", f"{xb:.3f}", f"{xb / fb:.2f}x"]
        else:
            line += [r.get("flex_error", "-"), "-", f"{fb:.3f}", "-", "-"]
        out.append(line)
    return headers, out
