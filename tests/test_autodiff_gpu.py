"""GPU: the autodiff layer on CuPy float32. Every op matches its float64 CPU result; the
FlashAttention Function (CUDA kernels) matches standard attention and the float64 oracle,
forward and backward; a few training steps lower the loss; flashlab.torch matches torch's
scaled_dot_product_attention forward and backward."""
import re

import numpy as np
import pytest

from conftest import rel_err
from flashlab.autodiff import tensor
from flashlab.autodiff.tensor import is_cupy
from flashlab.autodiff.train import TrainConfig, train
from test_autodiff import OPS, TINY, On

pytestmark = pytest.mark.gpu


def host(x):
    return x.get() if is_cupy(x) else np.asarray(x)


def run(f, on, arrays, w):
    """f on leaf tensors made from `arrays` on on.device; returns [output, grad of each input]
    for the loss sum(w * f(...)), all as float64 NumPy arrays."""
    ts = [tensor(x, requires_grad=True, device=on.device, dtype=on.dtype) for x in arrays]
    out = f(on, *ts)
    (out * on.t(w)).sum().backward()
    return [host(out.data).astype(np.float64)] + [host(t.grad).astype(np.float64) for t in ts]


@pytest.mark.parametrize("name", list(OPS))
def test_every_op_on_gpu_float32_matches_cpu_float64(name):
    f, shapes, opts = OPS[name]
    rng = np.random.default_rng(len(name))
    arrays = [rng.standard_normal(s) for s in shapes]
    if "low" in opts:
        arrays = [opts["low"] + np.abs(x) for x in arrays]
    out_shape = f(On(), *[tensor(x) for x in arrays]).shape
    w = rng.standard_normal(out_shape)
    cpu = run(f, On("cpu", np.float64), arrays, w)
    gpu = run(f, On("gpu", np.float32), arrays, w)
    for label, a, b in zip(["out"] + [f"grad {i}" for i in range(len(arrays))], gpu, cpu):
        assert a.shape == b.shape, label
        assert rel_err(a, b) < 1e-4, (label, rel_err(a, b))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", [16, 64, 48])  # 16, 64: kernel fa2; 48: "auto" picks fa1
def test_flash_attention_function_on_gpu_matches_standard_attention(d, causal):
    B, H, N = 2, 3, 200  # N ragged for every tile size
    rng = np.random.default_rng(d)
    q, k, v, do = (rng.standard_normal((B, H, N, d)) for _ in range(4))

    def attention(kind, device, dtype):
        ts = [tensor(x, requires_grad=True, device=device, dtype=dtype) for x in (q, k, v)]
        o = getattr(ts[0], f"{kind}_attention")(ts[1], ts[2], causal=causal)
        (o * tensor(do, device=device, dtype=dtype)).sum().backward()
        return [host(x).astype(np.float64) for x in [o.data] + [t.grad for t in ts]]

    oracle = attention("standard", "cpu", np.float64)
    flash = attention("flash", "gpu", np.float32)
    standard = attention("standard", "gpu", np.float32)
    for label, f, s, ref in zip(("o", "dq", "dk", "dv"), flash, standard, oracle):
        assert rel_err(f, ref) < 1e-4, (label, rel_err(f, ref))
        assert rel_err(s, ref) < 1e-4, (label, rel_err(s, ref))
        assert rel_err(f, s) < 1e-4, (label, rel_err(f, s))


def test_flash_attention_on_gpu_saves_no_n_by_n_matrix():
    N, d = 256, 64
    q, k, v = (tensor(np.random.default_rng(i).standard_normal((1, 2, N, d)), requires_grad=True,
                      device="gpu", dtype=np.float32) for i in range(3))
    o = q.flash_attention(k, v, causal=True)
    saved = [tuple(x.shape) for x in o.history.ctx.saved_values]
    assert (1, 2, N) in saved and not any(s[-2:] == (N, N) for s in saved)
    assert all(is_cupy(x) and x.dtype == np.float32 for x in o.history.ctx.saved_values)


@pytest.mark.parametrize("attention", ["flash", "standard"])
def test_a_few_training_steps_lower_the_loss_on_gpu(attention):
    r = train(TrainConfig(attention=attention, device="gpu", **TINY))
    assert np.isfinite(r.losses).all()
    assert np.mean(r.losses[-3:]) < r.losses[0] - 0.3  # from ln(62) = 4.13
    assert r.peak_memory > 0 and "CuPy memory pool" in r.memory_what


