"""Attention variants: flashlab's tensor-core kernel with the variant compiled in, against
FlexAttention (torch.compile'd flex_attention with its block mask) on the same variant, and SDPA
flash where it has one (causal). Forward, and forward + backward (autograd for the peers; for
flashlab the forward and flashlab.launch.backward), in ms, CUDA events, same stream, same inputs.

    python scripts/variants_bench.py --out DIR [--dims 64,128] [--seq 4096] [--repeat 20]

Writes DIR/variants.json and prints a markdown table (the issue's shape: B=4, H=16, bf16).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _variants(N: int, H: int):
    """name -> (flashlab keywords, flex mask_mod or None, flex score_mod or None, causal, H_kv)."""
    import torch

    from flashlab import mods

    lengths = np.array([512, 1024, 256, 768, 1536])  # packed documents, 4096 positions
    doc = np.repeat(np.arange(len(lengths)), (lengths * N) // lengths.sum())
    doc = np.concatenate([doc, np.full(N - len(doc), doc[-1])])
    tdoc = torch.as_tensor(doc, device="cuda")
    slopes = 2.0 ** (-8.0 * (np.arange(H) + 1) / H)
    tslopes = torch.as_tensor(slopes, device="cuda", dtype=torch.float32)

    def causal(b, h, q, kv):
        return q >= kv

    def window(b, h, q, kv):
        return (q >= kv) & (q - kv <= 1024)

    def document(b, h, q, kv):
        return (tdoc[q] == tdoc[kv]) & (q >= kv)

    def alibi(score, b, h, q, kv):
        return score + tslopes[h] * (kv - q)

    def softcap(score, b, h, q, kv):
        return 30.0 * torch.tanh(score / 30.0)

    return {
        "causal (built-in)": (dict(), causal, None, True, H),
        "causal as mask_mod": (dict(mask_mod=mods.causal()), causal, None, False, H),
        "sliding window 1024": (dict(window=(1024, 0)), window, None, False, H),
        "document (5 docs), causal": (dict(mask_mod=mods.document(doc)), document, None, True, H),
        "ALiBi, causal": (dict(score_mod=mods.alibi(slopes)), causal, alibi, True, H),
        "softcap 30, causal": (dict(score_mod=mods.softcap(30.0)), causal, softcap, True, H),
        "GQA 16 on 4, causal": (dict(), causal, None, True, H // 4),
    }


def _time(fn, repeat: int) -> float:
    """Median ms of fn() (flashlab.bench.timing.time_gpu: CUDA events on the null stream, which
    torch's default stream is too)."""
    from flashlab.bench.timing import time_gpu

    return time_gpu(lambda _: fn(), [None], warmup=3, repeat=repeat)[0]


def _flashlab(q, k, v, do, causal, kw, repeat):
    import cupy as cp

    from flashlab import launch
    from flashlab.bench.torch_peers import _to_cupy
    from flashlab.mods.kernel import KernelVariant

    cq, ck, cv, cdo = (_to_cupy(x) for x in (q, k, v, do))  # zero-copy
    variant = None if not kw and q.shape[1] == k.shape[1] else KernelVariant.of(
        kw.get("window"), kw.get("mask_mod"), kw.get("score_mod"))
    out = (cp.empty(cq.shape, cq.dtype), cp.empty(cq.shape[:3], cp.float32))
    grads = (cp.empty(cq.shape, cq.dtype), cp.empty(ck.shape, cq.dtype), cp.empty(ck.shape, cq.dtype))

    def fwd():
        launch.forward("tc", cq, ck, cv, causal, out=out, variant=variant)

    def both():
        fwd()
        launch.backward("tc", cdo, cq, ck, cv, *out, causal, out=grads, variant=variant)

    return _time(fwd, repeat), _time(both, repeat)


def _flex(q, k, v, do, mask, score, repeat):
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    B, H, N, d = q.shape
    bm = create_block_mask(mask, None, None, N, N, device="cuda")
    flex = torch.compile(flex_attention, dynamic=False)
    gqa = k.shape[1] != H
    tq, tk, tv = (x.detach().requires_grad_() for x in (q, k, v))

    def fwd():
        with torch.no_grad():
            flex(q, k, v, score_mod=score, block_mask=bm, enable_gqa=gqa)

    def both():
        o = flex(tq, tk, tv, score_mod=score, block_mask=bm, enable_gqa=gqa)
        torch.autograd.grad(o, (tq, tk, tv), do)

    return _time(fwd, repeat), _time(both, repeat)


def _sdpa_flash(q, k, v, do, repeat):
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    tq, tk, tv = (x.detach().requires_grad_() for x in (q, k, v))

    def fwd():
        with torch.no_grad(), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            sdpa(q, k, v, is_causal=True)

    def both():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            o = sdpa(tq, tk, tv, is_causal=True)
        torch.autograd.grad(o, (tq, tk, tv), do)

    return _time(fwd, repeat), _time(both, repeat)


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--only", default="", help="comma-separated variant names (substrings)")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    # one torch.compile'd flex_attention per variant and direction: more recompiles than dynamo's
    # default limit of 8, past which it falls back to the unfused (S materialised) path
    torch._dynamo.config.recompile_limit = 256
    rows = []
    for d in (int(x) for x in a.dims.split(",")):
        for name, (kw, mask, score, causal, Hkv) in _variants(a.seq, a.heads).items():
            if a.only and not any(s in name for s in a.only.split(",")):
                continue
            g = torch.Generator(device="cuda").manual_seed(0)
            shape_q, shape_kv = (a.batch, a.heads, a.seq, d), (a.batch, Hkv, a.seq, d)
            q, do = (torch.randn(shape_q, device="cuda", dtype=torch.bfloat16, generator=g)
                     for _ in range(2))
            k, v = (torch.randn(shape_kv, device="cuda", dtype=torch.bfloat16, generator=g)
                    for _ in range(2))
            row = {"variant": name, "d": d}
            row["flashlab_fwd"], row["flashlab_fwdbwd"] = _flashlab(q, k, v, do, causal, kw,
                                                                    a.repeat)
            try:
                row["flex_fwd"], row["flex_fwdbwd"] = _flex(q, k, v, do, mask, score, a.repeat)
            except Exception as e:  # say what failed, keep the other rows
                row["flex_error"] = f"{type(e).__name__}: {e}"[:300]
            if name.startswith("causal (built-in)") or name.startswith("GQA"):
                if Hkv == a.heads:
                    row["sdpa_flash_fwd"], row["sdpa_flash_fwdbwd"] = _sdpa_flash(q, k, v, do,
                                                                                  a.repeat)
            rows.append(row)
            print(json.dumps(row), flush=True)
    (a.out / "variants.json").write_text(json.dumps(
        {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "B": a.batch,
         "H": a.heads, "N": a.seq, "dtype": "bfloat16", "rows": rows}, indent=1))
    print("\n| d | variant | flashlab fwd | flex fwd | fwd ratio | flashlab bwd | flex bwd | "
          "bwd ratio |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "flex_fwd" not in r:
            print(f"| {r['d']} | {r['variant']} | {r['flashlab_fwd']:.3f} | {r.get('flex_error')} |")
            continue
        fb, xb = r["flashlab_fwdbwd"] - r["flashlab_fwd"], r["flex_fwdbwd"] - r["flex_fwd"]
        print(f"| {r['d']} | {r['variant']} | {r['flashlab_fwd']:.3f} | {r['flex_fwd']:.3f} | "
              f"{r['flex_fwd'] / r['flashlab_fwd']:.2f}x | {fb:.3f} | {xb:.3f} | "
              f"{xb / fb:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
