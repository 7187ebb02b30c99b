"""Ring attention on CPUs (flashlab.ring): the schedule, the split, and forward and backward of
a ring of processes against the float64 oracle on the whole sequence -- over multiprocessing
pipes on every machine, and over torch.distributed's gloo where torch is installed."""
import numpy as np
import pytest

from flashlab import naive_attention, naive_attention_backward
from flashlab.ring import (describe, forward_backward, run_in_threads, run_on_pipes, schedule,
                           shard, unshard)
from flashlab.ring.schedule import DIAG, FULL, SKIP, chunks_of, pair_kind, work


@pytest.mark.parametrize("size", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("causal", [False, True])
def test_every_visible_pair_is_computed_once_and_the_work_is_balanced(size, causal):
    chunks = 2 * size if causal else size
    seen = {}
    for step in schedule(size, causal):
        loads = [work(pairs) for _, pairs in step]
        assert len(set(loads)) == 1, f"unbalanced step: {loads}"  # every rank the same work
        for rank, (src, pairs) in enumerate(step):
            assert {b for _, b, _ in pairs} == set(chunks_of(src, size, causal))
            assert {a for a, _, _ in pairs} == set(chunks_of(rank, size, causal))
            for a, b, kind in pairs:
                seen[(a, b)] = seen.get((a, b), 0) + 1
                assert kind == pair_kind(a, b, causal)
    assert seen == {(a, b): 1 for a in range(chunks) for b in range(chunks)}
    want = {FULL} if not causal else {FULL, DIAG, SKIP}
    assert {pair_kind(a, b, causal) for a, b in seen} == want


def test_the_step_through_table_names_each_ranks_block_and_pairs():
    table = describe(2, True)
    assert table.splitlines()[0] == "step | rank 0 | rank 1"
    assert "kv 0: 0x0d 3x0 3x3d" in table and "kv 1: 0x1 3x1" not in table
    assert "kv 1: 3x1 3x2" in table  # rank 0 at step 1: rank 1's chunks 1 and 2


@pytest.mark.parametrize("causal", [False, True])
def test_shard_and_unshard_are_inverse(causal):
    x = np.random.default_rng(0).standard_normal((2, 3, 24, 5))
    parts = [shard(x, r, 3, causal) for r in range(3)]
    assert all(p.shape == (2, 3, 8, 5) for p in parts)
    np.testing.assert_array_equal(unshard(parts, causal), x)


def test_a_length_that_does_not_split_is_refused_naming_the_chunks():
    x = np.zeros((1, 1, 10, 4))
    with pytest.raises(ValueError, match=r"sequence length 10 does not split into 4 equal "
                                         r"chunks \(2 ranks, zigzag\): pad it to a multiple of 4"):
        shard(x, 0, 2, True)
    with pytest.raises(ValueError, match=r"rank must be an int in 0..1, got 2"):
        shard(x, 2, 2, False)


def _inputs(n, seed=0, B=1, H=2, d=8):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((B, H, n, d)) for _ in range(4)]  # q, k, v, do


def _check_against_oracle(results, q, k, v, do, causal, scale=None):
    o_ref, lse_ref = naive_attention(q, k, v, causal, scale)
    grads_ref = naive_attention_backward(do, q, k, v, causal, scale)
    got = [unshard([r[x] for r in results], causal) for x in range(5)]
    for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), got, (o_ref, lse_ref, *grads_ref)):
        assert a.shape == b.shape and np.isfinite(a).all(), name
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10, err_msg=name)


@pytest.mark.parametrize("size,causal,kernel", [
    (1, False, "auto"), (2, False, "auto"), (3, True, "auto"), (4, True, "auto"),
    (4, False, "auto"), (2, True, "fa1"), (3, False, "fa1"),
])
def test_a_ring_of_processes_matches_the_oracle_forward_and_backward(size, causal, kernel):
    n = 12 * size  # 2P chunks of 6 with causal, P of 12 without
    q, k, v, do = _inputs(n, seed=size)
    args = [(*(shard(x, r, size, causal) for x in (q, k, v, do)), causal, None, kernel)
            for r in range(size)]
    results = run_on_pipes(forward_backward, size, args)
    _check_against_oracle(results, q, k, v, do, causal)


def test_a_softmax_scale_and_uneven_heads_go_round_the_ring():
    q, k, v, do = _inputs(24, seed=7, B=2, H=3, d=4)
    args = [(*(shard(x, r, 2, True) for x in (q, k, v, do)), True, 0.3, "auto")
            for r in range(2)]
    _check_against_oracle(run_on_pipes(forward_backward, 2, args), q, k, v, do, True, 0.3)


def test_naive_is_refused_as_the_local_kernel_naming_why():
    from flashlab.ring import NumpyOps

    with pytest.raises(ValueError, match=r"kernel 'naive' cannot be the ring's local kernel: its "
                                         r"backward recomputes the softmax over its own keys"):
        NumpyOps("naive")


@pytest.mark.parametrize("causal", [False, True])
def test_the_ranks_as_threads_give_the_same_result(causal):
    q, k, v, do = _inputs(48, seed=11)
    args = [(*(shard(x, r, 4, causal) for x in (q, k, v, do)), causal) for r in range(4)]
    _check_against_oracle(run_in_threads(forward_backward, 4, args), q, k, v, do, causal)


def _failing_rank(ring):
    if ring.rank == 1:
        raise ValueError("planted")
    return ring.rank


def test_an_error_in_a_rank_is_raised_naming_the_rank():
    for run in (run_on_pipes, run_in_threads):
        with pytest.raises(RuntimeError, match=r"ring rank 1 failed:(.|\n)*ValueError: planted"):
            run(_failing_rank, 2, [(), ()])


def _gloo_rank(rank, size, port, args, out):
    import torch
    import torch.distributed as dist

    from flashlab.ring import TorchRing

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=size)
    try:
        q, k, v, do, causal = args[rank]
        res = forward_backward(TorchRing(), *(torch.from_numpy(x) for x in (q, k, v, do)), causal,
                               None, "auto")
        out[rank] = [x.numpy() for x in res]
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("size,causal", [(2, True), (3, False)])
def test_the_same_ring_over_torch_distributed_gloo_matches_the_oracle(size, causal):
    torch = pytest.importorskip("torch")
    import socket

    import torch.multiprocessing as tmp

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    q, k, v, do = _inputs(12 * size, seed=3)
    args = [(*(shard(x, r, size, causal) for x in (q, k, v, do)), causal) for r in range(size)]
    with tmp.Manager() as manager:
        out = manager.dict()
        tmp.start_processes(_gloo_rank, args=(size, port, args, out), nprocs=size,
                            start_method="fork")
        results = [out[r] for r in range(size)]
    assert torch.distributed.is_available()
    _check_against_oracle(results, q, k, v, do, causal)


def test_the_ring_command_prints_the_step_through_and_a_checked_run(capsys):
    from flashlab.cli import main

    assert main(["ring", "--ranks", "2", "--causal", "--seq", "40"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("step | rank 0 | rank 1\n   0 | kv 0: 0x0d 3x0 3x3d")
    assert "2 processes over pipes, N = 40 (zigzag split)" in out
    errs = [float(line.split()[1]) for line in out.splitlines()[-5:]]
    assert len(errs) == 5 and max(errs) < 1e-12
    assert main(["ring", "--ranks", "0"]) == 2
    assert "size (ranks in the ring) must be an int >= 1, got 0" in capsys.readouterr().err
