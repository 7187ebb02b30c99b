"""The float64 oracle of the attention variants (flashlab.reference.variants): it agrees with A0
where a variant says nothing new (mask_mod causal, window (-1, -1), GQA as repeated heads), its
gradients agree with central differences (score_mod included), and a row no key is visible to
gives O = 0, lse = -inf and zero gradients, no NaN."""
import numpy as np
import pytest

from flashlab import mods
from flashlab.reference import (naive_attention, naive_attention_backward, variant_attention,
                                variant_attention_backward)


def _qkv(B=2, H=4, Hkv=4, Nq=20, Nk=24, d=8, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, H, Nq, d))
    k, v = (rng.standard_normal((B, Hkv, Nk, d)) for _ in range(2))
    return q, k, v, rng.standard_normal((B, H, Nq, d))


def _all_close(a, b, tol=1e-12):
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=tol, atol=tol)


@pytest.mark.parametrize("variant", [dict(mask_mod=mods.causal()), dict(window=(-1, 0))])
def test_causal_as_a_mask_or_a_window_is_a0_causal(variant):
    q, k, v, do = _qkv()
    _all_close(variant_attention(q, k, v, **variant), naive_attention(q, k, v, causal=True))
    _all_close(variant_attention_backward(do, q, k, v, **variant),
               naive_attention_backward(do, q, k, v, causal=True))


def test_an_unbounded_window_is_no_mask_and_a_window_is_its_mask_mod():
    q, k, v, do = _qkv()
    _all_close(variant_attention(q, k, v, window=(-1, -1)), naive_attention(q, k, v))
    band = lambda b, h, q_idx, kv_idx: (q_idx - kv_idx <= 5) & (kv_idx - q_idx <= 2)  # noqa: E731
    _all_close(variant_attention(q, k, v, window=(5, 2)), variant_attention(q, k, v,
                                                                            mask_mod=band))
    o_w, _ = variant_attention(q, k, v, window=(5, 2))
    assert np.abs(o_w - naive_attention(q, k, v)[0]).max() > 1e-3  # the window did something


@pytest.mark.parametrize("Hkv", [8, 4, 1])  # groups of 1, 2, 8
def test_gqa_is_repeated_heads_with_the_groups_gradients_summed(Hkv):
    q, k, v, do = _qkv(H=8, Hkv=Hkv)
    G = 8 // Hkv
    kf, vf = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)
    _all_close(variant_attention(q, k, v, causal=True), naive_attention(q, kf, vf, causal=True))
    dq, dk, dv = variant_attention_backward(do, q, k, v, causal=True)
    dqf, dkf, dvf = naive_attention_backward(do, q, kf, vf, causal=True)
    assert dk.shape == k.shape and dv.shape == v.shape
    _all_close((dq, dk, dv), (dqf, dkf.reshape(2, Hkv, G, 24, 8).sum(2),
                              dvf.reshape(2, Hkv, G, 24, 8).sum(2)))


