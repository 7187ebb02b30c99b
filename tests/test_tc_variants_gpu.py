"""GPU: attention variants compiled into the tensor-core kernels (kernels/tc_mods.cuh), both
sources, held to FlashAttention's rule against the float64 variant oracle.

The yardstick is the same variant computed unfused in the inputs' 16-bit dtype
(flashlab.reference.variants with stored=dtype: S, P, O, dP, dS rounded), so the rule reads as
for plain attention: the kernel's error is at most twice that one's. Outputs are NaN-poisoned
first (every element written); rows no key is visible to must give O = 0, lse = -inf and zero
gradients; GQA runs with groups of 1, 2 and 8; causal written as a mask_mod gives the bits of the
built-in causal flag.
"""
import numpy as np
import pytest

import flashlab
from flashlab import launch, lowp, mods
from flashlab.mods.kernel import KernelVariant
from flashlab.reference.variants import variant_attention, variant_attention_backward
from test_tc_gpu import TC, _poisoned, _sm80, source  # noqa: F401 (fixtures)

pytestmark = pytest.mark.gpu

N = 300  # ragged against every tile (64, 128)
DOC = np.repeat(np.arange(5), 60)  # five packed sequences
# name -> (keywords, (H, H_kv), d, dtype)
VARIANTS = {
    "window (100, 0)": (dict(window=(100, 0)), (2, 2), 64, "bfloat16"),
    "window (40, 40)": (dict(window=(40, 40)), (2, 2), 128, "float16"),
    "document, causal": (dict(mask_mod=mods.document(DOC), causal=True), (2, 2), 64, "bfloat16"),
    "prefix_lm(70)": (dict(mask_mod=mods.prefix_lm(70)), (2, 2), 128, "bfloat16"),
    "alibi, causal": (dict(score_mod=mods.alibi([0.25, 0.0625]), causal=True), (2, 2), 128,
                      "bfloat16"),
    "softcap(4)": (dict(score_mod=mods.softcap(4.0)), (2, 2), 64, "float16"),
    "hides rows 3 mod 7": (dict(mask_mod=lambda b, h, q_idx, kv_idx: q_idx % 7 != 3), (2, 2), 64,
                           "bfloat16"),
    "GQA 4 on 2, causal": (dict(causal=True), (4, 2), 128, "float16"),
    "MQA 8 on 1, window and softcap": (dict(window=(64, 0), score_mod=mods.softcap(4.0)), (8, 1),
                                       64, "bfloat16"),
    "GQA 2 on 2 (groups of 1), document": (dict(mask_mod=mods.document(DOC)), (2, 2), 64,
                                           "float16"),
}


def _dtype(source, dtype):
    """The dtype a source runs the case in: the Turing build takes float16 only, so its run of a
    bfloat16 case is the same case in float16 (every variant still runs on every source)."""
    allowed = TC.variants[source].dtypes
    return dtype if allowed is None or dtype in allowed else allowed[0]


def _inputs(H, Hkv, d, name, seed=0):
    import cupy as cp

    shapes = [(2, H, N, d), (2, Hkv, N, d), (2, Hkv, N, d), (2, H, N, d)]
    return lowp.random_inputs(cp, shapes, name, seed)


def _run(source, name):
    """VARIANTS[name] through tc on NaN-poisoned outputs: (keywords without causal, causal,
    dtype, (q, k, v, do) on the device and on the host, o, lse, grads)."""
    kw, (H, Hkv), d, dtype = VARIANTS[name]
    kw, dtype = dict(kw), _dtype(source, dtype)
    causal = kw.pop("causal", False)
    q, k, v, do = _inputs(H, Hkv, d, dtype)
    variant = KernelVariant.of(kw.get("window"), kw.get("mask_mod"), kw.get("score_mod"))
    o, lse = launch.forward("tc", q, k, v, causal, variant=variant,
                            out=(_poisoned(q.shape, q.dtype), _poisoned(q.shape[:3], np.float32)))
    grads = launch.backward("tc", do, q, k, v, o, lse, causal, variant=variant,
                            out=tuple(_poisoned(x.shape, x.dtype) for x in (q, k, v)))
    host = [x.get() for x in (q, k, v, do)]
    return kw, causal, dtype, (q, k, v, do), host, o, lse, grads


