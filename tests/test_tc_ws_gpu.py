"""GPU: the Hopper ladder's warp-specialized forward (kernels/tc90_ws.cu, flashlab.launch.tc_ws)
under FlashAttention's own test rule, on compute capability 9.0.

O against the float64 oracle within 2x the error of standard attention computed in the same
16-bit dtype (flashlab.lowp), lse against float64; outputs NaN-poisoned first, so every element
must be written; ragged N, Nq != Nk both ways, GQA, causal and not, both dtypes and head dims;
bad inputs get errors that name the argument.
"""
import numpy as np
import pytest

from flashlab import lowp

pytestmark = pytest.mark.gpu

# (B, H, H_kv, Nq, Nk, d, causal)
SHAPES = [
    (1, 1, 1, 1, 1, 64, False), (1, 2, 2, 1, 7, 128, True), (2, 3, 3, 127, 127, 64, False),
    (1, 2, 1, 200, 77, 128, True), (1, 1, 1, 77, 200, 64, True), (2, 2, 2, 257, 129, 128, False),
    (1, 4, 2, 300, 300, 64, True), (1, 1, 1, 129, 1000, 128, True), (1, 2, 2, 1000, 333, 64, True),
    (2, 8, 1, 513, 513, 128, False), (1, 2, 2, 1024, 1024, 64, False), (1, 2, 2, 1024, 1024, 128, True),
    (4, 16, 4, 600, 600, 64, True),  # 320 tiles: more than the multiprocessors, blocks take several
]


@pytest.fixture(autouse=True)
def _sm90():
    import cupy as cp

    if cp.cuda.Device().compute_capability != "90":
        pytest.skip("kernels/tc90_ws.cu runs on compute capability 9.0 only")


