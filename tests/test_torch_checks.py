"""flashlab.torch's argument checks, on any machine with PyTorch (no GPU: the checks come before
any kernel): a CPU tensor is refused naming it, with or without a variant keyword; k and v with
fewer heads than q need enable_gqa=True, as SDPA's do."""
import pytest

torch = pytest.importorskip("torch")
ft = pytest.importorskip("flashlab.torch")
from flashlab import mods  # noqa: E402


@pytest.mark.parametrize("kw", [{}, dict(window=(2, 0)), dict(enable_gqa=True),
                                dict(score_mod=mods.softcap(2.0))])
def test_a_cpu_tensor_is_refused_naming_it(kw):
    q = torch.randn(1, 2, 8, 64)
    with pytest.raises(ValueError, match=r"q is on cpu; the kernels run on CUDA tensors: pass "
                                         r"q.cuda\(\)"):
        ft.flash_attention(q, q, q, **kw)


@pytest.mark.parametrize("kw", [{}, dict(mask_mod=mods.causal())])
def test_fewer_kv_heads_need_enable_gqa(monkeypatch, kw):
    monkeypatch.setattr(ft, "_check", lambda name, x: None)  # as if on a GPU
    q = torch.randn(1, 4, 8, 64)
    kv = torch.randn(1, 2, 8, 64)
    with pytest.raises(ValueError, match=r"k and v have 2 and 2 heads, q 4: pass "
                                         r"enable_gqa=True"):
        ft.flash_attention(q, kv, kv, **kw)


@pytest.mark.parametrize("window", [(3,), (2, -2), (1.5, 0), (True, 0), "left"])
def test_a_window_that_is_not_two_ints_from_minus_one_is_refused_naming_it(monkeypatch, window):
    monkeypatch.setattr(ft, "_check", lambda name, x: None)  # as if on a GPU
    q = torch.randn(1, 2, 8, 64)
    with pytest.raises(ValueError, match=r"window must be \(left, right\), two ints >= -1 "
                                         r"\(-1: unbounded on that side\), got "):
        ft.flash_attention(q, q, q, window=window)


def test_gqa_heads_must_divide_and_match(monkeypatch):
    monkeypatch.setattr(ft, "_check", lambda name, x: None)
    q = torch.randn(1, 6, 8, 64)
    for k, v in ((torch.randn(1, 4, 8, 64),) * 2, (torch.randn(1, 3, 8, 64), torch.randn(1, 2, 8, 64))):
        with pytest.raises(ValueError, match=r"with enable_gqa=True k and v need one number of "
                                             r"heads that divides q's"):
            ft.flash_attention(q, k, v, enable_gqa=True)


def test_the_custom_ops_trace_on_fake_tensors_with_gqa_and_a_window(monkeypatch):
    # what torch.compile traces, on any machine: the ops' schemas, fake implementations and
    # autograd formula, with k, v on fewer heads and a window (fake CUDA tensors need no GPU;
    # torch's engine does, so the formula is called by hand as the engine would)
    import types

    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    for direction in ("forward", "backward"):  # as on an sm_80+ GPU
        monkeypatch.setitem(ft._kernel_for, (0, torch.bfloat16, 64, direction), "tc")
    monkeypatch.setitem(ft._strided, "tc", True)
    with FakeTensorMode():
        q = torch.empty(2, 200, 8, 64, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        k, v = (torch.empty(2, 200, 2, 64, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
                for _ in range(2))
        graph = make_fx(lambda q, k, v: ft.attention_forward(q, k, v, True, 0.125, 64, 0),
                        tracing_mode="fake")(q, k, v)
        o, lse = ft.attention_forward(q, k, v, True, 0.125, 64, 0)
        saved = []
        ctx = types.SimpleNamespace(save_for_backward=lambda *t: saved.extend(t))
        ft._setup_context(ctx, (q, k, v, True, 0.125, 64, 0), (o, lse))
        ctx.saved_tensors = tuple(saved)
        grads = ft._backward(ctx, torch.empty_like(o), None)
    (node,) = [n for n in graph.graph.nodes if n.target == torch.ops.flashlab.attention_forward.default]
    assert node.args[-2:] == (64, 0)  # the window reaches the op
    assert o.stride() == (200 * 8 * 64, 64, 8 * 64, 1)  # heads inside rows, as SDPA returns
    assert ctx.window == (64, 0) and len(grads) == 7 and grads[3:] == (None,) * 4
    assert [g.shape for g in grads[:3]] == [q.shape, k.shape, v.shape]


def test_the_eager_autograd_function_runs_its_pair_and_passes_the_extra_through():
    # torch_bridge.attention, flashlab.torch's and torch_variants' Python path, on CPU tensors
    from flashlab import torch_bridge

    seen = []

    def fwd(q, k, v, is_causal, scale, extra):
        seen.append(("f", is_causal, scale, extra))
        return q * scale + k + v, q.new_zeros(q.shape[:3])

    def bwd(do, q, k, v, o, lse, is_causal, scale, extra):
        seen.append(("b", is_causal, scale, extra))
        return do * scale, do * 2, do * 3

    q, k, v = (torch.randn(1, 2, 8, 4, requires_grad=True) for _ in range(3))
    o = torch_bridge.attention((fwd, bwd), q, k, v, True, 0.5, (8, 0))
    o.sum().backward()
    assert seen == [("f", True, 0.5, (8, 0)), ("b", True, 0.5, (8, 0))]
    assert torch.equal(q.grad, torch.full_like(q, 0.5)) and torch.equal(v.grad, torch.full_like(v, 3))
    with torch.no_grad():  # no gradient asked for: the forward alone, no node
        assert torch_bridge.attention((fwd, bwd), q, k, v, False, 1.0, None).grad_fn is None


@pytest.mark.parametrize("d,backward", [(256, None), (128, "tc")])
def test_a_backward_whose_tiles_do_not_fit_takes_the_cupy_api_and_contiguous_grads(monkeypatch, d,
                                                                                   backward):
    # an RTX 30xx / 40xx (cc 8.6, 99 KB a block): tc's forward at d = 256 fits, its backward
    # (136.5 KB) does not. The prepared path then stays out of the backward, whose CuPy API
    # 'auto' runs fa1 on float32 copies with its warning (tests/test_api_tc.py), and the
    # backward's fake says its gradients come back contiguous, as that path returns them.
    from flashlab.launch import device, tc

    limits = {"compute_capability": "86", "smem_optin": 101376}
    monkeypatch.setattr(device, "device_limits", lambda dev: limits)
    monkeypatch.setattr(tc, "device_limits", lambda dev: limits)
    monkeypatch.setattr(ft, "_kernel_for", {})
    q = torch.empty(1, 2, 8, d, dtype=torch.bfloat16)
    assert ft._fast(q) == "tc" and ft._writes_strided(q)
    assert ft._fast(q, "backward") == backward
    assert ft._writes_strided(q, "backward") == (backward is not None)
