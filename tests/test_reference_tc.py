"""The tensor-core step-through (flashlab/reference/tc.py, twin of kernels/tc.cu): in fp16 and bf16
it passes FlashAttention's rule against float64, its trace follows fa2's float64 trace to within
16-bit rounding, its warps own the rows and keys kernels/tc.cu gives them, and its roundings are
where the kernel's are. CPU only."""
import ml_dtypes
import numpy as np
import pytest

from flashlab import trace
from flashlab.reference import (fa2_backward, fa2_backward_steps, fa2_forward, fa2_forward_steps,
                                naive_attention, naive_attention_backward, naive_lowp_backward,
                                naive_lowp_forward, tc_backward, tc_backward_steps, tc_forward,
                                tc_block_order, tc_forward_steps, within_fa_rule)
from flashlab.reference import tc as tc_mod
from flashlab.launch.plans import tc_head_group
from flashlab.registry import TC_BACKWARD, TC_FORWARD
from flashlab.reference.schedule import block_order_makespan


DTYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8}  # half an ulp at 1


def _inputs(rng, dtype, Nq, Nk, d, B=1, H=2):
    """Random normal q, k, v, do in `dtype` (never zeros) and their exact float64 copies."""
    lowp = tuple(rng.standard_normal(s).astype(dtype)
                 for s in ((B, H, Nq, d), (B, H, Nk, d), (B, H, Nk, d), (B, H, Nq, d)))
    return lowp, tuple(x.astype(np.float64) for x in lowp)


def _rule(name, out, ref64, naive):
    ok, err, bound = within_fa_rule(out, ref64, naive)
    assert ok, f"{name}: max error {err:.3g} exceeds 2 x naive 16-bit error + slack = {bound:.3g}"


# ---------------------------------------------------------------------------- FlashAttention's rule

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("Nq, Nk, d", [(200, 130, 64), (130, 200, 32)])
def test_outputs_within_fa_rule_of_float64(rng, dtype, causal, Nq, Nk, d):
    (q, k, v, do), (q64, k64, v64, do64) = _inputs(rng, DTYPES[dtype], Nq, Nk, d)
    o, lse = tc_forward(q, k, v, causal)
    assert o.dtype == q.dtype and lse.dtype == np.float32
    o64, lse64 = fa2_forward(q64, k64, v64, causal)
    o_naive, _ = naive_lowp_forward(q, k, v, causal)
    _rule("o", o, o64, o_naive)
    assert np.max(np.abs(lse - lse64)) < 1e-4  # L stays fp32

    grads = tc_backward(do, q, k, v, o, lse, causal)
    grads64 = fa2_backward(do64, q64, k64, v64, o64, lse64, causal)
    naive = naive_lowp_backward(do, q, k, v, causal)
    for name, g, g64, gn in zip(("dq", "dk", "dv"), grads, grads64, naive):
        assert g.dtype == q.dtype, name
        _rule(name, g, g64, gn)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_default_tiles_and_scale_within_fa_rule(rng, dtype):
    (q, k, v, do), (q64, k64, v64, do64) = _inputs(rng, DTYPES[dtype], 77, 93, 32)
    kw = dict(causal=True, softmax_scale=0.3)
    o, lse = tc_forward(q, k, v, Br=32, Bc=48, warps=2, **kw)
    grads = tc_backward(do, q, k, v, o, lse, Br=48, Bc=32, **kw)
    o64, lse64 = naive_attention(q64, k64, v64, **kw)
    grads64 = naive_attention_backward(do64, q64, k64, v64, **kw)
    _rule("o", o, o64, naive_lowp_forward(q, k, v, **kw)[0])
    for name, g, g64, gn in zip(("dq", "dk", "dv"), grads, grads64,
                                naive_lowp_backward(do, q, k, v, **kw)):
        _rule(name, g, g64, gn)


# ----------------------------------------------------------------------------- traces

