"""GPU: the tensor-core kernels (kernels/tc.cu, and kernels/tc90.cu on compute capability 9.0)
under FlashAttention's own test rule.

Tests that take the `source` fixture run once per source (registry variant) the GPU can run:
"wgmma" (kernels/tc90.cu, what kernel 'tc' runs on an H100 at d = 64 and 128) and "mma"
(kernels/tc.cu, mma.sync; FLASHLAB_TC_WGMMA=0 selects it there, as on every other sm_80+ GPU).

For O, dQ, dK and dV: error against the float64 oracle at most 2x the error of standard attention
computed in the same 16-bit dtype (flashlab.lowp); no NaN; every output element written (outputs
are NaN-poisoned first); the trace equals the step-through twin tile by tile; "auto" routes 16-bit
inputs here; bad inputs get errors that name the argument.
"""
import numpy as np
import pytest

import flashlab
from flashlab import launch, lowp, registry
from flashlab.kernel_check import check_kernel
from flashlab.launch import plans, sources

TC = registry.get("tc")

pytestmark = pytest.mark.gpu

DTYPES = ("float16", "bfloat16")
# (B, H, Nq, Nk, d, causal): N = 1, odd and ragged N, Nq != Nk both ways, every head dim
SHAPES = [
    (1, 1, 1, 1, 64, False), (1, 2, 1, 7, 32, True), (2, 3, 127, 127, 64, False),
    (1, 2, 200, 77, 32, True), (1, 1, 77, 200, 128, True), (2, 2, 257, 129, 128, False),
    (1, 2, 300, 300, 64, True), (1, 1, 65, 65, 128, False), (1, 2, 333, 1000, 64, True),
    (1, 1, 1000, 333, 128, True), (2, 1, 513, 513, 32, False),
    (1, 2, 200, 77, 96, True), (2, 1, 129, 300, 96, False), (1, 1, 1, 5, 96, False),
    (1, 2, 150, 150, 256, True), (1, 1, 77, 200, 256, False), (2, 1, 300, 129, 256, True),
]


@pytest.fixture(autouse=True)
def _sm80():
    import cupy as cp

    if int(cp.cuda.Device().compute_capability) < TC.min_cc:
        pytest.skip("kernel 'tc' needs compute capability 8.0+")


@pytest.fixture(params=["wgmma", "mma", "turing"])
def source(request, monkeypatch):
    """The variant that runs: kernels/tc90.cu ("wgmma", compute capability 9.0), kernels/tc.cu,
    or tc.cu's float16 Turing build ("turing": compute_75 PTX, which the driver compiles for
    this GPU; a T4's default, forced here with FLASHLAB_TC_TURING=1)."""
    import cupy as cp

    monkeypatch.delenv(registry.TURING_FORCE, raising=False)
    if request.param == "turing":
        monkeypatch.setenv(registry.TURING_FORCE, "1")
    elif request.param == "wgmma":
        if int(cp.cuda.Device().compute_capability) != TC.variants["wgmma"].min_cc:
            pytest.skip("kernels/tc90.cu (wgmma) runs on compute capability 9.0 only")
        monkeypatch.setenv("FLASHLAB_TC_WGMMA", "1")
    else:
        monkeypatch.setenv("FLASHLAB_TC_WGMMA", "0")
    return request.param


def _only_where_the_source_has(source, d, dtype="float16"):
    """kernels/tc90.cu and the Turing build have fewer head dims than tc.cu (at the others 'tc'
    runs tc.cu, which the "mma" run of the same test covers), and the Turing build takes float16
    only."""
    v = TC.variants[source]
    if v.head_dims is not None and d not in v.head_dims:
        pytest.skip(f"variant {source!r} (kernels/{v.source}) has no head dim {d}")
    if v.dtypes is not None and dtype not in v.dtypes:
        pytest.skip(f"variant {source!r} takes {', '.join(v.dtypes)} only")


