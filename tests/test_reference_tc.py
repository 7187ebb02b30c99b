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
                                tc_forward_steps, within_fa_rule)
from flashlab.reference import tc as tc_mod
from flashlab.reference.tc import tc_blocks


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
    Br, Bc, _ = tc_blocks(d, direction)
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
    name = "O~_i" if direction == "forward" else "dK~_j"
    i, j = expected.order[2]
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
            assert (div.quantity, div.line, div.j) == ("O~_i", line, 0)
        else:
            assert div.quantity in ("dV~_j", "dQ_ij", "dK~_j")


# ----------------------------------------------------------------------------- the warps

@pytest.mark.parametrize("d, Br, WM", [(32, 128, 2), (64, 128, 2), (128, 128, 1)])
def test_forward_warps_own_16_row_slabs(rng, d, Br, WM):
    (q, k, v, _), _ = _inputs(rng, np.float16, Br + 40, 70, d, H=1)
    steps = list(tc_forward_steps(q, k, v))
    assert steps[0].blocks[2] == Br
    for s in steps:
        w = s.warp_of_row
        br = s.O_tilde_i.shape[2]
        assert w.shape == (br,)
        assert np.array_equal(w, np.arange(br) // (16 * WM))  # warp w: rows w*16*WM .. +16*WM-1
        assert np.all(np.bincount(w)[:-1] == 16 * WM)  # whole slabs, only the last may be ragged
    last = [s for s in steps if s.i == 1][0]  # the ragged row block: 40 rows
    assert np.array_equal(np.unique(last.warp_of_row), np.arange(-(-40 // (16 * WM))))


def test_backward_warps_own_16_keys(rng):
    (q, k, v, do), _ = _inputs(rng, np.float16, 100, 150, 64, H=1)
    o, lse = tc_forward(q, k, v)
    steps = list(tc_backward_steps(do, q, k, v, o, lse, warps=4))  # Bc = 64
    assert {s.blocks[3] for s in steps} == {64}
    for s in steps:
        bc = s.dV_tilde_j.shape[2]
        assert np.array_equal(s.warp_of_key, np.arange(bc) // 16)
    assert np.array_equal(steps[-1].warp_of_key, [0] * 16 + [1] * 6)  # keys 128..149
    default = next(tc_backward_steps(do, q, k, v, o, lse))
    assert default.blocks[2:] == (64, 128) and default.warp_of_key.max() == 7  # 8 warps


def test_default_tiles_are_the_kernel_launch():
    from flashlab.cuda_kernel_ops import tc_plan
    for d in (32, 64, 128):
        for direction in ("forward", "backward"):
            p = tc_plan(d, direction)
            assert tc_blocks(d, direction) == (p["Br"], p["Bc"], p["threads"] // 32)


def test_loop_order_and_causal_start(rng):
    (q, k, v, do), _ = _inputs(rng, np.float16, 300, 300, 64, H=1)
    o, lse = tc_forward(q, k, v, True)
    fwd = [(s.i, s.j, s.seq) for s in tc_forward_steps(q, k, v, True)]  # Br = 128, Bc = 64
    jend = {0: 2, 1: 4, 2: 5}  # tiles up to the one holding the block's last row, 127, 255, 299
    assert fwd == [(i, j, j) for i in range(3) for j in range(jend[i])]
    bwd = [(s.i, s.j, s.seq) for s in tc_backward_steps(do, q, k, v, o, lse, True)]  # 64, 128
    i0 = {0: 0, 1: 2, 2: 4}  # floor(j * 128 / 64)
    assert bwd == [(i, j, i - i0[j]) for j in range(3) for i in range(i0[j], 5)]


# ----------------------------------------------------------------------------- the roundings

@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_rounds_p_tilde_before_pv_and_not_in_l(rng, dtype):
    (q, k, v, _), (q64, k64, v64, _) = _inputs(rng, DTYPES[dtype], 150, 140, 64)
    first = next(tc_forward_steps(q, k, v))
    P, P16 = first.P_tilde_ij, first.P_rounded_ij
    assert P.dtype == np.float32 and P16.dtype == q.dtype
    assert np.any(P16.astype(np.float32) != P)  # the rounding is really there
    V_0 = v[:, :, :64].astype(np.float32)
    assert np.array_equal(first.O_tilde_i, P16.astype(np.float32) @ V_0)  # O~ uses round16(P~)
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
    br, bc = s.dQ_ij.shape[2], s.dV_tilde_j.shape[2]  # 64 queries, 128 keys
    K_0 = k[:, :, :bc].astype(f32)
    Q_0, dO_0 = q[:, :, :br].astype(f32), do[:, :, :br].astype(f32)
    P16, dS16 = s.P_rounded_ij.astype(f32), s.dS_rounded_ij.astype(f32)
    assert np.array_equal(s.dV_tilde_j, np.swapaxes(P16, -1, -2) @ dO_0)
    assert np.array_equal(s.dQ_ij, tau * (dS16 @ K_0))
    assert np.array_equal(s.dK_tilde_j, tau * (np.swapaxes(dS16, -1, -2) @ Q_0))
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
    with pytest.raises(ValueError, match="Bc must be 16 \\* warps = 32"):
        tc_backward(do, q, k, v, o, lse, Bc=64, warps=2)
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
