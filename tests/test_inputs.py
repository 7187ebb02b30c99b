"""Bad input gets a ValueError naming the argument, never an IndexError from deep inside."""
import subprocess
import sys

import numpy as np
import pytest

from flashlab.reference import (fa1_backward, fa1_forward, fa2_backward, fa2_forward,
                                naive_attention, naive_attention_backward)
from conftest import qkv

FORWARDS = [naive_attention, fa1_forward, fa2_forward]


@pytest.fixture
def good(rng):
    return qkv(rng, 1, 2, 5, 6, 4)


@pytest.mark.parametrize("fwd", FORWARDS)
def test_shape_errors_name_the_argument(fwd, good):
    q, k, v = good
    cases = [
        ((q[0], k, v), r"q must have rank 4"),
        ((q, k[..., :3], v), r"k head dim 3 differs from q head dim 4"),
        ((q, k, v[:, :, :5]), r"k and v must have the same number of keys"),
        ((q, k, v[..., :2]), r"v head dim 2"),
        ((q, k[:, :1], v[:, :1]), r"share batch and heads"),
        ((q[:, :, :0], k, v), r"q has N = 0"),
        ((q, k[:, :, :0], v[:, :, :0]), r"k has N = 0"),
        ((q[..., :0], k[..., :0], v[..., :0]), r"head dim d = 0"),
        ((q.astype(np.int32), k, v), r"q has dtype int32"),
        ((q, k.astype(np.float32), v), r"share one dtype"),
        (([[1.0]], k, v), r"q must be an array"),
    ]
    for args, msg in cases:
        with pytest.raises(ValueError, match=msg):
            fwd(*args)


@pytest.mark.parametrize("fwd", FORWARDS)
def test_bad_scale_and_causal(fwd, good):
    for scale in (0.0, float("nan"), float("inf"), "big"):
        with pytest.raises(ValueError, match="softmax_scale"):
            fwd(*good, softmax_scale=scale)
    with pytest.raises(ValueError, match="causal must be True or False"):
        fwd(*good, causal="yes")


@pytest.mark.parametrize("fwd", [fa1_forward, fa2_forward])
def test_bad_block_sizes(fwd, good):
    for kw, msg in [({"Br": 0}, "Br must be >= 1"), ({"Bc": -3}, "Bc must be >= 1"),
                    ({"Br": 2.5}, "Br must be a positive int"), ({"sram": 0}, "sram must be >= 1")]:
        with pytest.raises(ValueError, match=msg):
            fwd(*good, **kw)


@pytest.mark.parametrize("bwd", [fa1_backward, fa2_backward])
def test_backward_input_errors(bwd, good):
    q, k, v = good
    o, lse = naive_attention(q, k, v)
    with pytest.raises(ValueError, match=r"do must have shape \(1, 2, 5, 4\)"):
        bwd(o[:, :, :3], q, k, v, o, lse)
    with pytest.raises(ValueError, match=r"lse must have shape \(1, 2, 5\)"):
        bwd(o, q, k, v, o, lse[..., None])
    with pytest.raises(ValueError, match="o has dtype float32"):
        bwd(o, q, k, v, o.astype(np.float32), lse)
    with pytest.raises(ValueError, match="do must have shape"):
        naive_attention_backward(o[..., :2], q, k, v)


def test_import_without_cupy():
    code = "import sys; sys.modules['cupy'] = None; import flashlab, flashlab.cli; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