def _inputs(B, H, Nq, Nk, d, name, seed=0):
    import cupy as cp

    return lowp.random_inputs(cp, [(B, H, Nq, d), (B, H, Nk, d), (B, H, Nk, d), (B, H, Nq, d)],
                              name, seed)


def _poisoned(shape, dtype):
    """A buffer of NaN bit patterns: an element the kernel does not write stays NaN."""
    import cupy as cp

    x = cp.empty(shape, dtype)
    bits = x.view(cp.uint16 if x.dtype.itemsize == 2 else cp.uint32)
    bits[...] = 0xFFFF if x.dtype.itemsize == 2 else 0xFFFFFFFF
    return x


def _run(q, k, v, do, causal, scale=None):
    B, H, Nq, d = q.shape
    Nk = k.shape[2]
    o, lse = launch.forward("tc", q, k, v, causal, scale,
                         out=(_poisoned((B, H, Nq, d), q.dtype), _poisoned((B, H, Nq), np.float32)))
    grads = launch.backward("tc", do, q, k, v, o, lse, causal, scale,
                         out=tuple(_poisoned(s, q.dtype) for s in ((B, H, Nq, d), (B, H, Nk, d),
                                                                    (B, H, Nk, d))))
    return o, lse, grads


@pytest.mark.parametrize("name", DTYPES)
@pytest.mark.parametrize("B,H,Nq,Nk,d,causal", SHAPES,
                         ids=[f"{'x'.join(map(str, s[:5]))}-{'causal' if s[5] else 'full'}" for s in SHAPES])
def test_tc_within_fa_rule_and_writes_every_element(source, name, B, H, Nq, Nk, d, causal):
    import cupy as cp

    _only_where_the_source_has(source, d, name)

    q, k, v, do = _inputs(B, H, Nq, Nk, d, name)
    o, lse, (dq, dk, dv) = _run(q, k, v, do, causal)
    o64, lse64, dq64, dk64, dv64 = lowp.attention_oracle(q, k, v, do, causal)
    naive_o, _ = lowp.naive_lowp_forward(q, k, v, causal)
    naive_grads = lowp.naive_lowp_backward(do, q, k, v, causal)
    # float32 noise allowance on the scale of the outputs: with one visible key the true dQ and
    # dK are exactly 0 and so is 16-bit naive's (its D is rowsum(P dP) = dP), while the kernel's
    # D = rowsum(dO O) is summed in another order (~1e-7 apart)
    slack = 1e-5 * float(cp.abs(o64).max())
    for label, out, ref, naive in (("o", o, o64, naive_o), ("dq", dq, dq64, naive_grads[0]),
                                   ("dk", dk, dk64, naive_grads[1]), ("dv", dv, dv64, naive_grads[2])):
        assert out.dtype.name == name, label
        # within_fa_rule raises on NaN: an unwritten (poisoned) element fails here
        ok, err, bound = lowp.within_fa_rule(out, ref, naive, slack=slack)
        assert ok, f"{label}: error {err:.3g} > bound {bound:.3g} (2 x naive {name} error)"
    assert bool(cp.isfinite(lse).all())
    assert float(cp.abs(lse - lse64).max()) < 1e-3 * max(1.0, float(cp.abs(lse64).max()))


# an A100's opt-in shared memory and an sm_86 / sm_89's, at the head dims whose table needs more
@pytest.mark.parametrize("limit,d", [(166912, 64), (166912, 128), (101376, 64), (101376, 96),
                                     (101376, 128)])