def _trace_pair(rng, dtype, causal, direction, Nq=200, Nk=130, d=64):
    """(fa2 float64 trace, tc trace) on the same 16-bit inputs, with the kernel's own tiles."""
    (q, k, v, do), (q64, k64, v64, do64) = _inputs(rng, DTYPES[dtype], Nq, Nk, d)
    Br, Bc, _ = tc_mod.tc_blocks(d, direction)
    if direction == "forward":
        actual, _ = trace.record(tc_forward_steps(q, k, v, causal), label="tc reference F2")
        expected, _ = trace.record(fa2_forward_steps(q64, k64, v64, causal, Br=Br, Bc=Bc))
    else:
        o, lse = tc_forward(q, k, v, causal)
        actual, _ = trace.record(tc_backward_steps(do, q, k, v, o, lse, causal),
                                 label="tc reference G2")
        o64, lse64 = o.astype(np.float64), lse.astype(np.float64)
        expected, _ = trace.record(
            fa2_backward_steps(do64, q64, k64, v64, o64, lse64, causal, Br=Br, Bc=Bc))
    return expected, actual


def _tol(dtype):
    # ten units of 16-bit roundoff: the P~, P and dS roundings move a traced value by a few units
    # (measured: <= 5 in fp16, <= 5 in bf16 on these shapes); a real slip moves it far more
    u = UNIT_ROUNDOFF[dtype]
    return dict(rtol=10 * u, atol=10 * u)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_trace_follows_fa2_float64(rng, dtype, causal, direction):
    expected, actual = _trace_pair(rng, dtype, causal, direction)
    assert actual.order == expected.order  # same steps, same loop order, same causal skipping
    assert trace.compare(expected, actual, **_tol(dtype)) is None


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_trace_catches_a_modified_tile(rng, direction):
    expected, actual = _trace_pair(rng, "bfloat16", True, direction)
    name = "O~" if direction == "forward" else "dK~"
    # a step whose tile holds row 3 (the backward's second key tile has only 2 of 130 keys)
    i, j = expected.order[2 if direction == "forward" else 1]
    actual.values[name][0, 1, i, j, 3, 5] += 0.5
    div = trace.compare(expected, actual, **_tol("bfloat16"))
    assert div is not None
    assert (div.i, div.j, div.h, div.quantity, div.row, div.col) == (i, j, 1, name, 3, 5)


def test_trace_catches_coarse_rounding_of_p(rng, monkeypatch):
    """A 'kernel' that rounds its mma operands to 8 bits (e4m3) instead of 16 diverges."""
    def to_fp8_then_back(x, dtype):
        return np.asarray(x, np.float32).astype(ml_dtypes.float8_e4m3fn).astype(dtype)

    monkeypatch.setattr(tc_mod, "_round16", to_fp8_then_back)
    for direction, line in (("forward", "F2:L7"), ("backward", None)):
        expected, actual = _trace_pair(rng, "float16", False, direction)
        div = trace.compare(expected, actual, **_tol("float16"))
        assert div is not None, direction
        if line:
            assert (div.quantity, div.line, div.j) == ("O~", line, 0)
        else:
            assert div.quantity in ("dV~", "dQ_ij", "dK~")


# ----------------------------------------------------------------------------- the warps

