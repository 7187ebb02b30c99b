"""trace.compare finds planted differences and names the right step, quantity and line."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flashlab import trace
from flashlab.reference import (fa1_backward_steps, fa1_forward_steps, fa2_backward_steps,
                                fa2_forward_steps, naive_attention)
from conftest import qkv


def _traces(rng, algorithm, causal, Nq=13, Nk=11, d=5, Br=4, Bc=3):
    q, k, v = qkv(rng, 2, 2, Nq, Nk, d)
    do = rng.standard_normal(q.shape)
    o, lse = naive_attention(q, k, v, causal)
    gens = {
        "A1": lambda: fa1_forward_steps(q, k, v, causal, Br=Br, Bc=Bc),
        "F2": lambda: fa2_forward_steps(q, k, v, causal, Br=Br, Bc=Bc),
        "B1": lambda: fa1_backward_steps(do, q, k, v, o, lse, causal, Br=Br, Bc=Bc),
        "G2": lambda: fa2_backward_steps(do, q, k, v, o, lse, causal, Br=Br, Bc=Bc),
    }
    expected, _ = trace.record(gens[algorithm]())
    actual, _ = trace.record(gens[algorithm](), label="student kernel")
    return expected, actual


@pytest.mark.parametrize("algorithm", sorted(trace.SPEC))
@pytest.mark.parametrize("causal", [False, True])
def test_identical_runs_do_not_diverge(rng, algorithm, causal):
    expected, actual = _traces(rng, algorithm, causal)
    assert trace.compare(expected, actual) is None


@pytest.mark.parametrize("algorithm", sorted(trace.SPEC))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_a_planted_difference_is_found_at_its_step_and_line(algorithm, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    causal = data.draw(st.booleans())
    expected, actual = _traces(rng, algorithm, causal)
    ran = [(i, j) for (i, j) in expected.order]
    i, j = data.draw(st.sampled_from(ran))
    name, _, line, axis, cols = data.draw(st.sampled_from(trace.SPEC[algorithm]))
    b, h = data.draw(st.integers(0, 1)), data.draw(st.integers(0, 1))
    r = data.draw(st.integers(0, expected.valid_rows(name, i, j) - 1))
    c = data.draw(st.integers(0, actual.values[name].shape[-1] - 1))
    actual.values[name][b, h, i, j, r, c] += 0.5

    div = trace.compare(expected, actual)
    assert div is not None
    assert (div.i, div.j, div.quantity, div.line) == (i, j, name, line)
    assert (div.b, div.h, div.row) == (b, h, r)
    assert div.col == (c if cols == "d" else -1)
    assert div.actual == pytest.approx(div.expected + 0.5)
    text = str(div)
    assert f"student kernel diverges at step (i={i}, j={j}), {line}, {name} row {r}" in text


def test_the_earliest_step_is_reported(rng):
    expected, actual = _traces(rng, "A1", False)
    # two plants: step order is (j outer, i inner), so (i=0, j=2) runs before (i=3, j=0)? no:
    # seq of (3, 0) is 3, of (0, 2) is 2 * Tr = 8
    actual.values["O_i"][0, 0, 0, 2, 1, 1] += 1.0
    actual.values["O_i"][0, 0, 3, 0, 0, 0] += 1.0
    div = trace.compare(expected, actual)
    assert (div.i, div.j) == (3, 0)


def test_message_reads_like_the_algorithm(rng):
    expected, actual = _traces(rng, "A1", False)
    actual.label = "fa1 forward"
    actual.values["O_i"][1, 0, 3, 1, 0, 2] = 0.25
    text = str(trace.compare(expected, actual))
    assert text.startswith("fa1 forward diverges at step (i=3, j=1), A1:L12, O_i row 0 col 2: expected")
    assert "got 0.25" in text
    assert "query 12, batch 1, head 0" in text  # row 0 of tile 3 with Br = 4
    assert "O_i <- diag(l_new)^-1" in text


@pytest.mark.parametrize("algorithm", sorted(trace.SPEC))
def test_the_message_says_query_or_key_as_the_spec_does(rng, algorithm):
    # not read off a subscript: F2's O~ and G2's dK~, dV~ have none
    for name, _, _, axis, _ in trace.SPEC[algorithm]:
        expected, actual = _traces(rng, algorithm, False)
        actual.values[name][0, 0, 1, 1, 0] += 0.5  # row 0 of tile (i=1, j=1)
        text = str(trace.compare(expected, actual))
        who = "query 4" if axis == "q" else "key 3"  # Br = 4, Bc = 3
        assert f"{name} row 0" in text and f"of that tile is {who}," in text, text


def test_rows_past_a_ragged_tile_are_ignored(rng):
    expected, actual = _traces(rng, "F2", False, Nq=13, Br=4)  # tile 3 holds 1 row
    actual.values["O~"][:, :, 3, :, 1:, :] = 123.0
    assert trace.compare(expected, actual) is None


def test_a_skipped_or_extra_step_is_named(rng):
    expected, actual = _traces(rng, "F2", True)
    actual.seq[0, 1, 2, 1] = -1  # the kernel never ran (2, 1)
    div = trace.compare(expected, actual)
    assert (div.quantity, div.i, div.j, div.h) == ("step", 2, 1, 1)
    assert "never ran" in str(div)

    expected, actual = _traces(rng, "F2", True)
    actual.seq[0, 0, 0, 3] = 1  # the kernel ran a tile wholly above the diagonal
    div = trace.compare(expected, actual)
    assert (div.quantity, div.i, div.j) == ("step", 0, 3)
    assert "skips it" in str(div)


def test_nan_matches_nan_but_not_a_number(rng):
    expected, actual = _traces(rng, "A1", False)
    expected.values["O_i"][0, 0, 0, 0, 0, 0] = np.nan
    actual.values["O_i"][0, 0, 0, 0, 0, 0] = np.nan
    assert trace.compare(expected, actual) is None
    actual.values["O_i"][0, 0, 0, 0, 0, 0] = 1.0
    assert trace.compare(expected, actual).quantity == "O_i"


def test_traces_of_different_runs_cannot_be_compared(rng):
    expected, _ = _traces(rng, "A1", False, Br=4)
    other, _ = _traces(rng, "A1", False, Br=5)
    with pytest.raises(ValueError, match="different Br"):
        trace.compare(expected, other)


def test_step_view_gives_valid_rows_only(rng):
    expected, _ = _traces(rng, "A1", False, Nq=13, Br=4)
    view = expected.step(3, 0)
    assert view["O_i"].shape == (1, 5) and view["m_i"].shape == (1, 1)