def test_tc_backward_on_less_shared_memory_runs_the_smaller_tiles(monkeypatch, limit, d):
    # kernels/tc.cu's backward as those GPUs run it (registry TC_BACKWARD_SMALLER), here
    from flashlab.launch import tc

    real = tc.device_limits
    monkeypatch.setenv("FLASHLAB_TC_WGMMA", "0")
    monkeypatch.setattr(tc, "device_limits", lambda dev: {**real(dev), "smem_optin": limit})
    p = tc.launch_plan(0, d, "backward")
    assert p["smem"] <= limit < plans.tc_plan(d, "backward", variant="mma")["smem"]
    q, k, v, do = _inputs(1, 3, 300, 250, d, "bfloat16", seed=d)
    o, lse, grads = _run(q, k, v, do, True)
    _, _, dq64, dk64, dv64 = lowp.attention_oracle(q, k, v, do, True)
    naive_grads = lowp.naive_lowp_backward(do, q, k, v, True)
    for label, out, ref, naive in zip(("dq", "dk", "dv"), grads, (dq64, dk64, dv64), naive_grads):
        ok, err, bound = lowp.within_fa_rule(out, ref, naive)
        assert ok, f"{label}: error {err:.3g} > bound {bound:.3g}"


@pytest.mark.parametrize("name", DTYPES)
def test_tc_long_sequence_and_softmax_scale(source, name):
    _only_where_the_source_has(source, 128, name)
    q, k, v, do = _inputs(1, 2, 2048, 2048, 128, name, seed=3)
    for causal, scale in ((True, None), (False, 0.3)):
        o, lse, grads = _run(q, k, v, do, causal, scale)
        o64, _, *grads64 = lowp.attention_oracle(q, k, v, do, causal, scale)
        naive = (lowp.naive_lowp_forward(q, k, v, causal, scale)[0],
                 *lowp.naive_lowp_backward(do, q, k, v, causal, scale))
        for label, out, ref, nv in zip(("o", "dq", "dk", "dv"), (o, *grads), (o64, *grads64), naive):
            ok, err, bound = lowp.within_fa_rule(out, ref, nv)
            assert ok, f"{label} causal={causal} scale={scale}: {err:.3g} > {bound:.3g}"


def test_tc_causal_block_order_gives_the_same_bits_in_any_head_grouping(source, monkeypatch):
    """Causal launches start their longest blocks first, `group` heads at a time
    (kernels/tc_blocks.cuh block_order): with any group size, a last group with fewer heads
    included, forward and backward write every element and the same bits (each block's
    arithmetic does not depend on when it runs, and the forward has no atomics; dQ's fp32 atomic
    adds may land in another order, so dQ is held to the rule, not to the bits)."""
    import cupy as cp

    dtype = "float16" if source == "turing" else "bfloat16"
    q, k, v, do = _inputs(2, 5, 700, 700, 64, dtype, seed=11)
    o64, _, dq64, dk64, dv64 = lowp.attention_oracle(q, k, v, do, True)
    naive = (lowp.naive_lowp_forward(q, k, v, True)[0], *lowp.naive_lowp_backward(do, q, k, v, True))
    first = None
    for group in (1, 3, 4, 10, 64):
        monkeypatch.setattr(plans, "tc_head_group", lambda *args, g=group: g)
        o, lse, grads = _run(q, k, v, do, True)
        for label, out, ref, nv in zip(("o", "dq", "dk", "dv"), (o, *grads), (o64, dq64, dk64, dv64),
                                       naive):
            ok, err, bound = lowp.within_fa_rule(out, ref, nv)  # raises on NaN (not written)
            assert ok, f"group {group}, {label}: {err:.3g} > {bound:.3g}"
        assert bool(cp.isfinite(lse).all()), f"group {group}: lse not written"
        bits = [x.view(cp.uint16).copy() for x in (o, grads[1], grads[2])] + [lse.copy()]
        if first is None:
            first = bits
            continue
        for label, a, b in zip(("o", "dk", "dv", "lse"), bits, first):
            assert bool((a == b).all()), f"group {group}: {label} differs from group 1's"


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name", DTYPES)
@pytest.mark.parametrize("Nq,Nk,d", [(150, 97, 32), (97, 300, 64), (300, 300, 128), (600, 470, 64),
                                     (130, 200, 96), (97, 150, 256)])
def test_tc_trace_matches_its_step_through(source, direction, causal, name, Nq, Nk, d):
    _only_where_the_source_has(source, d, name)
    div, actual, expected = check_kernel("tc", direction, 1, 2, Nq, Nk, d, causal,
                                               dtype=name)
    assert div is None, str(div)
    assert (actual.seq == expected.seq).all()


