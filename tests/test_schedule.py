"""The Hopper ladder's schedule model (flashlab.reference.schedule): the order and the waits of
kernels/tc90_ws.cu's warpgroups, checked step by step on the CPU."""
import pytest

from flashlab.reference import schedule as S


def _by(events, who):
    return [e for e in events if e.who == who]


@pytest.mark.parametrize("pingpong", [True, False])
@pytest.mark.parametrize("tiles,stages", [(1, 2), (5, 2), (7, 3)])
def test_every_step_waits_for_what_the_kernel_waits_for(tiles, stages, pingpong):
    ev = S.timeline(tiles, pingpong=pingpong, stages=stages)
    at = {(e.who, e.what): e for e in ev}
    tc = _by(ev, S.TENSOR_CORES)
    assert len(tc) == 2 * 2 * tiles  # S_j and P_j V_j, per consumer
    for a, b in zip(tc, tc[1:]):  # one product at a time
        assert b.start >= a.end - 1e-9
    for x in (0, 1):
        for j in range(tiles):
            s, pv = at[(S.TENSOR_CORES, f"S_{j} (c{x})")], at[(S.TENSOR_CORES, f"PV_{j} (c{x})")]
            soft = at[(f"consumer {x}", f"softmax_{j}")]
            assert s.start >= at[("producer", f"K_{j}")].end  # S_j reads K_j
            assert soft.start >= s.end                          # the softmax reads S_j
            assert pv.start >= soft.end                         # P_j V_j reads P_j ...
            assert pv.start >= at[("producer", f"V_{j}")].end   # ... and V_j
        for j in range(stages, tiles):  # a stage is refilled once both consumers are done with it
            for y in (0, 1):
                assert at[("producer", f"K_{j}")].start >= \
                    at[(S.TENSOR_CORES, f"S_{j - stages} (c{y})")].end
                assert at[("producer", f"V_{j}")].start >= \
                    at[(S.TENSOR_CORES, f"PV_{j - stages} (c{y})")].end


def test_pingpong_alternates_the_consumers_on_the_tensor_cores():
    tc = [e for e in S.timeline(6) if e.who == S.TENSOR_CORES]
    owners = [e.what[-3:-1] for e in tc]  # "c0" / "c1" per product
    groups = [owners[0]] + [b for a, b in zip(owners, owners[1:]) if a != b]
    assert groups[:4] == ["c0", "c1", "c0", "c1"]
    assert len(groups) >= 10  # a group (S_j with P_{j-1} V_{j-1}) per turn


def test_the_model_says_where_the_time_goes():
    # products longer than the softmax: the tensor cores are the bottleneck, busy almost all
    # the time; a softmax twice a product's cost leaves them idle part of the time
    fast = S.timeline(16, costs=dict(softmax=0.5))
    slow = S.timeline(16, costs=dict(softmax=2.0))
    assert S.busy(fast) > 0.95
    assert S.busy(slow) < S.busy(fast)
    assert S.makespan(slow) > S.makespan(fast)
    assert S.table(fast)[0] == ["producer", "K_0", 0.0, 0.5]


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="tiles and stages"):
        S.timeline(0)


def test_the_timeline_draws_a_row_per_worker():
    pytest.importorskip("matplotlib")
    from flashlab.viz import draw_timeline

    fig = draw_timeline(S.timeline(4), "tc90_ws.cu")
    gids = {a.get_gid() for a in fig.axes[0].collections}
    assert gids == {"timeline:producer", "timeline:tensor cores", "timeline:consumer 0",
                    "timeline:consumer 1"}



def test_the_tile_order_is_the_kernels():
    # block_order_of: causal, 2 heads a group, longest first, then by head
    from flashlab.reference.tc import tc_block_order

    assert tc_block_order(3, 4, True, 2)[:6] == [(2, 0), (2, 1), (1, 0), (1, 1), (0, 0), (0, 1)]
    assert tc_block_order(3, 2, False, 2) == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]
    assert S.tile_work(4, 4, 1, True, 1) == [4, 3, 2, 1]


def test_static_turns_lose_to_dynamic_ones_on_causal_tiles():
    # the H200's 16k causal cell (B = 1, H = 16, d = 128: 128 query blocks a head, 2 heads a
    # group, 132 multiprocessors): persistent blocks taking tiles in turn measured 0.77x a block
    # per tile (docs/results/ladder_ws_v2); the model gives the same ratio from the imbalance
    work = S.tile_work(128, 128, 16, True, 2)
    static = S.blocks_makespan(work, 132, dynamic=False)
    dynamic = S.blocks_makespan(work, 132, dynamic=True)
    assert 1.25 < static / dynamic < 1.33
    assert dynamic < 1.01 * sum(work) / 132  # the greedy order is close to perfect balance
    flat = S.tile_work(128, 128, 16, False, 1)  # not causal: equal tiles, no difference
    assert S.blocks_makespan(flat, 132, False) == S.blocks_makespan(flat, 132, True)
