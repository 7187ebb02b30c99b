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
               KernelVariant.of(None, mods.document(np.arange(512) // 100), mods.softcap(30.0))):
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
