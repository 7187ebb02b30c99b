"""The check before the timing: a GPU kernel's output on query rows 0..127 of the first and last
head, held to the float64 oracle (fp32 kernels) or to FlashAttention's 2x rule (16-bit kernels,
against 16-bit standard attention, lowp.naive_lowp_*: the rule's yardstick)."""
from __future__ import annotations

import numpy as np

from .. import lowp
from .. import reference as ref


def _rows_reference(q, k, v, do, causal, tau, rows=128):
    """float64 o and dQ for query rows 0..rows-1 of one head (q, k, v, do: (N, d) NumPy).

    The oracle on those rows alone gives both: under the top-left causal mask rows 0..rows-1 see
    the same keys, and dQ of a row depends on that row's P, dP and D only.
    """
    n = min(rows, q.shape[0])
    q, k, v, do = (x.astype(np.float64)[None, None] for x in (q[:n], k, v, do[:n]))  # (1, 1, ., d)
    o, _ = ref.naive_attention(q, k, v, causal, tau)
    dq, _, _ = ref.naive_attention_backward(do, q, k, v, causal, tau)
    return o[0, 0], dq[0, 0]


def _check(kernel_out, inputs, causal, tau, direction):
    """Largest error, relative to max(1, |ref|), on rows 0..127 of the first and last head."""
    q, k, v, do = (x.get() for x in inputs)
    worst = 0.0
    for b, h in ((0, 0), (q.shape[0] - 1, q.shape[1] - 1)):
        o_ref, dq_ref = _rows_reference(q[b, h], k[b, h], v[b, h], do[b, h], causal, tau)
        want = o_ref if direction == "forward" else dq_ref
        got = kernel_out[b, h, : want.shape[0]].get().astype(np.float64)
        err = float(np.max(np.abs(got - want)) / max(1.0, float(np.max(np.abs(want)))))
        worst = max(worst, err if np.isfinite(got).all() else float("inf"))
    return worst


def _check_lowp(kernel_out, inputs, causal, tau, direction, rows=128):
    """FlashAttention's rule on rows 0..rows-1 of the first and last head: the worst ratio of
    the error against the float64 oracle to the bound 2 x (error of 16-bit naive attention)."""
    worst = 0.0
    for b, h in ((0, 0), (inputs[0].shape[0] - 1, inputs[0].shape[1] - 1)):
        q, k, v, do = (x[b, h][None, None].get() for x in inputs)
        q, do = q[:, :, :rows], do[:, :, :rows]  # rows 0..rows-1 see the same keys either way
        o64, _, dq64, _, _ = lowp.attention_oracle(q, k, v, do, causal, tau)
        if direction == "forward":
            want, naive = o64, lowp.naive_lowp_forward(q, k, v, causal, tau)[0]
        else:
            want, naive = dq64, lowp.naive_lowp_backward(do, q, k, v, causal, tau)[0]
        try:
            _, err, bound = lowp.within_fa_rule(kernel_out[b, h, :rows][None, None].get(), want,
                                                naive)
        except ValueError:  # a NaN in the output
            return float("inf")
        worst = max(worst, err / bound)
    return worst
