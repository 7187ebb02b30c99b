"""The HBM counts the step-throughs make as they run equal the closed forms, tensor by tensor."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flashlab import hbm
from flashlab.reference import (fa1_backward, fa1_forward, fa2_backward, fa2_forward,
                                fa2_forward_steps, naive_attention)
from conftest import qkv

dims = st.fixed_dictionaries({
    "B": st.integers(1, 2), "H": st.integers(1, 3), "Nq": st.integers(1, 30),
    "Nk": st.integers(1, 30), "d": st.integers(1, 9), "Br": st.integers(1, 8),
    "Bc": st.integers(1, 8), "causal": st.booleans(),
})


@settings(max_examples=40, deadline=None)
@given(s=dims)
def test_counted_traffic_equals_closed_forms(s):
    rng = np.random.default_rng(0)
    B, H, Nq, Nk, d, Br, Bc, causal = (s[k] for k in ("B", "H", "Nq", "Nk", "d", "Br", "Bc", "causal"))
    q, k, v = qkv(rng, B, H, Nq, Nk, d)
    do = rng.standard_normal(q.shape)

    c = hbm.MemoryCounter()
    o, lse = naive_attention(q, k, v, causal, counter=c)
    assert c.traffic() == hbm.a0_traffic(B, H, Nq, Nk, d)

    c = hbm.MemoryCounter()
    fa1_forward(q, k, v, causal, Br=Br, Bc=Bc, counter=c)
    assert c.traffic() == hbm.a1_traffic(B, H, Nq, Nk, d, Br, Bc)

    c = hbm.MemoryCounter()
    fa2_forward(q, k, v, causal, Br=Br, Bc=Bc, counter=c)
    assert c.traffic() == hbm.f2_traffic(B, H, Nq, Nk, d, Br, Bc, causal)

    c = hbm.MemoryCounter()
    fa1_backward(do, q, k, v, o, lse, causal, Br=Br, Bc=Bc, counter=c)
    assert c.traffic() == hbm.b1_traffic(B, H, Nq, Nk, d, Br, Bc)

    c = hbm.MemoryCounter()
    fa2_backward(do, q, k, v, o, lse, causal, Br=Br, Bc=Bc, counter=c)
    assert c.traffic() == hbm.g2_traffic(B, H, Nq, Nk, d, Br, Bc, causal)


def test_a_hand_counted_case():
    # N = 4, d = 2, Br = Bc = 2: Tc = 2, so A1 reads Q twice and writes O three times (init + 2)
    t = hbm.a1_traffic(1, 1, 4, 4, 2, 2, 2)
    assert t.reads == {"K": 8, "V": 8, "Q": 16, "O": 16, "l": 8, "m": 8}
    assert t.writes == {"O": 24, "l": 12, "m": 12}
    assert t.sram_peak == 2 * 2 * 2 + 2 * 2 * 2 + 2 * 2 + 2 * 2 + 4 * 2
    a0 = hbm.a0_traffic(1, 1, 4, 4, 2)
    # Q, K read; S written, read; P written, read; V read; O written
    assert a0.total == 8 + 8 + 16 + 16 + 16 + 16 + 8 + 8


def test_bytes_follow_the_dtype():
    rng = np.random.default_rng(1)
    q, k, v = qkv(rng, 1, 1, 8, 8, 4, dtype=np.float16)
    c = hbm.MemoryCounter()
    fa2_forward(q, k, v, Br=4, Bc=4, counter=c)
    assert c.itemsize == 2 and c.hbm_bytes == 2 * c.hbm_elements


def test_flash_traffic_beats_standard_at_long_sequences_and_scales_as_theorem_2():
    d, M = 64, 4 * hbm.DEFAULT_SRAM
    Br, Bc = hbm.block_sizes(d, M)
    for N in (4096, 16384):
        f2 = hbm.f2_traffic(1, 1, N, N, d, *hbm.f2_block_sizes(d, M)).total
        a1 = hbm.a1_traffic(1, 1, N, N, d, Br, Bc).total
        assert f2 < a1 < hbm.a0_traffic(1, 1, N, N, d).total
    # doubling N at fixed M: A1 traffic grows ~4x (N^2 d^2 / M), like the bound
    ratio = hbm.a1_traffic(1, 1, 16384, 16384, d, Br, Bc).total / hbm.a1_traffic(1, 1, 8192, 8192, d, Br, Bc).total
    assert 3.9 < ratio < 4.1
    # doubling M roughly halves A1 traffic once Bc dominates
    t1 = hbm.a1_traffic(1, 1, 8192, 8192, d, *hbm.block_sizes(d, M)).total
    t2 = hbm.a1_traffic(1, 1, 8192, 8192, d, *hbm.block_sizes(d, 2 * M)).total
    assert 1.7 < t1 / t2 < 2.1


def test_io_rows_cover_every_seq_and_sram():
    rows = hbm.io_rows([512, 1024], 64, [12288, 49152])
    assert len(rows) == 4
    assert {r["N"] for r in rows} == {512, 1024}
    assert all(r["A0 MB"] > 0 and r["F2 MB"] > 0 for r in rows)


def test_f2_tiles_fit_its_sram_and_are_what_fa2_forward_uses_by_default():
    # F2's own rule: Br = ceil(M / 4d) (not capped at d, unlike A1:L1), Bc the largest that fits
    assert hbm.f2_block_sizes(64, 12288) == (48, 34)
    assert hbm.f2_block_sizes(64, 49152) == (192, 75)
    for d in (16, 32, 64, 128, 256):
        for M in (4096, 12288, 24576, 49152, 58112):
            Br, Bc = hbm.f2_block_sizes(d, M)
            assert hbm.f2_sram(Br, Bc, d) <= M < hbm.f2_sram(Br, Bc + 1, d), (d, M)
            assert Br == hbm.block_sizes(d, M)[1]  # as many row blocks as A1 has column blocks
    with pytest.raises(ValueError, match="sram"):
        hbm.f2_block_sizes(64, 0)
    rng = np.random.default_rng(2)
    N, d, M = 200, 8, 1024
    q, k, v = qkv(rng, 1, 1, N, N, d)
    Br, Bc = hbm.f2_block_sizes(d, M)
    c = hbm.MemoryCounter()
    steps = list(fa2_forward_steps(q, k, v, sram=M, counter=c))
    assert steps[0].blocks == (N, N, Br, Bc)
    assert c.traffic() == hbm.f2_traffic(1, 1, N, N, d, Br, Bc)
    assert c.sram_peak <= M
    # the backward keeps A1:L1's tiles
    o, lse = fa2_forward(q, k, v)
    c = hbm.MemoryCounter()
    fa2_backward(q, q, k, v, o, lse, sram=M, counter=c)
    assert c.traffic() == hbm.g2_traffic(1, 1, N, N, d, *hbm.block_sizes(d, M))


@pytest.mark.parametrize("causal", [False, True])
def test_f2_moves_less_than_a1_at_every_sram_size(causal):
    for d in (16, 64, 128):
        for M in (512, 2048, 12288, 49152, 4 * 49152):
            for N in (100, 1000, 16384):
                a1 = hbm.a1_traffic(1, 1, N, N, d, *hbm.block_sizes(d, M)).total
                f2 = hbm.f2_traffic(1, 1, N, N, d, *hbm.f2_block_sizes(d, M), causal).total
                assert f2 < a1, (d, M, N)


def test_io_rows_name_each_algorithms_tiles():
    r = hbm.io_rows([16384], 64, [49152])[0]
    assert r["A1 Br x Bc"] == "64 x 192" and r["F2 Br x Bc"] == "192 x 75"
    assert r["F2 MB"] < r["A1 MB"] < r["A0 MB"]
