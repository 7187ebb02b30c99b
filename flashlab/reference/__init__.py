"""NumPy references: the A0 oracle and step-through versions of A1, B1, F2 and G2, and A0 with
the attention variants (GQA, windows, mask_mod / score_mod: variants.py).

Each works in the float dtype it is given; in float64 the results are the oracle the kernels are
held to. `*_steps` functions are generators of tile steps (see `tiles.Step`); the plain functions
run them to the end.
"""
from .fa1 import fa1_backward, fa1_backward_steps, fa1_forward, fa1_forward_steps
from .fa2 import fa2_backward, fa2_backward_steps, fa2_forward, fa2_forward_steps
from .naive import naive_attention, naive_attention_backward, naive_attention_steps
from .tc import (naive_lowp_backward, naive_lowp_forward, tc_backward, tc_backward_steps,
                 tc_block_order, tc_forward, tc_forward_steps, within_fa_rule)
from .tiles import Step, run
from .variants import variant_attention, variant_attention_backward

__all__ = [
    "Step", "run",
    "naive_attention", "naive_attention_backward", "naive_attention_steps",
    "fa1_forward", "fa1_forward_steps", "fa1_backward", "fa1_backward_steps",
    "fa2_forward", "fa2_forward_steps", "fa2_backward", "fa2_backward_steps",
    "tc_forward", "tc_forward_steps", "tc_backward", "tc_backward_steps", "tc_block_order",
    "naive_lowp_forward", "naive_lowp_backward", "within_fa_rule",
    "variant_attention", "variant_attention_backward",
]
