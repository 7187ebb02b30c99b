"""The benchmark's pre-timing check uses the oracle on a slice of query rows; that slice must equal
the same rows of the whole oracle (top-left causal: rows 0..n-1 see the same keys)."""
import numpy as np
import pytest

from flashlab import bench
from flashlab.reference import naive_attention, naive_attention_backward


@pytest.mark.parametrize("causal", [False, True])
def test_row_slice_reference_equals_the_oracle_rows(rng, causal):
    q, k, v, do = (rng.standard_normal((300, 64)) for _ in range(4))
    o, dq = bench._rows_reference(q, k, v, do, causal, 0.125, rows=128)
    full = [x[None, None] for x in (q, k, v, do)]
    o_full, _ = naive_attention(*full[:3], causal, 0.125)
    dq_full, _, _ = naive_attention_backward(full[3], *full[:3], causal, 0.125)
    np.testing.assert_allclose(o, o_full[0, 0, :128], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(dq, dq_full[0, 0, :128], rtol=1e-12, atol=1e-13)