@pytest.mark.parametrize("name", VARIANTS)
def test_tc_variant_within_fa_rule_against_the_oracle(source, name):
    import cupy as cp

    kw, causal, dtype, (q, k, v, do), host, o, lse, grads = _run(source, name)
    as64 = [lowp.to_float32(x).astype(np.float64) for x in host]
    o64, lse64 = variant_attention(*as64[:3], causal, **kw)
    g64 = variant_attention_backward(as64[3], *as64[:3], causal, **kw)
    o16, _ = variant_attention(*host[:3], causal, stored=dtype, **kw)
    g16 = variant_attention_backward(host[3], *host[:3], causal, stored=dtype, **kw)
    slack = 1e-5 * float(np.abs(o64).max())
    for label, out, ref, naive in zip(("o", "dq", "dk", "dv"), (o, *grads), (o64, *g64),
                                      (o16, *g16)):
        # within_fa_rule raises on NaN: an unwritten (poisoned) element fails here
        ok, err, bound = lowp.within_fa_rule(out.get(), ref, naive, slack=slack)
        assert ok, f"{label}: error {err:.3g} > bound {bound:.3g} (2 x unfused {dtype}'s)"
    lse = lse.get()
    empty = np.isneginf(lse64)
    np.testing.assert_array_equal(np.isneginf(lse), empty)  # rows no key sees: -inf, no NaN
    assert not np.isnan(lse).any()
    assert np.abs(lse[~empty] - lse64[~empty]).max() < 1e-3 * max(1.0, np.abs(lse64).max())
    if empty.any():  # ... O = 0 and dQ = 0 there
        assert not o.get().view(np.uint16)[empty].any()
        assert not grads[0].get().view(np.uint16)[empty].any()
    # flash_attention routes 16-bit CuPy arrays with a variant to tc, and gives the same bits
    again = flashlab.flash_attention(q, k, v, causal, return_lse=True, **kw)
    assert bool((again[0].view(cp.uint16) == o.view(cp.uint16)).all())


def test_causal_as_a_mask_mod_gives_the_built_in_causal_bits(source):
    import cupy as cp

    q, k, v, do = _inputs(2, 2, 64, _dtype(source, "bfloat16"), seed=3)
    plain = launch.forward("tc", q, k, v, True)
    as_mod = launch.forward("tc", q, k, v, False, variant=KernelVariant.of(None, mods.causal()))
    for a, b in zip(plain, as_mod):
        assert bool((a.view(cp.uint8) == b.view(cp.uint8)).all())
    g_plain = launch.backward("tc", do, q, k, v, *plain, True)
    g_mod = launch.backward("tc", do, q, k, v, *as_mod, False,
                            variant=KernelVariant.of(None, mods.causal()))
    for a, b in zip(g_plain, g_mod):
        assert bool((a.view(cp.uint16) == b.view(cp.uint16)).all())


def test_a_mask_that_hides_everything_gives_zeros_and_minus_inf(source):
    import cupy as cp

    q, k, v, do = _inputs(2, 2, 128, _dtype(source, "bfloat16"), seed=5)
    variant = KernelVariant.of(None, lambda b, h, q_idx, kv_idx: q_idx < 0)
    o, lse = launch.forward("tc", q, k, v, False, variant=variant,
                            out=(_poisoned(q.shape, q.dtype), _poisoned(q.shape[:3], np.float32)))
    assert not bool(o.view(cp.uint16).any()) and bool(cp.isneginf(lse).all())
    grads = launch.backward("tc", do, q, k, v, o, lse, False, variant=variant,
                            out=tuple(_poisoned(x.shape, x.dtype) for x in (q, k, v)))
    assert not any(bool(g.view(cp.uint16).any()) for g in grads)


TWIN = ["window (100, 0)", "document, causal", "softcap(4)", "GQA 4 on 2, causal"]


@pytest.mark.parametrize("name", TWIN)
def test_tc_variant_matches_its_twin(source, name):
    # the kernel's variant build against reference/tc.py's twin with the same variant (the
    # same 16-bit roundings): outputs and gradients within the trace tolerance of tc
    from flashlab import registry
    from flashlab.reference import tc_backward, tc_forward

    kw, causal, dtype, _, host, o, lse, grads = _run(source, name)
    to, tl = tc_forward(*host[:3], causal, gqa=True, **kw)
    tg = tc_backward(host[3], *host[:3], to, tl, causal, gqa=True, **kw)
    rtol, atol = registry.get("tc").tolerance.trace_tolerance(dtype)
    for label, a, b in zip(("o", "dq", "dk", "dv"), (o, *grads), (to, *tg)):
        a32, b32 = lowp.to_float32(a.get()), lowp.to_float32(b)
        scale = max(1.0, float(np.abs(b32).max()))
        np.testing.assert_allclose(a32, b32, rtol=rtol, atol=atol * scale, err_msg=label)
    np.testing.assert_array_equal(np.isneginf(lse.get()), np.isneginf(tl))