def _finite_differences(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        x[i] += eps
        up = f()
        x[i] -= 2 * eps
        down = f()
        x[i] += eps
        g[i] = (up - down) / (2 * eps)
    return g


@pytest.mark.parametrize("variant", [
    dict(score_mod=mods.softcap(2.0), causal=True),
    dict(score_mod=mods.alibi([0.3, 0.7]), window=(3, 1)),
    dict(score_mod=lambda s, b, h, q, k: mods.where(q > k, s * s / 4 + s, mods.exp(s / 2)),
         mask_mod=mods.document(np.array([0, 0, 0, 1, 1, 1, 1]))),
])
def test_gradients_agree_with_central_differences(variant):
    q, k, v, do = _qkv(B=1, H=2, Hkv=1, Nq=7, Nk=7, d=3, seed=3)
    loss = lambda: float((variant_attention(q, k, v, **variant)[0] * do).sum())  # noqa: E731
    grads = variant_attention_backward(do, q, k, v, **variant)
    for name, x, g in zip("qkv", (q, k, v), grads):
        np.testing.assert_allclose(g, _finite_differences(loss, x), rtol=1e-6, atol=1e-8,
                                   err_msg=f"d{name}")


def test_a_row_no_key_is_visible_to_is_zero_with_lse_minus_inf_and_no_nan():
    q, k, v, do = _qkv(Nq=6, Nk=6)
    hidden = lambda b, h, q_idx, kv_idx: (q_idx != 2) & (kv_idx <= q_idx)  # noqa: E731  row 2
    o, lse = variant_attention(q, k, v, mask_mod=hidden, score_mod=mods.softcap(1.0))
    assert (o[:, :, 2] == 0).all() and (lse[:, :, 2] == -np.inf).all()
    assert np.isfinite(o).all() and np.isfinite(np.delete(lse, 2, axis=2)).all()
    grads = variant_attention_backward(do, q, k, v, mask_mod=hidden, score_mod=mods.softcap(1.0))
    assert all(np.isfinite(g).all() for g in grads)
    assert (grads[0][:, :, 2] == 0).all()


def test_bad_variants_name_the_argument():
    q, k, v, _ = _qkv(H=6, Hkv=4)
    with pytest.raises(ValueError, match=r"q has 6 heads and k, v have 4: GQA needs H_kv "
                                         r"dividing H"):
        variant_attention(q, k, v)
    q, k, v, _ = _qkv()
    with pytest.raises(ValueError, match=r"window must be \(left, right\)"):
        variant_attention(q, k, v, window=4)
    with pytest.raises(ValueError, match=r"sliding_window: left must be an int >= -1"):
        variant_attention(q, k, v, window=(-2, 0))
    with pytest.raises(mods.ModError, match="is a score_mod, passed as a mask_mod"):
        variant_attention(q, k, v, mask_mod=mods.softcap(1.0))


def test_flash_attention_takes_the_variants_on_numpy_arrays():
    import flashlab

    q, k, v, do = _qkv(H=4, Hkv=2)
    kw = dict(window=(4, 0), score_mod=mods.softcap(3.0))
    o, lse = flashlab.flash_attention(q, k, v, return_lse=True, **kw)
    _all_close((o, lse), variant_attention(q, k, v, **kw))
    grads = flashlab.flash_attention_backward(do, q, k, v, o, lse, **kw)
    _all_close(grads, variant_attention_backward(do, q, k, v, **kw))
    assert grads[1].shape == k.shape  # GQA: dk with k's 2 heads
    with pytest.raises(ValueError, match=r"lse must have shape \(2, 4, 20\)"):
        flashlab.flash_attention_backward(do, q, k, v, o, lse[:, :1], **kw)


def test_a_variant_where_it_does_not_run_yet_says_what_runs_it():
    import flashlab

    q, k, v, do = _qkv(d=16)  # a head dim fa2 has
    with pytest.raises(ValueError, match=r"^window: kernel 'fa2' takes float32 with variants, "
                                         r"not float64; the float64-capable oracle runs every"):
        flashlab.flash_attention(q, k, v, window=(2, 0), backend="cpu")
    with pytest.raises(ValueError, match=r"^mask_mod: kernel 'fa1' has no variants in its "
                                         r"step-through yet \(the step-throughs of fa2, tc take "
                                         r"them\); kernel='naive' \(or 'auto'\)"):
        flashlab.flash_attention(q, k, v, kernel="fa1", mask_mod=mods.causal())
    # fa2's step-through takes them, forward and backward, GQA alone as well
    o = flashlab.flash_attention(q, k, v, kernel="fa2", mask_mod=mods.causal())
    _all_close(o, variant_attention(q, k, v, True)[0])
    q1, k1, v1, _ = _qkv(H=4, Hkv=1, d=16)
    _all_close(flashlab.flash_attention(q1, k1, v1, kernel="fa2"), variant_attention(q1, k1, v1)[0])
    cap = mods.softcap(2.0)
    o, lse = flashlab.flash_attention(q, k, v, kernel="fa2", score_mod=cap, return_lse=True)
    _all_close(flashlab.flash_attention_backward(do, q, k, v, o, lse, kernel="fa2", score_mod=cap),
               variant_attention_backward(do, q, k, v, score_mod=cap))
    q, k, v, _ = _qkv(H=4, Hkv=1, d=16)
    with pytest.raises(ValueError, match=r"^GQA \(k, v with fewer heads than q\): kernel 'tc' "
                                         r"takes float16, bfloat16 with variants, not float32"):
        flashlab.flash_attention(*(x.astype(np.float32) for x in (q, k, v)), kernel="tc",
                                 backend="cpu")
    with pytest.raises(ValueError, match=r"^window: kernel 'fa1' does not take them yet \(fa2, "
                                         r"tc do\)"):
        flashlab.flash_attention(*(x.astype(np.float32) for x in _qkv(d=8)[:3]), window=(2, 0),
                                 backend="cpu")  # d = 8: auto's float32 kernel is fa1


KERNEL_VARIANTS = {
    "window (20, 0)": dict(window=(20, 0)),
    "document + softcap": dict(mask_mod=mods.document(np.repeat(np.arange(5), 30)),
                               score_mod=mods.softcap(2.0)),
    "alibi, causal": dict(score_mod=mods.alibi([0.2, 0.5]), causal=True),
    "prefix_lm + window": dict(mask_mod=mods.prefix_lm(16), window=(-1, 40)),
    "hides row 7": dict(mask_mod=lambda b, h, q_idx, kv_idx: q_idx != 7),
    "GQA, 4 heads on 2, causal": dict(heads=(4, 2), causal=True),
    "MQA, 4 heads on 1, window and softcap": dict(heads=(4, 1), window=(30, 5),
                                                  score_mod=mods.softcap(3.0)),
}


def _fa2_with_a_variant(name, xp, backend):
    """KERNEL_VARIANTS[name] through fa2 (arrays of module xp: NumPy for the CPU backend, CuPy
    for the GPU) against the float64 oracle: outputs, lse -inf on the rows no key sees, every
    element of NaN-poisoned outputs written, and the gradients."""
    import flashlab
    from flashlab import launch
    from flashlab.mods.kernel import KernelVariant

    host = (lambda a: a.get()) if xp is not np else (lambda a: a)  # noqa: E731
    kw = dict(KERNEL_VARIANTS[name])
    causal = kw.pop("causal", False)
    H, Hkv = kw.pop("heads", (2, 2))
    q, k, v, _ = (x.astype(np.float32) for x in _qkv(B=1, H=H, Hkv=Hkv, Nq=150, Nk=150, d=32))
    dq_, dk_, dv_ = (xp.asarray(x) for x in (q, k, v))
    o, lse = flashlab.flash_attention(dq_, dk_, dv_, causal, return_lse=True, backend=backend,
                                      **kw)
    ro, rl = variant_attention(*(x.astype(np.float64) for x in (q, k, v)), causal, **kw)
    np.testing.assert_allclose(host(o), ro, rtol=0, atol=2e-5 * max(1.0, np.abs(ro).max()))
    np.testing.assert_array_equal(np.isneginf(host(lse)), np.isneginf(rl))  # rows no key sees
    fin = np.isfinite(rl)
    np.testing.assert_allclose(host(lse)[fin], rl[fin], rtol=1e-5, atol=1e-5)
    assert np.isfinite(host(o)).all()
    # every element written: NaN-poisoned outputs come back without one NaN
    out = (xp.full(q.shape, np.nan, np.float32), xp.full(q.shape[:3], np.nan, np.float32))
    launch.forward("fa2", dq_, dk_, dv_, causal, None, out=out,
                   variant=KernelVariant.of(kw.get("window"), kw.get("mask_mod"),
                                            kw.get("score_mod")))
    assert not np.isnan(host(out[0])).any() and not np.isnan(host(out[1])).any()
    np.testing.assert_array_equal(host(out[0]), host(o))

    # the backward: the same variant compiled into fa2_backward, against the oracle's gradients
    do = np.random.default_rng(9).standard_normal(q.shape).astype(np.float32)
    grads = flashlab.flash_attention_backward(xp.asarray(do), dq_, dk_, dv_, o, lse, causal,
                                              backend=backend, **kw)
    ref = variant_attention_backward(*(x.astype(np.float64) for x in (do, q, k, v)), causal, **kw)
    for label, g, r in zip(("dq", "dk", "dv"), grads, ref):
        assert np.isfinite(host(g)).all(), label
        np.testing.assert_allclose(host(g), r, rtol=0, atol=5e-5 * max(1.0, np.abs(r).max()),
                                   err_msg=label)


@pytest.mark.cpu_kernel
@pytest.mark.parametrize("name", KERNEL_VARIANTS)
def test_the_fa2_kernel_compiles_a_variant_in_and_matches_the_oracle(name):
    _fa2_with_a_variant(name, np, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("name", KERNEL_VARIANTS)
def test_the_fa2_kernel_with_a_variant_on_the_gpu_matches_the_oracle(name):
    import cupy

    _fa2_with_a_variant(name, cupy, "auto")


def test_a_variant_compiles_into_fa2_for_the_gpu_with_nvrtc():
    pytest.importorskip("cuda.bindings")
    from flashlab.launch.compiler import nvrtc_compile
    from flashlab.launch.sources import ours
    from flashlab.mods.kernel import KernelVariant

    kv = KernelVariant.of((128, 0), mods.document(np.arange(64) // 8), mods.softcap(30.0))
    src = kv.source(ours("fa2"))
    assert src.text.startswith("#define FL_MODS") and "fl_score_mod" in src.text
    for kv in (kv, KernelVariant.of((4, 4), None, None), KernelVariant.of(None, None,
                                                                        mods.alibi([1.0]))):
        log = nvrtc_compile(kv.source(ours("fa2")), "sm_80",
                            name_expressions=("fa2_forward<64, 64, 64>",
                                              "fa2_backward<64, 64, 64>"))
        assert log == "", log  # not a warning either


STEP_VARIANTS = {
    "window (6, 2)": dict(window=(6, 2)),
    "document, causal": dict(mask_mod=mods.document(np.repeat(np.arange(3), 8)[:20]), causal=True),
    "hides row 5 and key 3": dict(mask_mod=lambda b, h, q_idx, kv_idx: (q_idx != 5) & (kv_idx != 3)),
    "GQA 4 on 2, window": dict(heads=(4, 2), window=(3, 3)),
    "GQA 4 on 1 alone": dict(heads=(4, 1), gqa=True),
    "softcap": dict(score_mod=mods.softcap(1.5)),
    "alibi, causal": dict(score_mod=mods.alibi([0.3, 0.7]), causal=True),
    "a score_mod with a branch, a window": dict(
        score_mod=lambda s, b, h, q, k: mods.where(q > k, s * s / 4 + s, mods.exp(s / 2)),
        window=(5, 2)),
    "softcap, GQA 4 on 2, a row no key sees": dict(
        heads=(4, 2), score_mod=mods.softcap(2.0),
        mask_mod=lambda b, h, q_idx, kv_idx: q_idx != 7),
}


@pytest.mark.parametrize("name", STEP_VARIANTS)
def test_the_fa2_step_through_runs_a_variant_as_the_oracle(name):
    # the step-through's S_ij is the kernels' (score_mod where visible, -inf where hidden), its
    # hidden tiles are skipped, a row with no visible key gives 0 and lse -inf
    from flashlab.reference import fa2_backward, fa2_forward
    from flashlab.reference.fa2 import fa2_forward_steps

    kw = dict(STEP_VARIANTS[name])
    causal = kw.pop("causal", False)
    H, Hkv = kw.pop("heads", (2, 2))
    q, k, v, do = _qkv(B=2, H=H, Hkv=Hkv, Nq=20, Nk=20, d=8)
    o, lse = fa2_forward(q, k, v, causal, Br=4, Bc=8, **kw)
    gqa = kw.pop("gqa", False)
    ro, rl = variant_attention(q, k, v, causal, **kw)
    if gqa:
        kw["gqa"] = True
    _all_close(o, ro)
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(rl))
    _all_close([lse[np.isfinite(rl)]], [rl[np.isfinite(rl)]])
    steps = list(fa2_forward_steps(q, k, v, causal, Br=4, Bc=8, **kw))
    if "window" in kw:  # a window leaves tiles nobody sees: skipped, as the kernels skip them
        assert len(steps) < 5 * 3
    # the backward too, score_mod's derivative included (G2:L6), against the oracle's gradients
    grads = fa2_backward(do, q, k, v, o, lse, causal, Br=4, Bc=8, **kw)
    ref = variant_attention_backward(do, q, k, v, causal,
                                     **{x: y for x, y in kw.items() if x != "gqa"})
    for label, g, r in zip(("dq", "dk", "dv"), grads, ref):
        assert g.shape == r.shape, label
        _all_close(g, r)


@pytest.mark.cpu_kernel
@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("name,kw", [
    ("window, causal", dict(window=(40, 0), causal=True)),
    ("a mask per head", dict(mask_mod=lambda b, h, q_idx, kv_idx: (kv_idx < 48) | (h == 1))),
    ("softcap", dict(score_mod=mods.softcap(2.0))),
    ("alibi, window", dict(score_mod=mods.alibi([0.5, 0.25]), window=(30, 10))),
])
def test_fa2s_trace_with_a_variant_matches_its_step_through_on_the_cpu(direction, name, kw):
    # the kernel compiled with the variant, traced, against the step-through with it: every
    # tile's S_ij, m, l, O~ (forward) and P, dS, dQ_ij, dK~, dV~ (backward); the tiles a mask hides
    # are skipped by both, per head where the mask reads h
    from flashlab.kernel_check import check_kernel

    kw = dict(kw)
    causal = kw.pop("causal", False)
    div, actual, expected = check_kernel("fa2", direction, Nq=130, d=16, causal=causal,
                                         backend="cpu", **kw)
    assert div is None, str(div)
    skipped = (expected.seq < 0).any()  # causal, the window, the head mask skip some tiles
    masked = causal or "window" in kw or "mask_mod" in kw  # a score_mod alone hides nothing
    assert skipped == masked and (actual.seq == expected.seq).all()


@pytest.mark.parametrize("Nq,Nk", [(5, 12), (12, 5), (7, 7)])
def test_bottom_right_alignment_is_flashattentions_for_nq_not_nk(Nq, Nk):
    # FlashAttention aligns causal and window_size at the bottom right: query Nq - 1 with key
    # Nk - 1, so query i sees keys up to i + Nk - Nq; flashlab's causal flag is top-left
    q, k, v, _ = _qkv(B=1, H=2, Hkv=2, Nq=Nq, Nk=Nk, d=8)
    off = mods.bottom_right(Nq, Nk)
    qi, kj = np.arange(Nq)[:, None], np.arange(Nk)[None, :]
    for mask, want in ((mods.causal(off), kj <= qi + Nk - Nq),
                       (mods.sliding_window(3, 1, off), (kj >= qi + Nk - Nq - 3) &
                        (kj <= qi + Nk - Nq + 1))):
        np.testing.assert_array_equal(mask.mask(0, 0, qi, kj), want)
        o, lse = variant_attention(q, k, v, mask_mod=mask)
        S = np.where(want, (q @ np.swapaxes(k, -1, -2)) / np.sqrt(8), -np.inf)
        m = S.max(-1, keepdims=True)
        seen = np.isfinite(m)
        P = np.where(seen, np.exp(S - np.where(seen, m, 0)), 0)
        with np.errstate(invalid="ignore"):
            ref = np.where(seen, (P @ v) / P.sum(-1, keepdims=True), 0)
        _all_close(o, ref)
    if Nq != Nk:  # the top-left flag is another mask there
        assert not np.array_equal(mods.causal().mask(0, 0, qi, kj), mods.causal(off).mask(0, 0, qi, kj))
    with pytest.raises(ValueError, match=r"^offset must be an int"):
        mods.causal(1.5)