def test_tc_trace_pinpoints_a_broken_rescale(tmp_path, source):
    """The tile comparison can fail: a tc.cu / tc90.cu without F2:L7's rescale of O~ diverges at
    L7."""
    src = sources.ours("tc", source).text
    # the rescale's call in the kernel (the body is tc_common.cuh's f2_rescale_row, inlined into
    # the source text: both kernels share it, so each drops its own call)
    old = {"mma": "f2_rescale_row(o[a], h, alpha);", "turing": "f2_rescale_row(o[a], h, alpha);",
           "wgmma": "for (int h = 0; h < 2; ++h) f2_rescale_row(frag(o), h, alpha[h]);"}[source]
    assert src.count(old) == 1
    (tmp_path / "tc_bug.cu").write_text(src.replace(old, ";"))
    div, _, _ = check_kernel("tc", "forward", 1, 1, 200, 300, 64, False,
                                   source=tmp_path / "tc_bug.cu",
                                   **({"dtype": "float16"} if source == "turing" else {}))
    assert div is not None and div.line == "F2:L7" and div.quantity == "O~", str(div)
    if source == "mma":
        # d = 64 takes 128-key tiles as two 64-key sub-steps: the second sub-step of tile 0 is
        # the first place a rescale matters, so the trace (one entry per tile) diverges at (0, 0)
        assert div.i == 0 and div.j == 0
    else:
        # tc90 (and the Turing build, 64-key tiles) take a whole tile at once: the first
        # rescale is at tile j = 1
        assert div.i == 0 and div.j == 1


def test_auto_routes_16_bit_inputs_to_tc_and_float32_to_fa2():
    import cupy as cp

    q, k, v, do = _inputs(1, 2, 130, 130, 64, "bfloat16")
    assert flashlab.api.resolve_kernel("auto", q) == "tc"
    o, lse = flashlab.flash_attention(q, k, v, causal=True, return_lse=True)
    o_tc, lse_tc = launch.forward("tc", q, k, v, True)
    assert o.dtype.name == "bfloat16" and lse.dtype == np.float32
    assert bool((o.view(cp.uint16) == o_tc.view(cp.uint16)).all()) and bool((lse == lse_tc).all())
    grads = flashlab.flash_attention_backward(do, q, k, v, o, lse, causal=True)
    grads_tc = launch.backward("tc", do, q, k, v, o, lse, True)
    for g, g_tc in zip(grads, grads_tc):
        assert g.dtype.name == "bfloat16"
        assert float(cp.abs(lowp.to_float32(g) - lowp.to_float32(g_tc)).max()) < 0.05  # atomics' order
    q32 = lowp.to_float32(q)
    assert flashlab.api.resolve_kernel("auto", q32) == "fa2"
    assert flashlab.api.resolve_kernel("auto", lowp.to_float32(_inputs(1, 1, 8, 8, 40, "float16")[0])) == "fa1"


def test_auto_without_a_tc_head_dim_runs_fa2_on_float32_copies_and_says_so_once(monkeypatch):
    q, k, v, do = _inputs(1, 2, 70, 70, 16, "float16")  # fa2 has d=16, tc does not
    monkeypatch.setattr(flashlab.api, "_warned_fallback", False)
    with pytest.warns(UserWarning, match=r"float16 inputs run kernel 'fa2' on float32 copies .*no head dim 16"):
        o, lse = flashlab.flash_attention(q, k, v, return_lse=True)
    assert o.dtype.name == "float16" and lse.dtype == np.float32
    o64 = lowp.attention_oracle(q, k, v, do)[0]
    ok, err, bound = lowp.within_fa_rule(o, o64, lowp.naive_lowp_forward(q, k, v)[0])
    assert ok, (err, bound)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call is silent
        grads = flashlab.flash_attention_backward(do, q, k, v, o, lse)
    assert all(g.dtype.name == "float16" for g in grads)


