"""Attention variants in the tensor-core kernels, without a GPU: their sources compile (NVRTC to
PTX, no warning) for both tc sources, and the block mask's tile flags and ranges say what the
kernels' loops visit (kernels/tc_mods.cuh)."""
import numpy as np
import pytest

from flashlab import mods
from flashlab.launch import plans
from flashlab.launch.sources import ours
from flashlab.mods.kernel import KernelVariant, tile_ranges


@pytest.mark.parametrize("variant,arch", [("mma", "sm_80"), ("wgmma", "sm_90a")])
def test_tc_variants_compile_for_both_sources_without_a_warning(variant, arch):
    pytest.importorskip("cuda.bindings")
    from flashlab.launch.compiler import nvrtc_compile

    for kv in (KernelVariant.of((128, 0), None, None),
               KernelVariant.of(None, mods.document(np.arange(512) // 100), mods.softcap(30.0)),
               KernelVariant.of(None, None, mods.alibi(np.linspace(0.1, 1.0, 4)))):
        src = kv.source(ours("tc", variant), fast_math=True)
        log = nvrtc_compile(src, arch, name_expressions=plans.tc_names(True, 64, variant=variant)[:2])
        assert log == "", log  # not a warning either


def test_tile_flags_and_ranges_say_what_each_block_visits():
    # a sliding window of 128 keys behind each query, tiles of 64 x 32: query block 2 (rows
    # 128 .. 191) sees keys 0 .. 191, all of keys 64 .. 127 (flag 2), part of the others (1)
    kv = KernelVariant.of((128, 0), None, None)
    tiles = kv.tiles(1, 1, 256, 256, 64, 32)
    assert tiles.shape == (1, 1, 4, 8)
    assert tiles[0, 0, 2].tolist() == [1, 1, 2, 2, 1, 1, 0, 0]
    rows, cols = tile_ranges(tiles, 3), tile_ranges(tiles, 2)
    assert rows[0, 0].tolist() == [[0, 2], [0, 4], [0, 6], [2, 8]]
    assert cols[0, 0, 0].tolist() == [0, 3] and cols[0, 0, 7].tolist() == [3, 4]
    hidden = KernelVariant.of(None, lambda b, h, q_idx, kv_idx: q_idx < 0, None)
    t = hidden.tiles(1, 1, 100, 100, 64, 64)
    assert not t.any() and not tile_ranges(t, 3).any()  # [0, 0): nothing to visit
    assert (KernelVariant.of(None, None, mods.softcap(3.0)).tiles(2, 2, 70, 70, 64, 64) == 2).all()


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_a_variants_block_order_is_the_causal_block_order_for_causal_as_a_mask(direction):
    # TC_BLOCK_ORDER (kernels/tc_mods.cuh): longest first, `group` heads at a time, which for a
    # causal mask is what the built-in causal flag's block_order gives (the last group short)
    from flashlab.launch.variants import block_order
    from flashlab.reference.tc import tc_block_order

    B, H, N, Br, Bc, group = 2, 3, 300, 64, 64, 4
    tiles = KernelVariant.of(None, mods.causal()).tiles(B, H, N, N, Br, Bc)
    order = block_order(tiles, direction, False, B, H, Br, Bc, N, group)
    want = tc_block_order(-(-N // Br), B * H, True, group, long_high=direction == "forward")
    assert [tuple(x) for x in order.tolist()] == want
    # a window of 100 keys behind each query, 2 heads in one group: every block once, and the
    # number of tiles each visits never grows along the start order
    w = KernelVariant.of((100, 0)).tiles(1, 1, N, N, Br, Bc)
    order = block_order(w, direction, True, 1, 2, Br, Bc, N, 2).tolist()
    assert sorted(map(tuple, order)) == [(x, h) for x in range(5) for h in range(2)]
    r = tile_ranges(w, 3 if direction == "forward" else 2)[0, 0]
    if direction == "forward":  # causal: no tile past the block's last row
        work = [min(r[x, 1], (min(N, (x + 1) * Br) - 1) // Bc + 1) - r[x, 0] for x, _ in order]
    else:
        work = [r[x, 1] - max(r[x, 0], x * Bc // Br) for x, _ in order]
    assert work == sorted(work, reverse=True) and work[0] > work[-1]


TWIN_VARIANTS = {
    "window (30, 0)": (dict(window=(30, 0)), (2, 2)),
    "document, causal": (dict(mask_mod=mods.document(np.repeat(np.arange(4), 40)[:150]),
                              causal=True), (2, 2)),
    "alibi, causal": (dict(score_mod=mods.alibi([0.25, 0.5]), causal=True), (2, 2)),
    "softcap": (dict(score_mod=mods.softcap(3.0)), (2, 2)),
    "hides rows 3 mod 7": (dict(mask_mod=lambda b, h, q_idx, kv_idx: q_idx % 7 != 3), (2, 2)),
    "GQA 4 on 2, window and softcap": (dict(window=(40, 10), score_mod=mods.softcap(3.0)),
                                       (4, 2)),
}


@pytest.mark.parametrize("name", TWIN_VARIANTS)
def test_the_tc_twin_runs_a_variant_within_fa_rule(name):
    # the tensor-core twin (reference/tc.py) with the variant as kernels/tc_mods.cuh builds it,
    # held to FlashAttention's rule against the float64 oracle (the yardstick: the variant
    # unfused in bf16); rows with no visible key give 0 and lse -inf
    from flashlab import lowp
    from flashlab.reference import tc_backward, tc_forward
    from flashlab.reference.variants import variant_attention, variant_attention_backward

    kw, (H, Hkv) = TWIN_VARIANTS[name]
    kw = dict(kw)
    causal = kw.pop("causal", False)
    rng = np.random.default_rng(1)
    shapes = [(1, H, 150, 32), (1, Hkv, 150, 32), (1, Hkv, 150, 32), (1, H, 150, 32)]
    q, k, v, do = (lowp.from_float32(rng.standard_normal(s).astype(np.float32), "bfloat16")
                   for s in shapes)
    o, lse = tc_forward(q, k, v, causal, **kw)
    grads = tc_backward(do, q, k, v, o, lse, causal, **kw)
    as64 = [lowp.to_float32(x).astype(np.float64) for x in (q, k, v, do)]
    o64, lse64 = variant_attention(*as64[:3], causal, **kw)
    g64 = variant_attention_backward(as64[3], *as64[:3], causal, **kw)
    o16, _ = variant_attention(q, k, v, causal, stored="bfloat16", **kw)
    g16 = variant_attention_backward(do, q, k, v, causal, stored="bfloat16", **kw)
    for label, out, ref, naive in zip(("o", "dq", "dk", "dv"), (o, *grads), (o64, *g64),
                                      (o16, *g16)):
        assert out.shape == ref.shape, label
        ok, err, bound = lowp.within_fa_rule(out, ref, naive, slack=1e-5)
        assert ok, f"{label}: error {err:.3g} > bound {bound:.3g}"
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(lse64))


def test_flash_attention_runs_the_tc_twin_with_a_variant_on_16_bit_numpy_arrays():
    import flashlab
    from flashlab import lowp
    from flashlab.reference import tc_forward

    rng = np.random.default_rng(2)
    q, k, v = (lowp.from_float32(rng.standard_normal((1, 4, 70, 32)).astype(np.float32),
                                 "float16") for _ in range(3))
    o, lse = flashlab.flash_attention(q, k, v, kernel="tc", return_lse=True, window=(20, 0))
    o2, lse2 = tc_forward(q, k, v, window=(20, 0))
    assert o.dtype == q.dtype and (o.view(np.uint16) == o2.view(np.uint16)).all()
    np.testing.assert_array_equal(lse, lse2)
    with pytest.raises(ValueError, match=r"^kernel 'tc' has no trace build with an attention "
                                         r"variant yet \(fa2 has\)"):
        from flashlab.launch import _variant
        from flashlab import registry
        _variant(registry.get("tc"), KernelVariant.of((20, 0)), True)
