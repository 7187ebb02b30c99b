"""GPU: flashlab.torch.flash_attention as a torch custom op: float16 and bfloat16 (tensor cores)
within FlashAttention's rule against float64, forward and gradients; SDPA's argument names;
torch.compile(fullgraph=True) traces a model that calls it, and gives eager's numbers."""
import numpy as np
import pytest

from flashlab import lowp
from graph_replay import check_replay_matches_eager

pytestmark = pytest.mark.gpu


def _torch():
    return pytest.importorskip("torch")


@pytest.fixture(params=["native", "python"])
def path(request, monkeypatch):
    """Each test twice: through flashlab.native's C++ launch path (where it builds: it must on
    the GPU machine) and through the Python one it falls back to."""
    _torch()
    import flashlab.torch as ft
    from flashlab import native

    monkeypatch.setattr(ft, "_native", {})
    if request.param == "python":
        monkeypatch.setattr(native, "_state", {"module": None, "why": "test: the Python path"})
    else:
        assert native.module() is not None, native.why_not()
    return request.param


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
def test_16_bit_forward_and_gradients_within_fa_rule(dtype, is_causal, B, H, Nq, Nk, d, path):
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


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_torch_compile_fullgraph_traces_the_op_and_matches_eager(dtype):
    torch = _torch()
    import flashlab.torch as ft

    dt = getattr(torch, dtype)

    class Attn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(256, 3 * 256)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.qkv(x).view(B, T, 3, 4, 64).permute(2, 0, 3, 1, 4)
            return ft.flash_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, 256)

    torch.manual_seed(0)
    model = Attn().cuda().to(dt)
    x = torch.randn(2, 128, 256, device="cuda", dtype=dt, requires_grad=True)
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