def test_tc_bad_inputs_name_the_argument():
    import cupy as cp

    q, k, v, do = _inputs(1, 1, 64, 64, 64, "bfloat16")
    with pytest.raises(TypeError, match=r"q has dtype float32; kernel 'tc' \(tensor cores\) takes float16 or bfloat16"):
        launch.forward("tc", *(lowp.to_float32(x) for x in (q, k, v)))
    kh = lowp.from_float32(lowp.to_float32(k), "float16")
    with pytest.raises(ValueError, match=r"q, k, v must share one dtype: got q bfloat16, k float16"):
        launch.forward("tc", q, kh, v)
    with pytest.raises(ValueError, match=r"do has dtype float16; expected bfloat16 to match q"):
        launch.backward("tc", lowp.from_float32(lowp.to_float32(do), "float16"), q, k, v,
                        *launch.forward("tc", q, k, v))
    q48 = _inputs(1, 1, 64, 64, 48, "bfloat16")[0]
    with pytest.raises(ValueError, match=r"head_dim 48 is not supported by kernel 'tc' \(supported: 32, 64, 96, 128, 256\)"):
        launch.forward("tc", q48, q48, q48)
    with pytest.raises(ValueError, match=r"head_dim 48 is not supported by kernel 'tc' .* kernel='auto'"):
        flashlab.flash_attention(q48, q48, q48, kernel="tc")
    o, lse = launch.forward("tc", q, k, v)
    for kernel in ("auto", "tc"):  # auto at d = 16 is the fallback: checked before it warns
        x = (q, k, v) if kernel == "tc" else _inputs(1, 1, 64, 64, 16, "bfloat16")[:3]
        with pytest.raises(TypeError, match=r"v must be a NumPy or CuPy array .* got list"):
            flashlab.flash_attention(*x[:2], x[2].get().tolist(), kernel=kernel)
        with pytest.raises(TypeError, match=r"softmax_scale must be a real number"):
            flashlab.flash_attention(*x, kernel=kernel, softmax_scale="0.5")
        with pytest.raises(TypeError, match=r"causal must be True or False, got 'false'"):
            flashlab.flash_attention(*x, kernel=kernel, causal="false")
    with pytest.raises(ValueError, match=r"softmax_scale must be finite and > 0"):
        flashlab.flash_attention_backward(do, q, k, v, o, lse, kernel="tc", softmax_scale=float("inf"))
    with pytest.raises(TypeError, match=r"lse has dtype float16"):
        launch.backward("tc", do, q, k, v, o, lse.astype(cp.float16))
    # every other query row: a strided view tc reads in place; every other column: one it cannot
    every_other = launch.forward("tc", q[:, :, ::2], k, v)[0]
    dense = launch.forward("tc", cp.ascontiguousarray(q[:, :, ::2]), k, v)[0]
    assert bool((every_other.view(cp.int16) == dense.view(cp.int16)).all())
    with pytest.raises(ValueError, match=r"q \(shape \(1, 1, 64, 32\), strides .* kernel 'tc' "
                                         r"cannot read in place: it takes the last dim contiguous"):
        launch.forward("tc", q[..., ::2], k[..., ::2], v[..., ::2])
    with pytest.raises(ValueError, match=r"out o must be a contiguous bfloat16 array"):
        launch.forward("tc", q, k, v, out=(_poisoned(q.shape, cp.float32), _poisoned(q.shape[:3], cp.float32)))


def test_tc_nan_input_propagates_like_the_oracle():
    q, k, v, do = (x.get() for x in _inputs(1, 1, 70, 70, 64, "float16"))
    q[0, 0, 5, 3] = np.nan
    import cupy as cp

    o, _ = launch.forward("tc", *(cp.asarray(x) for x in (q, k, v)))
    o64 = lowp.attention_oracle(q, k, v, do)[0]
    np.testing.assert_array_equal(np.isnan(lowp.to_float32(o.get())), np.isnan(o64))
