"""The Hopper ladder's backward schedule model (flashlab.reference.schedule_bwd): the order and the
waits of kernels/tc90_ws_bwd.cu's warpgroups, checked step by step on the CPU."""
import pytest

from flashlab.reference import schedule as S
from flashlab.reference.schedule_bwd import WRITER, backward_timeline


def _at(events):
    return {(e.who, e.what): e for e in events}


@pytest.mark.parametrize("writer", [True, False])
@pytest.mark.parametrize("steps,stages", [(1, 2), (6, 2), (7, 3)])
def test_every_step_waits_for_what_the_kernel_waits_for(steps, stages, writer):
    ev = backward_timeline(steps, writer=writer, stages=stages)
    at = _at(ev)
    tc = [e for e in ev if e.who == S.TENSOR_CORES]
    assert len(tc) == 3 * 2 * steps  # S^T dP^T, dV~ dK~, dQ's term, per consumer and step
    for a, b in zip(tc, tc[1:]):     # one product at a time
        assert b.start >= a.end - 1e-9
    kv = at[("producer", "KV")]
    for i in range(steps):
        load = at[("producer", f"QdO_{i}")]
        for x in (0, 1):
            sdp, pds = at[(S.TENSOR_CORES, f"SdP_{i} (c{x})")], at[(f"consumer {x}", f"pds_{i}")]
            dvdk, dq = at[(S.TENSOR_CORES, f"dVdK_{i} (c{x})")], at[(S.TENSOR_CORES, f"dQ_{i} (c{x})")]
            assert sdp.start >= max(load.end, kv.end)   # S^T, dP^T read K, V, Q_i, dO_i
            assert pds.start >= sdp.end                 # P^T, dS^T read them
            assert dvdk.start >= pds.end                # dV~, dK~ read P^T, dS^T
            for y in (0, 1):                            # the named barrier: both halves of dS^T
                assert dq.start >= at[(f"consumer {y}", f"pds_{i}")].end
            if i > 0:                                   # a consumer's steps follow each other
                out = f"store_{i - 1}" if writer else f"atomics_{i - 1}"
                assert sdp.start >= at[(f"consumer {x}", out)].end
            if writer:                                  # the term is stored after it lands,
                store = at[(f"consumer {x}", f"store_{i}")]  # into a buffer the writer has read
                assert store.start >= dq.end
                if i > 0:
                    assert store.start >= at[(WRITER, f"add_{i - 1}")].end
        if writer:
            add = at[(WRITER, f"add_{i}")]
            assert all(add.start >= at[(f"consumer {x}", f"store_{i}")].end for x in (0, 1))
        if i >= stages:  # a stage is refilled once both consumers are done with its last use
            for x in (0, 1):
                assert load.start >= at[(S.TENSOR_CORES, f"dVdK_{i - stages} (c{x})")].end
                assert load.start >= at[(S.TENSOR_CORES, f"dQ_{i - stages} (c{x})")].end
    assert (WRITER in {e.who for e in ev}) == writer


def test_the_writer_takes_the_atomics_off_the_consumers():
    # the model's answer (docs/PERFORMANCE.md: it says 1.05x, the H200 1.10-1.24x: the model
    # has no memory system, so the reductions' own traffic is not in it)
    w, a = backward_timeline(32, writer=True), backward_timeline(32, writer=False)
    assert S.makespan(a) / S.makespan(w) == pytest.approx(1.058, abs=0.005)
    assert S.busy(w) > S.busy(a) > 0.9
    # dearer atomics: the writer's advantage grows with them
    dear = backward_timeline(32, writer=False, costs=dict(atomics=2.0))
    assert S.makespan(dear) > S.makespan(a)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="steps and stages"):
        backward_timeline(0)


def test_the_backward_timeline_draws_its_rows():
    pytest.importorskip("matplotlib")
    from flashlab.viz import draw_timeline

    fig = draw_timeline(backward_timeline(3), "tc90_ws_bwd.cu")
    gids = {a.get_gid() for a in fig.axes[0].collections}
    assert gids == {"timeline:producer", "timeline:dQ writer", "timeline:tensor cores",
                    "timeline:consumer 0", "timeline:consumer 1"}
