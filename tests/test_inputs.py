"""Bad input gets an error naming the argument, never an IndexError or AttributeError from deep
inside: a TypeError for the wrong kind of thing (a list for an array, a str for a number), a
ValueError for a wrong value (a shape, a dtype, a NaN scale)."""
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import flashlab
from flashlab import api
from flashlab.reference import (fa1_backward, fa1_forward, fa2_backward, fa2_forward,
                                naive_attention, naive_attention_backward)
from conftest import qkv

ROOT = Path(__file__).resolve().parents[1]

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
    ]
    for args, msg in cases:
        with pytest.raises(ValueError, match=msg):
            fwd(*args)
    with pytest.raises(TypeError, match=r"q must be a NumPy or CuPy array of shape \(B, H, N, d\), got list"):
        fwd([[1.0]], k, v)


@pytest.mark.parametrize("fwd", FORWARDS)
def test_bad_scale_and_causal(fwd, good):
    for scale in (0.0, -0.5, float("nan"), float("inf"), -math.inf):
        with pytest.raises(ValueError, match=r"softmax_scale must be finite and > 0"):
            fwd(*good, softmax_scale=scale)
    for scale in ("big", True, np.bool_(False)):
        with pytest.raises(TypeError, match=r"softmax_scale must be a real number"):
            fwd(*good, softmax_scale=scale)
    with pytest.raises(TypeError, match="causal must be True or False, got 'yes' \\(str\\)"):
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


