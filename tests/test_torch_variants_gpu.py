"""GPU: flashlab.torch.flash_attention's attention variants (flashlab.torch_variants): GQA with
enable_gqa=True, window=, mask_mod=, score_mod=, forward and gradients within FlashAttention's
rule against the float64 oracle (the yardstick: the same variant unfused in the dtype); errors
that name the argument; GQA and window= through the custom op under torch.compile(fullgraph=True)
and in a CUDA graph; mask_mod / score_mod under torch.compile a graph break that runs eagerly."""
import numpy as np
import pytest

from flashlab import lowp, mods
from flashlab.reference.variants import variant_attention, variant_attention_backward
from graph_replay import check_replay_matches_eager

pytestmark = pytest.mark.gpu

VARIANTS = {
    "window, causal": (dict(window=(24, 0)), True, (2, 2)),
    "softcap": (dict(score_mod=mods.softcap(2.0)), False, (2, 2)),
    "document mask": (dict(mask_mod=mods.document(np.repeat(np.arange(4), 50)[:190])), False,
                      (2, 2)),
    "GQA 4 on 2, alibi, causal": (dict(score_mod=mods.alibi([0.5, 0.25, 0.1, 0.3])), True, (4, 2)),
    "GQA 4 on 1 alone": ({}, False, (4, 1)),
}


def _torch():
    return pytest.importorskip("torch")


def _inputs(torch, dt, H, Hkv, N=190, d=64, seed=0):
    """q, k, v as (B, N, H, d) projections seen as (B, H, N, d) (strided, as a model's), dO."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn((1, N, H, d), device="cuda", generator=g).to(dt).transpose(1, 2)
    k, v = (torch.randn((1, N, Hkv, d), device="cuda", generator=g).to(dt).transpose(1, 2)
            for _ in range(2))
    do = torch.randn((1, H, N, d), device="cuda", generator=g).to(dt)
    return q, k, v, do


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("name", VARIANTS)
def test_a_variant_through_torch_matches_the_oracle(dtype, name):
    torch = _torch()
    import flashlab.torch as ft

    kw, causal, (H, Hkv) = VARIANTS[name]
    dt = getattr(torch, dtype)
    q, k, v, do = _inputs(torch, dt, H, Hkv)
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    o = ft.flash_attention(*leaves, is_causal=causal, enable_gqa=Hkv != H, **kw)
    o.backward(do)
    assert o.shape == q.shape and o.dtype == dt
    assert [x.grad.shape for x in leaves] == [q.shape, k.shape, v.shape]
    host = [x.detach().float().cpu().numpy() for x in (q, k, v, do)]
    if dtype == "bfloat16":
        host = [lowp.from_float32(x, "bfloat16") for x in host]
    as64 = [lowp.to_float32(x).astype(np.float64) for x in host]
    o64, _ = variant_attention(*as64[:3], causal, **kw)
    g64 = variant_attention_backward(as64[3], *as64[:3], causal, **kw)
    stored = None if dtype == "float32" else dtype  # unfused, in the dtype
    o_n, _ = variant_attention(*host[:3], causal, stored=stored, **kw)
    g_n = variant_attention_backward(host[3], *host[:3], causal, stored=stored, **kw)
    for label, out, ref, naive in zip(("o", "dq", "dk", "dv"), (o, *(x.grad for x in leaves)),
                                      (o64, *g64), (o_n, *g_n)):
        got = out.detach().float().cpu().numpy()
        assert np.isfinite(got).all(), label  # rows no key sees give 0, not NaN
        ok, err, bound = lowp.within_fa_rule(got, ref, naive, slack=1e-5)
        assert ok, f"{label}: error {err:.3g} > bound {bound:.3g}"


def test_gqa_matches_sdpas_enable_gqa():
    torch = _torch()
    import torch.nn.functional as F

    import flashlab.torch as ft

    q, k, v, _ = _inputs(torch, torch.bfloat16, 8, 2)
    o = ft.flash_attention(q, k, v, is_causal=True, enable_gqa=True)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert float((o.float() - ref.float()).abs().max()) < 2e-2


def test_fewer_kv_heads_without_enable_gqa_is_refused_naming_it():
    torch = _torch()
    import flashlab.torch as ft

    q, k, v, _ = _inputs(torch, torch.bfloat16, 4, 2)
    with pytest.raises(ValueError, match=r"k and v have 2 and 2 heads, q 4: pass "
                                         r"enable_gqa=True"):
        ft.flash_attention(q, k, v)
    with pytest.raises(ValueError, match=r"pass enable_gqa=True"):
        ft.flash_attention(q, k, v, window=(8, 0))  # a variant alone does not imply GQA


def test_a_variant_under_torch_compile_is_a_graph_break_that_runs_eagerly():
    torch = _torch()
    import flashlab.torch as ft

    q, k, v, _ = _inputs(torch, torch.bfloat16, 2, 2)
    cap = mods.softcap(2.0)

    def f(q, k, v):
        return ft.flash_attention(q, k, v, score_mod=cap).float().sum(-1)

    torch.compiler.reset()
    assert torch.equal(torch.compile(f)(q, k, v), f(q, k, v))


def _gqa_block(torch, ft, C=256, H=8, Hkv=2, window=(64, 0)):
    """A Llama-style attention block: 8 query heads on 2 key/value heads, a sliding window."""

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.d = C // H
            self.q = torch.nn.Linear(C, C)
            self.kv = torch.nn.Linear(C, 2 * Hkv * self.d)
            self.proj = torch.nn.Linear(C, C)

        def forward(self, x):
            B, T, _ = x.shape
            q = self.q(x).view(B, T, H, self.d).transpose(1, 2)
            k, v = (t.transpose(1, 2) for t in self.kv(x).view(B, T, 2, Hkv, self.d).unbind(2))
            y = ft.flash_attention(q, k, v, is_causal=True, enable_gqa=True, window=window)
            return self.proj(y.transpose(1, 2).reshape(B, T, C))

    return Block()


def test_gqa_and_a_window_compile_with_fullgraph_and_match_eager():
    torch = _torch()
    import flashlab.torch as ft

    torch.manual_seed(0)
    model = _gqa_block(torch, ft).cuda().to(torch.bfloat16)
    x = torch.randn(2, 200, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    eager = model(x)
    eager.float().pow(2).mean().backward()
    grad = x.grad.clone()
    x.grad = None
    torch.compiler.reset()
    out = torch.compile(model, fullgraph=True)(x)  # a graph break would raise here
    out.float().pow(2).mean().backward()
    assert torch.equal(out, eager)
    assert float((x.grad - grad).abs().max()) <= 1e-2 * float(grad.abs().max())


def test_gqa_and_a_window_capture_in_a_cuda_graph_and_replay_like_eager():
    torch = _torch()
    import flashlab.torch as ft

    torch.manual_seed(0)
    check_replay_matches_eager(torch, _gqa_block(torch, ft).cuda().to(torch.bfloat16),
                               (2, 200, 256), torch.bfloat16)
