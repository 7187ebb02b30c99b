"""GPU: flashlab.torch.flash_attention as a torch custom op: float16 and bfloat16 (tensor cores)
within FlashAttention's rule against float64, forward and gradients; SDPA's argument names;
torch.compile(fullgraph=True) traces a model that calls it, and gives eager's numbers."""
import numpy as np
import pytest

from flashlab import lowp

pytestmark = pytest.mark.gpu


def _torch():
    return pytest.importorskip("torch")


def _sdpa(q, k, v, is_causal, backend=None):
    torch = _torch()
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if backend is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("B,H,Nq,Nk,d", [(2, 3, 200, 200, 64), (1, 2, 130, 300, 128)])
def test_16_bit_forward_and_gradients_within_fa_rule(dtype, is_causal, B, H, Nq, Nk, d):
    torch = _torch()
    import flashlab.torch as ft

    dt = getattr(torch, dtype)
    g = torch.Generator(device="cuda").manual_seed(Nq + d)
    q, k, v = (torch.randn(s, device="cuda", generator=g).to(dt)
               for s in ((B, H, Nq, d), (B, H, Nk, d), (B, H, Nk, d)))
    do = torch.randn((B, H, Nq, d), device="cuda", generator=g).to(dt)
    ours = [x.clone().requires_grad_() for x in (q, k, v)]
    o = ft.flash_attention(*ours, is_causal=is_causal)
    o.backward(do)
    assert o.dtype == dt and o.shape == (B, H, Nq, d)
    # the yardsticks the tc kernel's own tests use (flashlab.lowp): the float64 oracle on the same
    # 16-bit inputs, and standard attention with every stored matrix rounded to the dtype
    host = [lowp.from_float32(x.float().cpu().numpy(), dtype) for x in (q, k, v, do)]
    o64, _, dq64, dk64, dv64 = lowp.attention_oracle(*host, is_causal)
    o16, _ = lowp.naive_lowp_forward(*host[:3], is_causal)
    dq16, dk16, dv16 = lowp.naive_lowp_backward(host[3], *host[:3], is_causal)
    for label, a, r, n in (("o", o, o64, o16), ("dq", ours[0].grad, dq64, dq16),
                           ("dk", ours[1].grad, dk64, dk16), ("dv", ours[2].grad, dv64, dv16)):
        ok, err, bound = lowp.within_fa_rule(a.detach().float().cpu().numpy(), r, n)
        assert ok, (label, err, bound)
    # and torch's own SDPA in the same dtype, the numbers a torch user compares with
    o_sdpa = _sdpa(q, k, v, is_causal)  # (its flash backend takes no causal Nq != Nk)
    assert float((o.float() - o_sdpa.float()).abs().max()) < 2e-2


def test_sdpa_argument_names_and_the_old_ones_agree():
    torch = _torch()
    import flashlab.torch as ft

    q, k, v = (torch.randn(1, 2, 96, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    a = ft.flash_attention(q, k, v, is_causal=True, scale=0.2)
    b = ft.flash_attention(q, k, v, causal=True, softmax_scale=0.2)
    assert torch.equal(a, b)
    c = ft.flash_attention(q, k, v, is_causal=True)
    assert not torch.equal(a, c)  # the scale is honoured (default 1 / sqrt(d))


def test_torch_compile_fullgraph_traces_the_op_and_matches_eager():
    torch = _torch()
    import flashlab.torch as ft

    class Attn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(256, 3 * 256)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.qkv(x).view(B, T, 3, 4, 64).permute(2, 0, 3, 1, 4)
            return ft.flash_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, 256)

    torch.manual_seed(0)
    model = Attn().cuda().to(torch.bfloat16)
    x = torch.randn(2, 128, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    eager = model(x)
    eager.sum().backward()
    grad_eager = x.grad.clone()
    x.grad = None
    compiled = torch.compile(model, fullgraph=True)  # a graph break would raise here
    out = compiled(x)
    out.sum().backward()
    assert torch.equal(out, eager)
    assert torch.allclose(x.grad, grad_eager, rtol=0, atol=0) or \
        float((x.grad - grad_eager).abs().max()) <= 1e-2 * float(grad_eager.abs().max())
    assert np.isfinite(out.float().detach().cpu().numpy()).all()