@pytest.mark.parametrize("d", [32, 64, 96, 128, 256])
def test_forward_warps_own_16_row_slabs(rng, d):
    WM, NW = TC_FORWARD[d]["WM"], TC_FORWARD[d]["NW"]
    Br = 16 * WM * NW
    (q, k, v, _), _ = _inputs(rng, np.float16, Br + 40, 70, d, H=1)
    steps = list(tc_forward_steps(q, k, v))
    assert steps[0].blocks[2] == Br
    for s in steps:
        w = s.warp_of_row
        br = s.O_tilde.shape[2]
        assert w.shape == (br,)
        assert np.array_equal(w, np.arange(br) // (16 * WM))  # warp w: rows w*16*WM .. +16*WM-1
        assert np.all(np.bincount(w)[:-1] == 16 * WM)  # whole slabs, only the last may be ragged
    last = [s for s in steps if s.i == 1][0]  # the ragged row block: 40 rows
    assert np.array_equal(np.unique(last.warp_of_row), np.arange(-(-40 // (16 * WM))))


def _blocks_of(warp_map, warps):
    """Each warp's entries of a 2-D warp map as (first row, first col, rows, cols); asserts they
    fill that rectangle (a contiguous block)."""
    out = []
    for w in range(warps):
        at = np.argwhere(warp_map == w)
        (r0, c0), (r1, c1) = at.min(axis=0), at.max(axis=0) + 1
        assert len(at) == (r1 - r0) * (c1 - c0), f"warp {w} does not hold a contiguous block"
        out.append((r0, c0, r1 - r0, c1 - c0))
    return out


def test_backward_warps_split_each_product_as_a_grid(rng):
    d = 64
    c = TC_BACKWARD[d]
    Br, Bc, NW, WS, WKV, WQ = c["BR"], c["BC"], c["NW"], c["WS"], c["WKV"], c["WQ"]
    SK, SQ = Bc // WS, Br // (NW // WS)  # kernels/tc.cu tc_backward's warp tiles
    KK, KD = Bc // WKV, d // (NW // WKV)
    QQ, QD = Br // WQ, d // (NW // WQ)
    (q, k, v, do), _ = _inputs(rng, np.float16, Br + 36, Bc + 22, d, H=1)
    o, lse = tc_forward(q, k, v)
    steps = list(tc_backward_steps(do, q, k, v, o, lse))
    assert steps[0].blocks[2:] == (Br, Bc) and len(steps) == 4
    full = steps[0]  # (i, j) = (0, 0), a whole tile
    for name, rows_, cols, want in (
            ("warp_of_S", Br, Bc, [(w // WS * SQ, w % WS * SK, SQ, SK) for w in range(NW)]),
            ("warp_of_dKV", Bc, d, [(w % WKV * KK, w // WKV * KD, KK, KD) for w in range(NW)]),
            ("warp_of_dQ", Br, d, [(w % WQ * QQ, w // WQ * QD, QQ, QD) for w in range(NW)])):
        m = getattr(full, name)
        assert m.shape == (rows_, cols), name
        assert _blocks_of(m, NW) == want, name  # every warp one block of the kernel's shape
    qs, ks, xs = np.arange(Br)[:, None], np.arange(Bc)[:, None], np.arange(d)[None, :]
    assert np.array_equal(full.warp_of_S, (ks.T // SK) + WS * (qs // SQ))  # [query, key], as S_ij
    assert np.array_equal(full.warp_of_dKV, ks // KK + WKV * (xs // KD))
    assert np.array_equal(full.warp_of_dQ, qs // QQ + WQ * (xs // QD))
    for s in steps:  # the ragged tiles (36 queries, 22 keys) keep the kernel's map, cut short
        br, bc = s.S_ij.shape[2:]
        assert np.array_equal(s.warp_of_S, full.warp_of_S[:br, :bc])
        assert np.array_equal(s.warp_of_dKV, full.warp_of_dKV[:bc])
        assert np.array_equal(s.warp_of_dQ, full.warp_of_dQ[:br])
    assert (steps[-1].i, steps[-1].j) == (1, 1) and steps[-1].S_ij.shape[2:] == (36, 22)

    # tiles the kernel never launches: warp tiles rounded up to 16 rows, some warps hold nothing
    (q, k, v, do), _ = _inputs(rng, np.float16, 50, 40, 32, H=1)
    o, lse = tc_forward(q, k, v)
    for warps, used in ((None, {0, 1, 4, 5}), (3, {0, 1})):  # 8 warps in a 4 x 2 grid; 3 x 1
        s = next(tc_backward_steps(do, q, k, v, o, lse, Br=48, Bc=32, warps=warps))
        assert set(np.unique(s.warp_of_S)) == used  # 32 keys = two 16-key warp tiles


def test_default_tiles_are_the_kernel_launch():
    from flashlab.launch.plans import tc_plan
    for d in (32, 64, 96, 128, 256):
        for direction in ("forward", "backward"):
            p = tc_plan(d, direction)
            assert tc_mod.tc_blocks(d, direction) == (p["Br"], p["Bc"], p["threads"] // 32)


def test_loop_order_and_causal_start(rng):
    (q, k, v, do), _ = _inputs(rng, np.float16, 300, 300, 64, H=1)
    o, lse = tc_forward(q, k, v, True)
    fwd = [(s.i, s.j, s.seq) for s in tc_forward_steps(q, k, v, True, Bc=64)]  # Br = 128
    jend = {0: 2, 1: 4, 2: 5}  # tiles up to the one holding the block's last row, 127, 255, 299
    assert fwd == [(i, j, j) for i in range(3) for j in range(jend[i])]
    bwd = [(s.i, s.j, s.seq) for s in tc_backward_steps(do, q, k, v, o, lse, True, Br=64)]
    i0 = {0: 0, 1: 2, 2: 4}  # floor(j * 128 / 64) with Br = 64, Bc = 128
    assert bwd == [(i, j, i - i0[j]) for j in range(3) for i in range(i0[j], 5)]


# ------------------------------------------------------------------------- the forward's sub-steps

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_forward_sub_steps_are_f2_with_bc_equal_bk(rng, dtype, causal):
    """Load tiles of 64 keys taken 32 at a time compute exactly what tiles of 32 keys do."""
    (q, k, v, _), _ = _inputs(rng, DTYPES[dtype], 150, 90, 32)  # tile j = 1: keys 64..89, no 96..
    kw = dict(causal=causal, Br=32, warps=2, Bk=32)
    wide, (o, lse) = trace.record(tc_forward_steps(q, k, v, Bc=64, **kw))
    narrow, (o32, lse32) = trace.record(tc_forward_steps(q, k, v, Bc=32, **kw))
    assert np.array_equal(o, o32) and np.array_equal(lse, lse32)  # bit for bit

    tiles = {(s.i, s.j): s for s in tc_forward_steps(q, k, v, Bc=32, **kw)}
    skipped = 0
    for s in tc_forward_steps(q, k, v, Bc=64, **kw):
        assert s.Bk == 32 and s.blocks[3] == 64
        a, b = tiles[s.i, 2 * s.j], tiles.get((s.i, 2 * s.j + 1))  # b: None where it never ran
        after = b or a  # the state after the tile is the state after its last sub-step
        for name in ("m_new", "l_i", "O_tilde"):
            assert np.array_equal(s[name], after[name]), (s.i, s.j, name)
        # P~ side by side, each against its own sub-step's running max; zeros where skipped
        P_b = b.P_tilde if b else np.zeros_like(s.P_tilde[..., 32:])
        assert np.array_equal(s.P_tilde, np.concatenate([a.P_tilde, P_b], axis=-1))
        assert np.array_equal(s.P_rounded_ij[..., :32], a.P_rounded_ij)
        skipped += b is None
    assert skipped > 0  # some sub-steps never ran (past Nk, or past the diagonal): no-ops


def _fp32_sum_gap(Q, K, scale):
    """How far apart two fp32 scores S = fl(fl(Q K^T) * scale) of the same 16-bit Q, K may be
    when BLAS adds the d exact products in different orders (base-2 units if scale holds
    log2(e)). Each order is within gamma_d = d u / (1 - d u) * sum_k |q_k k_k| of the exact sum
    (Higham, Accuracy and Stability, 3.1; u = 2^-24 for fp32), so two orders are within twice
    that, and the product with `scale` adds a rounding of u |S| to each."""
    u, d = 2.0**-24, Q.shape[-1]
    gamma = d * u / (1 - d * u)
    absdot = np.abs(Q.astype(np.float64)) @ np.swapaxes(np.abs(K.astype(np.float64)), -1, -2)
    return (2 * gamma + 2 * u) * absdot * abs(scale) * (1 + 4 * u)


@pytest.mark.parametrize("dtype", DTYPES)
def test_d128_sub_steps_round_p_against_their_own_max(rng, dtype):
    """d = 128 takes each 64-key tile as two 32-key sub-steps: P~ of the first is relative to its
    own max, so it rounds differently from Bk = 64, and both pass FlashAttention's rule."""
    (q, k, v, _), (q64, k64, v64, _) = _inputs(rng, DTYPES[dtype], 70, 130, 128, H=1)
    assert TC_FORWARD[128]["BC"] == 64 and TC_FORWARD[128]["BK"] == 32
    sub = next(tc_forward_steps(q, k, v))
    one = next(tc_forward_steps(q, k, v, Bk=64))
    assert sub.Bk == 32 and one.Bk == 64 and sub.blocks[3] == one.blocks[3] == 64

    # The same scores, but not bit for bit: Bk = 32 computes Q_0 K^T as two 32-key products,
    # Bk = 64 as one 64-key product, and BLAS may sum the d = 128 fp32 products in an order that
    # depends on the shape (OpenBLAS's Haswell and Prescott sgemm do: a third of the entries a
    # few fp32 ulps apart). So the two agree to fp32 summation error, and everything after S is
    # checked against each step's own S.
    S2_sub, S2_one = sub.S_base2_ij, one.S_base2_ij
    gap = _fp32_sum_gap(q[:, :, :70], k[:, :, :64], np.float64(tc_mod.LOG2E) / np.sqrt(128))
    assert np.all(np.abs(S2_sub.astype(np.float64) - S2_one) <= gap)
    for s in (sub, one):  # m after the tile is the row max of its S (x ln 2 keeps the max)
        assert np.array_equal(s.m_new, s.S_ij.max(-1))

    # P~ against the running max of its own sub-step: keys 0..31 against their own max, keys
    # 32..63 against the max of all 64; Bk = 64 takes all 64 against the tile's max. The same
    # fp32 subtraction and exp2 as tc.py on the same S, with a few fp32 ulps of room (rtol 2^-21)
    # in case NumPy picks another exp2 loop for another memory layout; a wrong max moves P~ by a
    # factor 2^(the gap between the maxes), far more
    m_a = S2_sub[..., :32].max(-1, keepdims=True)
    m_b = np.maximum(m_a, S2_sub[..., 32:].max(-1, keepdims=True))
    own = np.concatenate([np.exp2(S2_sub[..., :32] - m_a), np.exp2(S2_sub[..., 32:] - m_b)], -1)
    np.testing.assert_allclose(sub.P_tilde, own, rtol=2.0**-21, atol=0)
    np.testing.assert_allclose(one.P_tilde, np.exp2(S2_one - S2_one.max(-1, keepdims=True)),
                               rtol=2.0**-21, atol=0)
    assert np.all(sub.P_tilde[..., :32].max(-1) == 1)  # the first sub-step's own max
    moved = one.P_tilde[..., :32].max(-1) < 1  # rows whose tile max was in keys 32..63
    assert np.any(moved)
    # the 16-bit P~ is each step's own P~ rounded, so in those rows the two round differently
    for s in (sub, one):
        assert np.array_equal(s.P_rounded_ij.view(np.uint16),
                              s.P_tilde.astype(q.dtype).view(np.uint16))
    assert np.any(sub.P_rounded_ij[..., :32][moved] != one.P_rounded_ij[..., :32][moved])

    o_sub, _ = tc_forward(q, k, v)
    o_one, _ = tc_forward(q, k, v, Bk=64)
    assert np.any(o_sub != o_one)
    o64, _ = fa2_forward(q64, k64, v64)
    o_naive, _ = naive_lowp_forward(q, k, v)
    _rule("o (Bk = 32)", o_sub, o64, o_naive)
    _rule("o (Bk = 64)", o_one, o64, o_naive)


# ----------------------------------------------------------------------------- the roundings

@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_rounds_p_tilde_before_pv_and_not_in_l(rng, dtype):
    (q, k, v, _), (q64, k64, v64, _) = _inputs(rng, DTYPES[dtype], 150, 140, 64)
    first = next(tc_forward_steps(q, k, v, Bc=64))  # one sub-step per tile (Bk = Bc = 64)
    P, P16 = first.P_tilde, first.P_rounded_ij
    assert P.dtype == np.float32 and P16.dtype == q.dtype
    assert np.any(P16.astype(np.float32) != P)  # the rounding is really there
    V_0 = v[:, :, :64].astype(np.float32)
    assert np.array_equal(first.O_tilde, P16.astype(np.float32) @ V_0)  # O~ uses round16(P~)
    assert np.allclose(first.l_i, P.sum(-1), rtol=1e-6, atol=0)  # l sums the unrounded P~
    assert not np.allclose(first.l_i, P16.astype(np.float32).sum(-1), rtol=1e-6, atol=0)

    # so the output differs from fp32 attention rounded once at the end ...
    o, _ = tc_forward(q, k, v)
    o32, _ = fa2_forward(*(x.astype(np.float32) for x in (q, k, v)), Br=128, Bc=64)
    assert np.any(o != o32.astype(q.dtype))
    # ... but only by a few 16-bit roundings
    o64, _ = fa2_forward(q64, k64, v64)
    scale = np.max(np.abs(o64))
    assert np.max(np.abs(o.astype(np.float64) - o64)) < 4 * UNIT_ROUNDOFF[dtype] * scale


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_rounds_p_and_ds_before_their_products(rng, dtype):
    (q, k, v, do), _ = _inputs(rng, DTYPES[dtype], 90, 130, 32)
    o, lse = tc_forward(q, k, v)
    s = next(tc_backward_steps(do, q, k, v, o, lse))  # (i, j) = (0, 0): dV~, dK~ are one term
    f32 = np.float32
    assert s.P_rounded_ij.dtype == q.dtype and s.dS_rounded_ij.dtype == q.dtype
    assert np.any(s.dS_rounded_ij.astype(f32) != s.dS_ij)
    tau = f32(1 / np.sqrt(32))
    br, bc = s.dQ_ij.shape[2], s.dV_tilde.shape[2]  # 64 queries, 128 keys
    K_0 = k[:, :, :bc].astype(f32)
    Q_0, dO_0 = q[:, :, :br].astype(f32), do[:, :, :br].astype(f32)
    P16, dS16 = s.P_rounded_ij.astype(f32), s.dS_rounded_ij.astype(f32)
    assert np.array_equal(s.dV_tilde, np.swapaxes(P16, -1, -2) @ dO_0)
    assert np.array_equal(s.dQ_ij, tau * (dS16 @ K_0))
    assert np.array_equal(s.dK_tilde, tau * (np.swapaxes(dS16, -1, -2) @ Q_0))
    assert not np.allclose(s.dQ_ij, tau * (s.dS_ij @ K_0), rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------- bad inputs

def test_bad_inputs_name_the_argument(rng):
    (q, k, v, do), _ = _inputs(rng, np.float16, 40, 40, 32)
    with pytest.raises(ValueError, match="q dtype must be float16 or bfloat16 for the tensor-core "
                                         "reference, got float32"):
        tc_forward(q.astype(np.float32), k.astype(np.float32), v.astype(np.float32))
    with pytest.raises(ValueError, match="one dtype"):
        tc_forward(q, k.astype(np.float32), v)
    (q40, k40, v40, _), _ = _inputs(rng, np.float16, 20, 20, 40)
    with pytest.raises(ValueError, match="head dim d = 40 .* multiple of 16"):
        tc_forward(q40, k40, v40, Br=32, Bc=32)
    with pytest.raises(ValueError, match="Br = 24 must be a multiple of 16"):
        tc_forward(q, k, v, Br=24)
    with pytest.raises(ValueError, match="Bc = 40 must be a multiple of 16"):
        tc_forward(q, k, v, Bc=40)
    with pytest.raises(ValueError, match="Br = 48 .* 2 warps"):
        tc_forward(q, k, v, Br=48, warps=2)
    o, lse = tc_forward(q, k, v)
    with pytest.raises(ValueError, match="Br = 24"):
        tc_backward(do, q, k, v, o, lse, Br=24)
    with pytest.raises(ValueError, match="Bk = 24 must be a multiple of 16"):
        tc_forward(q, k, v, Bc=64, Bk=24)
    with pytest.raises(ValueError, match=r"Bk = 48 must divide Bc = 64.* \[16, 32, 64\]"):
        tc_forward(q, k, v, Bc=64, Bk=48)
    with pytest.raises(ValueError, match="^do "):
        tc_backward(do.astype(np.float32), q, k, v, o, lse)
    with pytest.raises(ValueError, match="no default forward tile for head dim 48"):
        tc_forward(*(x[..., :48] for x in _inputs(rng, np.float16, 8, 8, 64)[0][:3]))


# ----------------------------------------------------------------------------- naive in 16 bits

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_naive_lowp_error_is_real_and_small(rng, dtype, causal):
    (q, k, v, do), (q64, k64, v64, do64) = _inputs(rng, DTYPES[dtype], 120, 90, 32)
    o, lse = naive_lowp_forward(q, k, v, causal)
    o64, lse64 = naive_attention(q64, k64, v64, causal)
    grads = naive_lowp_backward(do, q, k, v, causal)
    grads64 = naive_attention_backward(do64, q64, k64, v64, causal)
    u = UNIT_ROUNDOFF[dtype]
    for name, x, ref in zip(("o", "dq", "dk", "dv"), (o, *grads), (o64, *grads64)):
        assert x.dtype == q.dtype, name
        rel = np.max(np.abs(x.astype(np.float64) - ref)) / np.max(np.abs(ref))
        assert 0 < rel < 8 * u, f"{name}: {rel:.3g} of max|ref|, unit roundoff {u:.3g}"
    assert np.max(np.abs(lse - lse64)) < 16 * u * np.max(np.abs(lse64))


def test_within_fa_rule_fails_bad_results_and_refuses_nan(rng):
    ref = rng.standard_normal((2, 3, 8))
    naive = ref + 1e-3 * rng.standard_normal(ref.shape)
    assert within_fa_rule(ref + 1e-3, ref, naive)[0]
    ok, err, bound = within_fa_rule(ref + 0.1, ref, naive)
    assert not ok and err > bound
    # an exact naive result leaves only the slack, 1e-5 * max|ref|
    assert within_fa_rule(ref + 1e-7, ref, ref)[0]
    assert not within_fa_rule(ref + 1e-3, ref, ref)[0]
    assert within_fa_rule(np.zeros(4), np.zeros(4), np.zeros(4))[0]
    bad = ref.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"out holds NaN \(first at index \(1, 2, 3\)\)"):
        within_fa_rule(bad, ref, naive)
    with pytest.raises(ValueError, match="naive_lowp holds NaN"):
        within_fa_rule(ref, ref, bad)


def test_backward_takes_tc90s_warp_grids(rng):
    # kernels/tc90.cu: warp w owns keys 16 w .. of S^T and dK~ (grid 8 x 1), and queries
    # 16 (w % 4) .., columns (w / 4) d / 2 .. of dQ at Br = 64 (grid 4 x 2), or queries 16 w ..
    # at Br = 128 (grid 8 x 1); the numbers do not depend on the grid, only the warp labels
    from flashlab.launch.plans import tc_plan

    d = 64
    (q, k, v, do), _ = _inputs(rng, np.float16, 130, 150, d, H=1)
    o, lse = tc_forward(q, k, v)
    base = tc_mod.tc_backward(do, q, k, v, o, lse, Br=64, Bc=128, warps=8)
    for Br in (64, 128):
        grid = tc_plan(d, "backward", dict(BR=Br, BC=128, QS=2, MINB=1))["grid"]
        s = next(tc_backward_steps(do, q, k, v, o, lse, Br=Br, Bc=128, warps=8, grid=grid))
        qs, ks, xs = np.arange(Br)[:, None], np.arange(128)[:, None], np.arange(d)[None, :]
        assert np.array_equal(s.warp_of_S, np.broadcast_to(ks.T // 16, (Br, 128)))
        assert np.array_equal(s.warp_of_dKV, np.broadcast_to(ks // 16, (128, d)))
        want_dq = qs // 16 if Br == 128 else qs // 16 + 4 * (xs // (d // 2))
        assert np.array_equal(s.warp_of_dQ, np.broadcast_to(want_dq, (Br, d)))
        if Br == 64:
            got = tc_mod.tc_backward(do, q, k, v, o, lse, Br=64, Bc=128, warps=8, grid=grid)
            for a, b in zip(got, base):
                assert np.array_equal(a.view(np.uint16), b.view(np.uint16))


# ---------------------------------------------------------------------------- the forward's block order

@pytest.mark.parametrize("long_high", [True, False], ids=["forward", "backward"])
@pytest.mark.parametrize("nx, BH, group", [(1, 1, 1), (5, 7, 1), (5, 7, 3), (5, 7, 7), (16, 4, 9),
                                           (3, 10, 4)])
def test_causal_block_order_is_longest_first_within_head_groups(nx, BH, group, long_high):
    order = tc_block_order(nx, BH, True, group, long_high)
    # every (block, head) exactly once: the kernel writes every output row
    assert sorted(order) == sorted((x, bh) for x in range(nx) for bh in range(BH))
    g = min(group, BH)
    longest = nx - 1 if long_high else 0
    for c in range(0, BH, g):  # one group after another ...
        heads = set(range(c, min(BH, c + g)))
        part = order[c * nx:(c + len(heads)) * nx]
        assert {bh for _, bh in part} == heads
        xs = [x for x, _ in part]
        assert xs == sorted(xs, reverse=long_high)  # ... inside it, the longest blocks first
        assert xs[:len(heads)] == [longest] * len(heads)


def test_block_order_without_the_mask_is_head_by_head():
    for long_high in (True, False):
        assert tc_block_order(3, 2, False, 5, long_high) == [(0, 0), (1, 0), (2, 0),
                                                            (0, 1), (1, 1), (2, 1)]
    assert tc_block_order(3, 2, True, 1) == [(2, 0), (1, 0), (0, 0), (2, 1), (1, 1), (0, 1)]
    assert tc_block_order(2, 3, True, 3) == [(1, 0), (1, 1), (1, 2), (0, 0), (0, 1), (0, 2)]
    assert tc_block_order(2, 3, True, 3, False) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    with pytest.raises(ValueError, match="group"):
        tc_block_order(2, 3, True, 0)


def test_head_group_fits_k_and_v_in_a_third_of_l2():
    l2 = 50 * 2**20  # an H100's
    # N = 1k, d = 128, 16-bit: 512 KiB of K and V per head
    assert tc_head_group(l2, 1024, 128, 256) == (l2 // 3) // (2 * 1024 * 128 * 2) == 33
    assert tc_head_group(l2, 1024, 64, 256) == 66
    assert tc_head_group(l2, 16384, 128, 16) == 2
    assert tc_head_group(l2, 1024, 128, 8) == 8         # at most every head
    assert tc_head_group(l2, 1 << 22, 128, 4) == 1      # at least 1
    assert tc_head_group(0, 1024, 128, 4) == 1          # L2 size unknown


def test_grouped_longest_first_shortens_the_modelled_tail():
    # N = 1k at Br = 64: 16 row blocks per head, 256 heads, 264 resident blocks (an H100 at d = 128)
    per_head = block_order_makespan(16, 256, 1, 264)
    grouped = block_order_makespan(16, 256, 33, 264)   # tc_head_group's choice there
    everything = block_order_makespan(16, 256, 256, 264)
    assert per_head > 1.05          # each head longest first: the last wave mixes long and short
    assert grouped < per_head - 0.03
    assert everything < 1.02        # longest first over the whole grid: almost no tail
    for long_high in (True, False):  # the backward's mirror order models the same
        assert block_order_makespan(16, 256, 33, 264, long_high) == pytest.approx(grouped)
    with pytest.raises(ValueError, match="slots"):
        block_order_makespan(4, 4, 1, 0)
