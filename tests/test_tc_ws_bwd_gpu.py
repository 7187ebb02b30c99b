"""GPU: the Hopper ladder's warp-specialized backward (kernels/tc90_ws_bwd.cu,
flashlab.launch.tc_ws.backward) under FlashAttention's own test rule, on compute capability 9.0.

dQ, dK, dV against the float64 oracle within 2x the error of standard attention's backward in
the same 16-bit dtype (flashlab.lowp); outputs poisoned with NaN bit patterns first, so every
element must be written; ragged N, Nq != Nk both ways (key blocks no query sees under causal
masking among them), GQA groups of 1, 2 and 4, both dtypes and head dims, the ablation's rungs
(dQ through the consumers' atomics, 3 stages). The same bits as kernel 'tc' would be too strong
(dQ's adds come in another order), so the rule is the test. Bad inputs get errors that name the
argument.
"""
import numpy as np
import pytest

from flashlab import lowp

pytestmark = pytest.mark.gpu

# (B, H, H_kv, Nq, Nk, d, causal)
SHAPES = [
    (1, 1, 1, 1, 1, 64, False), (1, 2, 2, 1, 7, 128, True), (2, 3, 3, 127, 127, 64, False),
    (1, 2, 1, 200, 77, 128, True), (1, 1, 1, 77, 300, 64, True), (2, 2, 2, 257, 129, 128, False),
    (1, 4, 2, 300, 300, 64, True), (1, 1, 1, 129, 1000, 128, True), (1, 2, 2, 1000, 333, 64, True),
    (1, 8, 2, 513, 513, 128, False), (1, 2, 2, 1024, 1024, 64, False),
    (1, 2, 2, 1024, 1024, 128, True),
]


@pytest.fixture(autouse=True)
def _sm90():
    import cupy as cp

    if cp.cuda.Device().compute_capability != "90":
        pytest.skip("kernels/tc90_ws_bwd.cu runs on compute capability 9.0 only")


def _poisoned(shape, dtype):
    import cupy as cp

    x = cp.empty(shape, dtype)
    x.view(cp.uint16)[...] = 0xFFFF  # NaN in both 16-bit dtypes
    return x


def _case(shape, dtype, config=None, seed=0):
    import cupy as cp

    from flashlab.launch import tc_ws

    B, H, Hkv, Nq, Nk, d, causal = shape
    rng = np.random.default_rng(seed)
    dt = lowp.bfloat16() if dtype == "bfloat16" else np.float16
    q, do = (rng.standard_normal((B, H, Nq, d)).astype(dt) for _ in range(2))
    k, v = (rng.standard_normal((B, Hkv, Nk, d)).astype(dt) for _ in range(2))
    dev = [cp.asarray(x) for x in (q, k, v, do)]
    o, lse = tc_ws.forward(*dev[:3], causal=causal)
    out = (_poisoned(q.shape, dev[0].dtype), _poisoned(k.shape, dev[0].dtype),
           _poisoned(v.shape, dev[0].dtype))
    got = tc_ws.backward(dev[3], *dev[:3], o, lse, causal=causal, out=out, config=config)
    assert all(g is x for g, x in zip(got, out))
    G = H // Hkv
    kk, vv = (np.repeat(x, G, axis=1) for x in (k, v))  # query head h reads h // G
    _, _, dq64, dk64, dv64 = lowp.attention_oracle(q, kk, vv, do, causal)
    naive = lowp.naive_lowp_backward(do, q, kk, vv, causal)
    # GQA: the group's per-head gradients summed, in float64 for the oracle and float32 for
    # standard attention (then rounded, as the kernel's sum is)
    def group(x):
        return x.reshape(B, Hkv, G, Nk, d).sum(axis=2)
    naive_dk, naive_dv = (lowp.from_float32(group(lowp.to_float32(x)), dtype) for x in naive[1:])
    slack = 1e-5 * float(np.abs(o.get().astype(np.float32)).max())
    for label, x, ref, nv in (("dq", got[0], dq64, naive[0]), ("dk", got[1], group(dk64), naive_dk),
                              ("dv", got[2], group(dv64), naive_dv)):
        ok, err, bound = lowp.within_fa_rule(x.get(), ref, nv, slack=slack)
        assert ok, f"{label}: error {err:.3g} over FlashAttention's bound {bound:.3g}"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_backward_meets_flashattentions_rule(shape, dtype):
    _case(shape, dtype)


@pytest.mark.parametrize("config", [dict(DQW=0), dict(DQW=0, ST=3), dict(ST=3)],
                         ids=["atomics", "atomics-3-stages", "3-stages"])
@pytest.mark.parametrize("shape", [(1, 2, 1, 300, 530, 64, True), (2, 2, 2, 530, 300, 128, False)],
                         ids=lambda s: "x".join(map(str, s)))
def test_the_ablations_rungs_meet_the_rule_too(shape, config):
    if config == dict(ST=3) and shape[5] == 64:  # 3 stages and dQ's buffer: more than 227 KB
        pytest.skip("kernels/tc90_ws_bwd.cu at d = 64 fits 3 stages only with DQW=0")
    _case(shape, "bfloat16", config=config, seed=3)


BAD = [  # (what differs from a good call, the error, words of its message)
    (dict(d=96), ValueError, "head dim d must be one of"),
    (dict(lse_shape=(1, 4, 15)), ValueError, "lse must have shape"),
    (dict(do_dtype="bfloat16"), ValueError, "do"),
]


@pytest.mark.parametrize("bad, error, words", BAD)
def test_bad_inputs_name_the_argument(bad, error, words):
    import cupy as cp

    from flashlab.launch import tc_ws

    d = bad.get("d", 64)
    rng = np.random.default_rng(0)
    q = cp.asarray(rng.standard_normal((1, 4, 16, d)).astype(np.float16))
    do = q.astype(bad.get("do_dtype", "float16"))
    lse = cp.ones(bad.get("lse_shape", (1, 4, 16)), cp.float32)
    with pytest.raises(error, match=words):
        tc_ws.backward(do, q, q, q, q, lse)