def _env_with_repo_root() -> dict:
    """This environment with the repository root first on PYTHONPATH: a child Python imports
    this checkout's flashlab whether or not flashlab is installed, from any cwd."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def test_import_without_cupy(tmp_path):
    code = ("import sys; sys.modules['cupy'] = None; import flashlab, flashlab.cli; "
            "print(flashlab.__file__)")
    # cwd elsewhere: the child finds flashlab through PYTHONPATH alone, as on a machine where
    # flashlab is not installed
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env=_env_with_repo_root())
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).resolve() == ROOT / "flashlab" / "__init__.py"


# ----------------------------------------------------------------------------- public entry points
# flashlab.flash_attention / flash_attention_backward / api.resolve_kernel on NumPy arrays: every
# bad argument is refused with its name before anything reads it (no AttributeError from api.py).

def _fwd_bwd_inputs(rng, dtype=np.float64, B=1, H=2, Nq=5, Nk=6, d=4):
    q, k, v = qkv(rng, B, H, Nq, Nk, d, dtype)
    do = rng.standard_normal(q.shape).astype(dtype)
    o, lse = flashlab.flash_attention(q, k, v, return_lse=True)
    return {"do": do, "q": q, "k": k, "v": v, "o": o, "lse": lse}


def _call(entry, x, kernel="auto", **kw):
    """Run `entry` ("forward" or "backward") on the inputs in x (a dict by argument name)."""
    if entry == "forward":
        return flashlab.flash_attention(x["q"], x["k"], x["v"], kernel=kernel, **kw)
    return flashlab.flash_attention_backward(x["do"], x["q"], x["k"], x["v"], x["o"], x["lse"],
                                             kernel=kernel, **kw)


ARGS = {"forward": ("q", "k", "v"), "backward": ("do", "q", "k", "v", "o", "lse")}
NOT_ARRAYS = {"list": lambda a: a.tolist(), "tuple": lambda a: tuple(a.tolist()),
              "float": lambda a: float(a.flat[0]), "NoneType": lambda a: None,
              "str": lambda a: "q"}


@pytest.mark.parametrize("kernel", ["auto", "naive", "fa1", "fa2"])
@pytest.mark.parametrize("kind", NOT_ARRAYS)
@pytest.mark.parametrize("entry,arg", [(e, a) for e, names in ARGS.items() for a in names])
def test_non_arrays_get_a_type_error_naming_the_argument(rng, entry, arg, kind, kernel):
    x = _fwd_bwd_inputs(rng)
    x[arg] = NOT_ARRAYS[kind](x[arg])
    layout = r"\(B, H, N\)" if arg == "lse" else r"\(B, H, N, d\)"
    with pytest.raises(TypeError, match=rf"^{arg} must be a NumPy or CuPy array of shape "
                                        rf"{layout}, got {kind}") as e:
        _call(entry, x, kernel)
    assert Path(e.traceback[-1].path).name == "checks.py"  # refused up front, not deep inside


def test_the_users_list_call_says_what_to_do(rng):
    q, k, v = qkv(rng, 1, 2, 5, 6, 4)
    with pytest.raises(TypeError, match=r"^q must be a NumPy or CuPy array of shape \(B, H, N, d\), "
                                        r"got list: convert it first, e.g. np.asarray\(q\)$"):
        flashlab.flash_attention(q.tolist(), k, v)
    with pytest.raises(TypeError, match=r"^q must be a NumPy or CuPy array"):
        api.resolve_kernel("auto", q.tolist())


BAD_OPTIONS = [  # (keyword, value, error, message)
    ("softmax_scale", "0.5", TypeError, r"softmax_scale must be a real number \(int or float\) "
                                        r"or None, got '0.5' \(str\)"),
    ("softmax_scale", True, TypeError, r"softmax_scale must be a real number .* got True \(bool\)"),
    ("softmax_scale", np.bool_(True), TypeError, r"softmax_scale must be a real number"),
    ("softmax_scale", 1 + 2j, TypeError, r"softmax_scale must be a real number"),
    ("softmax_scale", np.array(0.5), TypeError, r"softmax_scale .* pass float\(softmax_scale\)"),
    ("softmax_scale", float("nan"), ValueError, r"softmax_scale must be finite and > 0 .* got nan"),
    ("softmax_scale", float("inf"), ValueError, r"softmax_scale must be finite and > 0"),
    ("softmax_scale", 10**400, ValueError, r"softmax_scale must be finite and > 0"),
    ("softmax_scale", 0, ValueError, r"softmax_scale must be finite and > 0 \(None gives "
                                     r"1/sqrt\(d\) = 0.5\), got 0"),
    ("softmax_scale", -0.5, ValueError, r"softmax_scale must be finite and > 0"),
    ("causal", "false", TypeError, r"causal must be True or False, got 'false' \(str\)"),
    ("causal", 1, TypeError, r"causal must be True or False, got 1 \(int\)"),
    ("causal", None, TypeError, r"causal must be True or False, got None"),
    ("kernel", "fa9", ValueError, r"kernel must be one of auto, naive, fa1, fa2, tc, got 'fa9'"),
    ("kernel", "FA2", ValueError, r"kernel must be one of"),
    ("kernel", None, TypeError, r"kernel must be a str, one of auto, naive, fa1, fa2, tc; got None"),
    ("kernel", ["fa2"], TypeError, r"kernel must be a str"),
]


@pytest.mark.parametrize("kernel", ["auto", "naive", "fa1", "fa2"])
@pytest.mark.parametrize("entry", ["forward", "backward"])
@pytest.mark.parametrize("key,value,error,msg", BAD_OPTIONS,
                         ids=[f"{b[0]}={b[1]!r:.12}" for b in BAD_OPTIONS])
def test_bad_options_get_an_error_naming_the_argument(rng, entry, kernel, key, value, error, msg):
    x = _fwd_bwd_inputs(rng)
    kw = {"kernel": kernel, key: value}
    with pytest.raises(error, match=msg):
        _call(entry, x, **kw)


@pytest.mark.parametrize("value", ["True", 1, None, np.float64(1.0)])
def test_return_lse_must_be_a_bool(rng, value):
    x = _fwd_bwd_inputs(rng)
    with pytest.raises(TypeError, match="return_lse must be True or False, got " + re.escape(repr(value))):
        flashlab.flash_attention(x["q"], x["k"], x["v"], return_lse=value)


@pytest.mark.parametrize("entry", ["forward", "backward"])
def test_real_number_scales_and_numpy_bools_are_accepted(rng, entry):
    x = _fwd_bwd_inputs(rng)
    def same(a, b, msg):
        for got, want in zip(a if entry == "backward" else [a], b if entry == "backward" else [b]):
            np.testing.assert_array_equal(got, want, err_msg=msg)

    want = _call(entry, x, causal=True, softmax_scale=0.5)
    for scale in (np.float64(0.5), np.float32(0.5), np.float16(0.5)):
        same(_call(entry, x, causal=np.bool_(True), softmax_scale=scale), want, repr(scale))
    for scale in (2, np.int64(2)):
        same(_call(entry, x, softmax_scale=scale), _call(entry, x, softmax_scale=2.0), repr(scale))
    o, lse = flashlab.flash_attention(x["q"], x["k"], x["v"], return_lse=np.bool_(True))
    np.testing.assert_array_equal(o, flashlab.flash_attention(x["q"], x["k"], x["v"]))


def test_naive_backward_checks_o_and_lse_it_does_not_read(rng):
    x = _fwd_bwd_inputs(rng)
    with pytest.raises(ValueError, match=r"lse must have shape \(1, 2, 5\)"):
        flashlab.flash_attention_backward(x["do"], x["q"], x["k"], x["v"], x["o"],
                                          x["lse"][..., :3], kernel="naive")
    with pytest.raises(ValueError, match=r"o must have shape \(1, 2, 5, 4\)"):
        flashlab.flash_attention_backward(x["do"], x["q"], x["k"], x["v"], x["o"][..., :2],
                                          x["lse"], kernel="naive")


# ----------------------------------------------------------------------------- lse's dtype
# float32 on both paths (the kernels write float32), except float64 NumPy inputs: the float64
# references are the oracle, and a float32 lse costs their gradients about 1e-7 relative error

LSE_DTYPES = [(np.float64, np.float64), (np.float32, np.float32), (np.float16, np.float32),
              (ml_dtypes.bfloat16, np.float32)]
LSE_CASES = [pytest.param(dt, lse_dt, kernel, id=f"{np.dtype(dt).name}-{kernel}")
             for dt, lse_dt in LSE_DTYPES for kernel in ("auto", "naive", "fa1", "fa2", "tc")
             if kernel != "tc" or np.dtype(dt).itemsize == 2]  # tc takes 16-bit inputs only


@pytest.mark.parametrize("dtype,lse_dtype,kernel", LSE_CASES)
def test_lse_is_float32_except_for_float64_inputs(rng, dtype, lse_dtype, kernel):
    q, k, v = qkv(rng, 1, 2, 20, 24, 32, dtype)
    do = rng.standard_normal(q.shape).astype(dtype)
    o, lse = flashlab.flash_attention(q, k, v, causal=True, kernel=kernel, return_lse=True)
    assert o.dtype == q.dtype
    assert lse.dtype == lse_dtype and lse.shape == (1, 2, 20)
    lse64 = naive_attention(*(x.astype(np.float64) for x in (q, k, v)), True)[1]
    tol = {np.float64: 1e-12, np.float32: 1e-5}.get(dtype, 2e-2)
    assert np.max(np.abs(lse.astype(np.float64) - lse64)) < tol * max(1.0, np.max(np.abs(lse64)))
    grads = flashlab.flash_attention_backward(do, q, k, v, o, lse, causal=True, kernel=kernel)
    assert all(g.dtype == q.dtype and g.shape == x.shape for g, x in zip(grads, (q, k, v)))


def test_float64_round_trip_keeps_oracle_accuracy(rng):
    # the float64 lse the forward returns keeps the backward at the oracle's precision; a float32
    # lse (also accepted) would not
    q, k, v = qkv(rng, 1, 2, 40, 33, 16)
    do = rng.standard_normal(q.shape)
    o, lse = flashlab.flash_attention(q, k, v, causal=True, return_lse=True)
    grads = flashlab.flash_attention_backward(do, q, k, v, o, lse, causal=True)
    oracle = naive_attention_backward(do, q, k, v, True)
    for g, g_ref in zip(grads, oracle):
        np.testing.assert_allclose(g, g_ref, rtol=1e-10, atol=1e-12)
    grads32 = flashlab.flash_attention_backward(do, q, k, v, o, lse.astype(np.float32), causal=True)
    for g, g_ref in zip(grads32, oracle):
        np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-6)