def test_flash_and_standard_train_alike_on_gpu_and_like_the_cpu():
    cfg = dict(TINY, steps=10, layers=2, heads=4, dim=64)  # head dim 16: kernel fa2
    flash = train(TrainConfig(attention="flash", device="gpu", **cfg)).losses
    standard = train(TrainConfig(attention="standard", device="gpu", **cfg)).losses
    cpu = train(TrainConfig(attention="flash", device="cpu", **cfg)).losses  # float64
    np.testing.assert_allclose(flash, standard, rtol=1e-3)  # float32 rounding, 10 Adam steps
    np.testing.assert_allclose(flash[0], cpu[0], rtol=1e-5)  # same seed, same initial model
    np.testing.assert_allclose(flash, cpu, rtol=1e-3)  # (1e-7 apart when simulated on a CPU)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mixed_precision_attention_runs_tc_and_trains_like_float32_on_gpu(dtype):
    # flashlab train --dtype: the flash op on 16-bit copies (head dim 64: tc), the rest float32
    cfg = dict(TINY, steps=10, layers=2, heads=2, dim=128)
    full = train(TrainConfig(attention="flash", device="gpu", **cfg)).losses
    mixed = train(TrainConfig(attention="flash", device="gpu", attention_dtype=dtype,
                              **cfg)).losses
    assert np.isfinite(mixed).all() and mixed != full
    np.testing.assert_allclose(mixed, full, rtol=2e-2)


def test_cli_train_on_gpu(capsys):
    from flashlab.cli import main

    code = main(["train", "--device", "gpu", "--steps", "5", "--batch", "4", "--seq", "32",
                 "--sample", "20"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "on gpu (float32; CUDA kernels for flash)" in out
    assert re.search(r"peak memory: [\d.]+ MB \(CuPy memory pool high-water mark\)", out)
    assert "time per step:" in out


# ----------------------------------------------------------------------------- torch interop

torch_shapes = [(2, 3, 128, 128, 64), (1, 2, 200, 77, 32), (1, 2, 77, 200, 16),
                (2, 2, 130, 130, 48)]


def _torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device here")
    return torch


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("B,H,Nq,Nk,d", torch_shapes)
def test_torch_flash_attention_matches_sdpa_forward_and_backward(B, H, Nq, Nk, d, causal):
    torch = _torch()
    import torch.nn.functional as F

    import flashlab.torch as ft

    g = torch.Generator(device="cuda").manual_seed(Nq + d)
    q, k, v = (torch.randn(s, device="cuda", generator=g, dtype=torch.float32)
               for s in ((B, H, Nq, d), (B, H, Nk, d), (B, H, Nk, d)))
    do = torch.randn((B, H, Nq, d), device="cuda", generator=g)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    o = ft.flash_attention(q, k, v, causal=causal)
    o.backward(do)

    # torch's SDPA in float64 (its math backend) is the reference
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    o64 = F.scaled_dot_product_attention(q64, k64, v64, is_causal=causal)
    o64.backward(do.double())
    assert o.dtype == torch.float32 and o.shape == o64.shape
    for label, a, b in (("o", o, o64), ("dq", q.grad, q64.grad), ("dk", k.grad, k64.grad),
                        ("dv", v.grad, v64.grad)):
        err = rel_err(a.detach().cpu().numpy(), b.detach().cpu().numpy())
        assert err < 1e-4, (label, err)

    # and torch's own float32 SDPA, the numbers a torch user compares with (its backend may
    # round differently, hence the looser bound)
    o32 = F.scaled_dot_product_attention(q.detach(), k.detach(), v.detach(), is_causal=causal)
    assert rel_err(o.detach().cpu().numpy(), o32.cpu().numpy()) < 5e-3


def test_torch_interop_is_zero_copy_and_on_torchs_stream():
    torch = _torch()
    import flashlab.torch as ft

    x = torch.randn(1, 2, 64, 32, device="cuda")
    assert ft._to_cupy(x).data.ptr == x.data_ptr()  # the same buffer, no copy
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        q, k, v = (torch.randn(1, 2, 64, 32, device="cuda", requires_grad=True) for _ in range(3))
        o = ft.flash_attention(q, k, v, causal=True)
        o.sum().backward()
    torch.cuda.synchronize()
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.detach().double(), k.detach().double(), v.detach().double(), is_causal=True)
    assert rel_err(o.detach().cpu().numpy(), ref.cpu().numpy()) < 1e-4
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_torch_interop_errors_name_the_argument_and_the_fix():
    torch = _torch()
    import flashlab.torch as ft

    cpu = torch.randn(1, 1, 8, 16)
    gpu = cpu.cuda()
    with pytest.raises(ValueError, match=r"q is on cpu; .* pass q.cuda\(\)"):
        ft.flash_attention(cpu, gpu, gpu)
    with pytest.raises(TypeError, match=r"k has dtype torch.float64; .* take float16, bfloat16"):
        ft.flash_attention(gpu, gpu.double(), gpu)
    with pytest.raises(TypeError, match=r"q, k, v must share one dtype"):
        ft.flash_attention(gpu, gpu.half(), gpu)