def _packed_qkv(torch, B, N, H, d, dt, seed):
    """q, k, v as a model makes them: views of one (B, N, 3, H, d) projection, (B, H, N, d)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    qkv = torch.randn((B, N, 3 * H * d), device="cuda", generator=g).to(dt).requires_grad_()
    q, k, v = (x.transpose(1, 2) for x in qkv.view(B, N, 3, H, d).unbind(2))
    return qkv, q, k, v


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("d", [64, 128])
def test_packed_qkv_views_run_in_place_and_match_the_contiguous_run(dtype, is_causal, d, path):
    torch = _torch()
    import flashlab.torch as ft

    B, N, H = 2, 256, 4
    dt = getattr(torch, dtype)
    qkv, q, k, v = _packed_qkv(torch, B, N, H, d, dt, seed=d)
    assert not q.is_contiguous() and q.stride() == (N * 3 * H * d, d, 3 * H * d, 1)
    with torch.no_grad():  # the first call of a layout prepares it (and allocates to do so)
        ft.flash_attention(q, k, v, is_causal=is_causal)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    o = ft.flash_attention(q, k, v, is_causal=is_causal)
    torch.cuda.synchronize()
    grown = torch.cuda.max_memory_allocated() - before
    out_bytes = o.numel() * o.element_size() + B * H * N * 4  # o and lse
    assert grown < out_bytes + q.numel() * q.element_size() // 2, (grown, out_bytes)  # no copy
    # heads inside rows, as SDPA returns it: the model's transpose back is free
    assert o.transpose(1, 2).is_contiguous()
    y = o.transpose(1, 2).reshape(B, N, H * d)
    g = torch.Generator(device="cuda").manual_seed(1)
    dy = torch.randn(y.shape, device="cuda", generator=g).to(dt)
    strides = {}
    for name, x in (("q", q), ("k", k), ("v", v)):
        x.register_hook(lambda grad, name=name: strides.__setitem__(name, grad.stride()))
    y.backward(dy)  # dO arrives as a transposed view of dy: read in place as well
    # dq, dk, dv come back with heads inside rows, as q, k, v's views: torch's stack of them
    # into qkv.grad copies whole rows
    assert strides == {n: (N * H * d, d, H * d, 1) for n in "qkv"}

    ref = [x.detach().contiguous().requires_grad_() for x in (q, k, v)]
    o_ref = ft.flash_attention(*ref, is_causal=is_causal)
    o_ref.backward(dy.view(B, N, H, d).transpose(1, 2).contiguous())
    assert torch.equal(o, o_ref)  # the same kernel on the same numbers, only addresses differ
    assert all(x.grad.is_contiguous() for x in ref)  # contiguous inputs: contiguous gradients
    dq, dk, dv = (x.transpose(1, 2) for x in qkv.grad.view(B, N, 3, H, d).unbind(2))
    assert torch.equal(dk, ref[1].grad) and torch.equal(dv, ref[2].grad)
    # dQ sums over key blocks with atomic adds, in whatever order they land
    assert float((dq.float() - ref[0].grad.float()).abs().max()) <= \
        4 * float(ref[0].grad.float().abs().max()) * 2.0 ** -8


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_cuda_graph_capture_and_replay_match_eager(path, dtype):
    torch = _torch()
    import flashlab.torch as ft

    dt = getattr(torch, dtype)

    class Block(torch.nn.Module):
        def __init__(self, C=256, H=4):
            super().__init__()
            self.H = H
            self.qkv = torch.nn.Linear(C, 3 * C)
            self.proj = torch.nn.Linear(C, C)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = (t.transpose(1, 2) for t in self.qkv(x).view(B, T, 3, self.H, C // self.H)
                       .unbind(2))
            y = ft.flash_attention(q, k, v, is_causal=True)
            return self.proj(y.transpose(1, 2).reshape(B, T, C))

    torch.manual_seed(0)
    check_replay_matches_eager(torch, Block().cuda().to(dt), (2, 192, 256), dt)


def test_the_cupy_api_reads_packed_views_in_place():
    _torch()
    import cupy as cp
    import ml_dtypes

    import flashlab

    B, N, H, d = 1, 200, 3, 64
    qkv = cp.asarray(np.random.default_rng(0).standard_normal((B, N, 3, H, d)),
                     dtype=cp.float32).astype(ml_dtypes.bfloat16)
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    assert not q.flags.c_contiguous
    o = flashlab.flash_attention(q, k, v, causal=True, kernel="tc")
    o_ref = flashlab.flash_attention(*(cp.ascontiguousarray(x) for x in (q, k, v)), causal=True,
                                     kernel="tc")
    assert bool((o.view(cp.int16) == o_ref.view(cp.int16)).all())


def test_a_view_the_kernel_cannot_read_is_copied_and_does_not_poison_the_call_cache(path):
    torch = _torch()
    import flashlab.torch as ft

    B, H, N, d = 1, 2, 160, 64
    g = torch.Generator(device="cuda").manual_seed(3)
    base = torch.randn((B, H, N, d + 8), device="cuda", generator=g).to(torch.bfloat16)
    base.requires_grad_()
    q = base[..., 1:d + 1]  # rows 2 bytes off 16: copied before the launch
    assert q.data_ptr() % 16 == 2
    k, v = (torch.randn((B, H, N, d), device="cuda", generator=g).to(torch.bfloat16)
            .requires_grad_() for _ in range(2))
    o = ft.flash_attention(q, k, v, is_causal=True)
    o.backward(torch.ones_like(o))
    dq = base.grad[..., 1:d + 1]
    assert float(base.grad[..., 0].abs().max()) == 0 and float(base.grad[..., d + 1:].abs().max()) == 0
    ref = [x.detach().contiguous().requires_grad_() for x in (q, k, v)]
    o_ref = ft.flash_attention(*ref, is_causal=True)  # then the same shapes, contiguous
    o_ref.backward(torch.ones_like(o_ref))
    assert torch.equal(o, o_ref)
    assert torch.equal(k.grad, ref[1].grad) and torch.equal(v.grad, ref[2].grad)
    assert float((dq.float() - ref[0].grad.float()).abs().max()) <= \
        4 * float(ref[0].grad.float().abs().max()) * 2.0 ** -8


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_float32_runs_fa2s_prepared_calls_within_its_rule(is_causal, packed, path):
    # float32: fa2 prepared once per shape (the C++ path where it builds), contiguous operands
    # read in place, a packed projection's views copied; forward and gradients against float64
    torch = _torch()
    import torch.nn.functional as F

    import flashlab.torch as ft

    B, H, N, d = 2, 3, 200, 64
    g = torch.Generator(device="cuda").manual_seed(11)
    if packed:
        qkv, q, k, v = _packed_qkv(torch, B, N, H, d, torch.float32, 11)
        leaves = (qkv,)
    else:
        q, k, v = (torch.randn((B, H, N, d), device="cuda", generator=g).requires_grad_()
                   for _ in range(3))
        leaves = (q, k, v)
    do = torch.randn((B, H, N, d), device="cuda", generator=g)
    o = ft.flash_attention(q, k, v, is_causal=is_causal)
    grads = torch.autograd.grad(o, (q, k, v), do)
    assert o.is_contiguous() and all(x.is_contiguous() for x in grads)
    stored = len(ft._native)
    assert stored == (1 if path == "native" and not packed else 0)  # in place only
    assert ft._fast(q) == "fa2"
    ref = [x.detach().double().requires_grad_() for x in (q, k, v)]
    o64 = F.scaled_dot_product_attention(*ref, is_causal=is_causal)
    r64 = torch.autograd.grad(o64, ref, do.double())
    for label, a, b in (("o", o, o64),) + tuple(zip(("dq", "dk", "dv"), grads, r64)):
        err = float((a.double() - b).abs().max() / b.abs().max())
        assert err < 1e-4, (label, err)
    again = ft.flash_attention(q, k, v, is_causal=is_causal)  # the stored call, same numbers
    assert torch.equal(again, o) and len(ft._native) == stored
    assert all(x.grad is None for x in leaves)
