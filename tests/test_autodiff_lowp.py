"""Mixed precision in flashlab.autodiff: the FlashAttention op in 16 bits (on a GPU the
tensor-core kernel), the rest of the model in its own dtype (`flashlab train --dtype`). On the
CPU the 16-bit NumPy references run; the GPU path is the same code with CuPy arrays."""
import numpy as np
import pytest

import flashlab
from flashlab import lowp
from flashlab.autodiff import Tensor
from flashlab.autodiff.train import TrainConfig, train
from flashlab.cli import main
from flashlab.reference import naive_attention, naive_attention_backward


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_flash_attention_in_16_bits_returns_the_models_dtype_within_the_16_bit_rule(dtype):
    rng = np.random.default_rng(0)
    # d = 64: the tensor-core twin runs (fp32 accumulation, P rounded to 16 bits), as tc does
    q, k, v, do = (rng.standard_normal((1, 2, 48, 64)) for _ in range(4))
    tq, tk, tv = (Tensor(x, requires_grad=True) for x in (q, k, v))
    o = tq.flash_attention(tk, tv, causal=True, dtype=dtype)
    assert o.data.dtype == np.float64
    (o * Tensor(do)).sum().backward()
    # FlashAttention's rule on the 16-bit inputs: the float64 answer on them, and standard
    # attention computed in the same 16-bit dtype as the yardstick
    x16 = [lowp.from_float32(x.astype(np.float32), dtype) for x in (q, k, v, do)]
    x64 = [lowp.to_float32(x).astype(np.float64) for x in x16]
    ref = naive_attention(*x64[:3], causal=True)[0]
    grads = naive_attention_backward(x64[3], *x64[:3], causal=True)
    base = lowp.naive_lowp_forward(*x16[:3], causal=True)[0]
    base_grads = lowp.naive_lowp_backward(x16[3], *x16[:3], causal=True)
    assert flashlab.api.resolve_kernel("auto", x16[0]) == "tc"  # its twin, here on NumPy
    assert lowp.within_fa_rule(o.data, ref, base)[0]
    assert np.abs(o.data - naive_attention(q, k, v, causal=True)[0]).max() > 0  # in 16 bits
    for t, g, b in zip((tq, tk, tv), grads, base_grads):
        assert t.grad.dtype == np.float64
        assert lowp.within_fa_rule(t.grad, g, b)[0]


def test_a_model_trains_with_its_attention_in_bfloat16():
    cfg = dict(steps=3, batch=2, seq=32, layers=1, heads=2, dim=32, sample=0)
    full = train(TrainConfig(attention="flash", **cfg))
    mixed = train(TrainConfig(attention="flash", attention_dtype="bfloat16", **cfg))
    assert np.all(np.isfinite(mixed.losses))
    np.testing.assert_allclose(mixed.losses, full.losses, rtol=1e-2)
    assert mixed.losses != full.losses  # the attention really ran in 16 bits


def test_the_16_bit_op_is_for_flash_attention(capsys):
    assert main(["train", "--attention", "standard", "--dtype", "bfloat16", "--steps", "1"]) == 2
    assert "--dtype bfloat16 runs the flash attention op in 16 bits" in capsys.readouterr().err
    from flashlab.autodiff.nn import Init, MultiHeadAttention

    with pytest.raises(ValueError, match="attention_dtype 'int8': bfloat16 or float16"):
        MultiHeadAttention(Init(0, "cpu", np.float64), 8, 2, attention_dtype="int8")