def _inputs(B, H, Hkv, Nq, Nk, d, dtype, seed=0):
    import cupy as cp

    rng = np.random.default_rng(seed)
    dt = lowp.bfloat16() if dtype == "bfloat16" else np.float16
    q = rng.standard_normal((B, H, Nq, d)).astype(dt)
    k = rng.standard_normal((B, Hkv, Nk, d)).astype(dt)
    v = rng.standard_normal((B, Hkv, Nk, d)).astype(dt)
    return q, k, v, [cp.asarray(x) for x in (q, k, v)]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_meets_flashattentions_rule(shape, dtype):
    _check_forward(shape, dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("shape", [(1, 4, 2, 1000, 1000, 64, True), (2, 2, 2, 2049, 700, 64, False),
                                   (1, 8, 8, 4096, 4096, 64, True), (1, 2, 1, 77, 300, 64, True)],
                         ids=lambda s: "x".join(map(str, s)))
def test_three_consumer_warpgroups_meet_the_rule(shape, dtype):
    # NC = 3 (192 query rows a tile, d = 64): both dtypes, ragged, GQA, persistent and not
    _check_forward(shape, dtype, dict(NC=3, PP=0))


def _check_forward(shape, dtype, config=None):
    import cupy as cp

    from flashlab.launch import tc_ws

    B, H, Hkv, Nq, Nk, d, causal = shape
    q, k, v, (dq_, dk_, dv_) = _inputs(B, H, Hkv, Nq, Nk, d, dtype)
    o = cp.full((B, H, Nq, d), np.nan, dq_.dtype)  # poisoned: every element must be written
    lse = cp.full((B, H, Nq), np.nan, cp.float32)
    tc_ws.forward(dq_, dk_, dv_, causal=causal, out=(o, lse), config=config)
    o, lse = o.get(), lse.get()
    assert np.isfinite(o.astype(np.float32)).all() and np.isfinite(lse).all()
    kk, vv = (np.repeat(x, H // Hkv, axis=1) for x in (k, v))  # query head h reads h // (H / H_kv)
    tau = 1.0 / np.sqrt(d)
    o64, lse64, _, _, _ = lowp.attention_oracle(q, kk, vv, q, causal, tau)
    naive = lowp.naive_lowp_forward(q, kk, vv, causal, tau)[0]
    ok, err, bound = lowp.within_fa_rule(o, o64, naive)
    assert ok, f"O error {err:.3g} over FlashAttention's bound {bound:.3g}"
    np.testing.assert_allclose(lse, lse64, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("config", [dict(PP=0), dict(ST=3), dict(PERSIST=0), dict(BLOCKS=3),
                                    dict(PERSIST=1, DYN=1), dict(BLOCKS=3, DYN=1),
                                    dict(PERSIST=1, DYN=0), dict(NC=3, PP=0),
                                    dict(NC=3, PP=0, BLOCKS=3, DYN=1)],
                         ids=["no-pingpong", "3-stages", "a-block-per-tile", "3-blocks",
                              "dynamic-turns", "3-blocks-dynamic", "static-turns",
                              "3-consumers", "3-consumers-3-blocks-dynamic"])
@pytest.mark.parametrize("shape", [(1, 2, 1, 300, 530, 64, True), (2, 2, 2, 530, 300, 128, False)],
                         ids=lambda s: "x".join(map(str, s)))
def test_the_ablations_rungs_meet_the_rule_too(shape, config):
    import cupy as cp

    if config.get("NC") == 3 and shape[5] != 64:
        pytest.skip("three consumer warpgroups: d = 64 only")
    from flashlab.launch import tc_ws

    B, H, Hkv, Nq, Nk, d, causal = shape
    q, k, v, dev = _inputs(B, H, Hkv, Nq, Nk, d, "bfloat16", seed=2)
    o = cp.full((B, H, Nq, d), np.nan, dev[0].dtype)
    lse = cp.full((B, H, Nq), np.nan, cp.float32)
    tc_ws.forward(*dev, causal=causal, out=(o, lse), config=config)
    kk, vv = (np.repeat(x, H // Hkv, axis=1) for x in (k, v))
    tau = 1.0 / np.sqrt(d)
    o64 = lowp.attention_oracle(q, kk, vv, q, causal, tau)[0]
    ok, err, bound = lowp.within_fa_rule(o.get(), o64, lowp.naive_lowp_forward(q, kk, vv, causal,
                                                                              tau)[0])
    assert ok, f"O error {err:.3g} over FlashAttention's bound {bound:.3g}"


def test_strided_operands_run_without_a_copy():
    """q, k, v as views of one packed (B, N, 3, H, d) projection, heads moved forward."""
    import cupy as cp

    from flashlab.launch import tc_ws

    B, N, H, d = 2, 300, 4, 64
    rng = np.random.default_rng(1)
    qkv = rng.standard_normal((B, N, 3, H, d)).astype(np.float16)
    g = cp.asarray(qkv)
    q, k, v = (g[:, :, x].transpose(0, 2, 1, 3) for x in range(3))
    o, lse = tc_ws.forward(q, k, v, causal=True)
    want, _ = tc_ws.forward(*(cp.ascontiguousarray(x) for x in (q, k, v)), causal=True)
    assert (o.get().view(np.uint16) == want.get().view(np.uint16)).all()


BAD = [  # (what differs from a good call, the error, words of its message)
    (dict(d=96), ValueError, "head dim d must be one of"),
    (dict(dtype="float32"), TypeError, "takes float16 or bfloat16"),
    (dict(Hkv=3), ValueError, "H_kv dividing q's H"),
]


@pytest.mark.parametrize("bad, error, words", BAD)
def test_bad_inputs_name_the_argument(bad, error, words):
    import cupy as cp

    from flashlab.launch import tc_ws

    d, Hkv = bad.get("d", 64), bad.get("Hkv", 2)
    q = cp.zeros((1, 4, 16, d), bad.get("dtype", "float16"))
    k = cp.zeros((1, Hkv, 16, d), q.dtype)
    with pytest.raises(error, match=words):
        tc_ws.forward(q, k, k)
