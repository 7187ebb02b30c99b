"""Every step-through equals the float64 oracle, forward and backward; the oracle's gradients
match central finite differences; NaN and inf propagate exactly as in the oracle."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flashlab.reference import (fa1_backward, fa1_forward, fa2_backward, fa2_forward,
                                naive_attention, naive_attention_backward)
from conftest import qkv, rel_err

STEP_THROUGHS = {"A1/B1": (fa1_forward, fa1_backward), "F2/G2": (fa2_forward, fa2_backward)}

shapes = st.fixed_dictionaries({
    "B": st.integers(1, 2), "H": st.integers(1, 2),
    "Nq": st.integers(1, 40), "Nk": st.integers(1, 40),
    "d": st.sampled_from([1, 2, 3, 7, 16, 33, 64, 128]),
    "Br": st.one_of(st.none(), st.integers(1, 17)), "Bc": st.one_of(st.none(), st.integers(1, 17)),
    "causal": st.booleans(),
    "scale": st.one_of(st.none(), st.floats(0.05, 2.0)),
    "seed": st.integers(0, 2**32 - 1),
})


@pytest.mark.parametrize("name", STEP_THROUGHS)
@settings(max_examples=40, deadline=None)
@given(s=shapes)
def test_step_through_equals_oracle(name, s):
    fwd, bwd = STEP_THROUGHS[name]
    rng = np.random.default_rng(s["seed"])
    q, k, v = qkv(rng, s["B"], s["H"], s["Nq"], s["Nk"], s["d"])
    do = rng.standard_normal(q.shape)
    kw = dict(causal=s["causal"], softmax_scale=s["scale"])
    o_ref, lse_ref = naive_attention(q, k, v, **kw)
    grads_ref = naive_attention_backward(do, q, k, v, **kw)

    o, lse = fwd(q, k, v, Br=s["Br"], Bc=s["Bc"], **kw)
    assert rel_err(o, o_ref) < 1e-12
    assert rel_err(lse, lse_ref) < 1e-12
    grads = bwd(do, q, k, v, o, lse, Br=s["Br"], Bc=s["Bc"], **kw)
    for g, g_ref, label in zip(grads, grads_ref, ("dq", "dk", "dv")):
        assert g.shape == g_ref.shape, label
        assert rel_err(g, g_ref) < 1e-11, label


def test_default_blocks_follow_A1_L1(rng):
    from flashlab.hbm import block_sizes
    from flashlab.reference import fa1_forward_steps
    assert block_sizes(64, 12288) == (48, 48)
    assert block_sizes(128, 12288) == (24, 24)
    assert block_sizes(16, 12288) == (16, 192)  # Br = min(ceil(M/4d), d)
    q, k, v = qkv(rng, 1, 1, 50, 200, 16)
    steps = list(fa1_forward_steps(q, k, v, sram=12288))
    assert steps[0].blocks == (50, 200, 16, 192)
    assert [(s.i, s.j) for s in steps] == [(i, j) for j in range(2) for i in range(4)]


def test_loop_orders_and_causal_skipping(rng):
    from flashlab.reference import fa1_forward_steps, fa2_backward_steps, fa2_forward_steps
    q, k, v = qkv(rng, 1, 1, 9, 9, 4)
    # A1: K/V outer, Q inner, no skipping even when causal
    a1 = [(s.i, s.j) for s in fa1_forward_steps(q, k, v, True, Br=3, Bc=3)]
    assert a1 == [(i, j) for j in range(3) for i in range(3)]
    # F2: Q outer; causal visits only tiles with an unmasked entry (j <= i here)
    f2 = [(s.i, s.j) for s in fa2_forward_steps(q, k, v, True, Br=3, Bc=3)]
    assert f2 == [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]
    o, lse = naive_attention(q, k, v, True)
    g2 = [(s.i, s.j) for s in fa2_backward_steps(q, q, k, v, o, lse, True, Br=3, Bc=3)]
    assert g2 == [(0, 0), (1, 0), (2, 0), (1, 1), (2, 1), (2, 2)]


def test_step_records_carry_the_named_tiles(rng):
    from flashlab.reference import fa1_backward_steps, fa1_forward_steps
    q, k, v = qkv(rng, 2, 1, 10, 7, 3)
    s = next(fa1_forward_steps(q, k, v, Br=4, Bc=5))
    assert s.line == "A1:L12" and (s.i, s.j) == (0, 0)
    assert s.S_ij.shape == (2, 1, 4, 5) and s.P_tilde_ij.shape == (2, 1, 4, 5)
    assert s.m_tilde_ij.shape == s.l_tilde_ij.shape == s.m_new.shape == s.l_new.shape == (2, 1, 4)
    assert s.O_i.shape == (2, 1, 4, 3)
    # A1:L10: P~_ij = exp(S_ij - m~_ij), l~_ij = rowsum(P~_ij)
    np.testing.assert_allclose(s.P_tilde_ij, np.exp(s.S_ij - s.m_tilde_ij[..., None]))
    np.testing.assert_allclose(s.l_tilde_ij, s.P_tilde_ij.sum(-1))
    o, lse = naive_attention(q, k, v)
    b = next(fa1_backward_steps(q, q, k, v, o, lse, Br=4, Bc=5))
    for name in ("P_ij", "dP_ij", "D_i", "dS_ij", "dQ_i", "dK_tilde_j", "dV_tilde_j"):
        assert name in b.tiles
    with pytest.raises(AttributeError, match="has no tile"):
        b.nothing


def test_last_tile_ragged_rows_are_exact(rng):
    # N = 1 and N one past a block edge: the ragged last tile must not read or write past N
    for Nq, Nk in [(1, 1), (1, 9), (9, 1), (17, 16)]:
        q, k, v = qkv(rng, 1, 2, Nq, Nk, 8)
        o_ref, _ = naive_attention(q, k, v, True)
        for fwd, _ in STEP_THROUGHS.values():
            o, _ = fwd(q, k, v, True, Br=8, Bc=8)
            assert rel_err(o, o_ref) < 1e-13


@pytest.mark.parametrize("causal", [False, True])
def test_oracle_gradients_match_central_differences(rng, causal):
    q, k, v = qkv(rng, 1, 2, 5, 4, 3)
    do = rng.standard_normal(q.shape)
    tau = 0.7
    analytic = naive_attention_backward(do, q, k, v, causal, tau)
    eps = 1e-6
    for x, g in zip((q, k, v), analytic):
        num = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            old = x[idx]
            x[idx] = old + eps
            fp = np.sum(do * naive_attention(q, k, v, causal, tau)[0])
            x[idx] = old - eps
            fm = np.sum(do * naive_attention(q, k, v, causal, tau)[0])
            x[idx] = old
            num[idx] = (fp - fm) / (2 * eps)
        np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-8)


def test_causal_alignment_is_top_left_like_torch_is_causal(rng):
    # Nq != Nk: query r sees keys 0..r (torch.tril(ones(Nq, Nk))), so query 0 sees key 0 only
    q, k, v = qkv(rng, 1, 1, 6, 3, 4)
    o, _ = naive_attention(q, k, v, causal=True)
    np.testing.assert_allclose(o[0, 0, 0], v[0, 0, 0])
    # rows r >= Nk - 1 see every key: the same as non-causal there
    o_full, _ = naive_attention(q, k, v, causal=False)
    np.testing.assert_allclose(o[0, 0, 2:], o_full[0, 0, 2:])


@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-5), (np.float16, 5e-3)])
def test_step_throughs_run_in_the_dtype_given(rng, dtype, tol):
    q, k, v = qkv(rng, 1, 2, 19, 23, 16)
    o_ref, _ = naive_attention(q, k, v)
    for fwd, bwd in STEP_THROUGHS.values():
        o, lse = fwd(q.astype(dtype), k.astype(dtype), v.astype(dtype), Br=8, Bc=8)
        assert o.dtype == dtype and lse.dtype == dtype
        assert rel_err(o, o_ref) < tol


@pytest.mark.parametrize("what", ["nan_q", "nan_k", "inf_q", "neg_inf_k", "nan_v"])
@pytest.mark.parametrize("causal", [False, True])
def test_nan_and_inf_propagate_exactly_as_in_the_oracle(rng, what, causal):
    # (A NaN in a value row that the causal mask hides is the one documented exception: the
    # oracle's P @ V multiplies it by 0 and gets NaN, F2 skips the tile; see reference/naive.py.)
    q, k, v = qkv(rng, 1, 1, 11, 9, 4)
    if what == "nan_q":
        q[0, 0, 5, 1] = np.nan
    elif what == "nan_k":
        k[0, 0, 4, 2] = np.nan
    elif what == "inf_q":
        q[0, 0, 3, 0] = np.inf
    elif what == "neg_inf_k":
        k[0, 0, 6, :] = -np.inf
    else:
        v[0, 0, 0, 3] = np.nan  # key 0 is visible to every query, causal or not
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        o_ref, lse_ref = naive_attention(q, k, v, causal)
        assert np.isnan(o_ref).any()  # the case really poisons something
        for fwd, _ in STEP_THROUGHS.values():
            o, lse = fwd(q, k, v, causal, Br=4, Bc=4)
            np.testing.assert_array_equal(np.isnan(o), np.isnan(o_ref))
            np.testing.assert_array_equal(np.isnan(lse), np.isnan(lse_ref))
            np.testing.assert_array_equal(np.isinf(lse), np.isinf(lse_ref))
            finite = np.isfinite(o_ref)
            np.testing.assert_allclose(o[finite], o_ref[finite], rtol=1e-12, atol=1e-12)
