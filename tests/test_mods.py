"""flashlab.mods: mask_mod and score_mod read into one expression that the references evaluate
(NumPy, against the Python function itself), differentiate (against finite differences), and
write as C (compiled here with the C++ compiler and with NVRTC, and run on a grid against
NumPy); constructs outside the subset are errors that name the construct and its line."""
import ctypes
import math
import subprocess

import numpy as np
import pytest

from flashlab import mods
from flashlab.mods import emit
from flashlab.launch.compiler import nvrtc_compile
from flashlab.launch.sources import Source

SLOPES = np.array([0.5, 0.25, 0.125])
DOCS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3, 4, 4])


def mixed_mask(b, h, q_idx, kv_idx):
    far = (q_idx - kv_idx) // 3  # floor division of negative differences, as Python does
    return ((far % 2 == 0) | (kv_idx == 0)) & ~(kv_idx > q_idx + 4) and DOCS[kv_idx] >= h


def mixed_score(score, b, h, q_idx, kv_idx):
    d = abs(q_idx - kv_idx)
    bias = SLOPES[h] * min(d, 6) - 0.1 * max(score, -1.0)
    return mods.where(d % 2 == 1, 3.0 * mods.tanh(score / 3.0) - bias,
                      mods.exp(score * 0.5) + mods.log(1.0 + score * score) + (score ** 2) / 4)


def _grid(Nq=12, Nk=16, H=3, B=2):
    return (np.arange(B)[:, None, None, None], np.arange(H)[None, :, None, None],
            np.arange(Nq)[None, None, :, None], np.arange(Nk)[None, None, None, :])


BUILTIN_MASKS = {
    "causal": (mods.causal(), lambda b, h, q, k: k <= q),
    "window (3, 1)": (mods.sliding_window(3, 1), lambda b, h, q, k: q - 3 <= k <= q + 1),
    "window (-1, 2)": (mods.sliding_window(-1, 2), lambda b, h, q, k: k <= q + 2),
    "window (4, -1)": (mods.sliding_window(4, -1), lambda b, h, q, k: k >= q - 4),
    "document": (mods.document(DOCS), lambda b, h, q, k: DOCS[q] == DOCS[k]),
    "prefix_lm(5)": (mods.prefix_lm(5), lambda b, h, q, k: k < 5 or k <= q),
    "document & causal": (mods.and_masks(mods.document(DOCS), mods.causal()),
                          lambda b, h, q, k: DOCS[q] == DOCS[k] and k <= q),
    "mixed": (mods.mask_mod(mixed_mask), mixed_mask),
}


@pytest.mark.parametrize("name", BUILTIN_MASKS)
def test_masks_on_index_arrays_agree_with_the_function_called_on_each_pair(name):
    mod, f = BUILTIN_MASKS[name]
    got = mod.mask(*_grid())
    want = np.array([[[[bool(f(b, h, q, k)) for k in range(16)] for q in range(12)]
                      for h in range(3)] for b in range(2)])
    assert got.shape == want.shape and (got == want).all()
    assert 0 < got.sum() < got.size  # neither everything nor nothing: the test can fail


SCORES = {
    "softcap(4)": (mods.softcap(4.0), lambda s, b, h, q, k: 4.0 * math.tanh(s / 4.0)),
    "alibi": (mods.alibi(SLOPES), lambda s, b, h, q, k: s + SLOPES[h] * (k - q)),
    "mixed": (mods.score_mod(mixed_score), None),
}


def _scalar_mixed(s, b, h, q, k):
    d = abs(q - k)
    bias = SLOPES[h] * min(d, 6) - 0.1 * max(s, -1.0)
    if d % 2 == 1:
        return 3.0 * math.tanh(s / 3.0) - bias
    return math.exp(s * 0.5) + math.log(1.0 + s * s) + s ** 2 / 4


@pytest.mark.parametrize("name", SCORES)
def test_score_mods_and_their_derivatives(name):
    mod, f = SCORES[name]
    f = f or _scalar_mixed
    b, h, q, k = _grid()
    S = np.random.default_rng(0).standard_normal((2, 3, 12, 16)) * 3
    got = mod.score(S, b, h, q, k)
    want = np.vectorize(f)(S, b, h, q, k)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    eps = 1e-6  # central differences in float64
    fd = (mod.score(S + eps, b, h, q, k) - mod.score(S - eps, b, h, q, k)) / (2 * eps)
    np.testing.assert_allclose(mod.grad(S, b, h, q, k), fd, rtol=1e-6, atol=1e-7)


# the tensor-core kernels' C (to_c's fast) on the host: CUDA's two intrinsics it uses, in C
_HOST_INTRINSICS = ("#include <string.h>\n"
                    "static inline float __int_as_float(int v) { float f; memcpy(&f, &v, 4); "
                    "return f; }\n"
                    "static inline float __fdividef(float a, float b) { return a / b; }\n")


def _c_unit(mod, fast: bool = False) -> str:
    """The mod's C, and a grid evaluator a host compiler can build (the kernels' qualifiers
    defined away). fast: the 16-bit kernels' C (fl_i2f's add and subtract, divisions by a
    constant as products), with the C library's exp, log and tanh."""
    prelude = mods.PRELUDE if not fast else \
        _HOST_INTRINSICS + emit.PRELUDE.replace(emit.I2F, emit.I2F_FAST)
    call = ("out[i] = (float)fl_mask_mod(b, h, q, k, fd, id);" if mod.kind == "mask" else
            "out[i] = grad ? fl_score_mod_grad(s[i], b, h, q, k, fd, id) "
            ": fl_score_mod(s[i], b, h, q, k, fd, id);")
    return ("#include <math.h>\n#define __device__\n#define __forceinline__ inline\n"
            + prelude + mod.cuda(fast=fast) +
            'extern "C" void grid(int B, int H, int Nq, int Nk, const float* s, float* out, '
            "int grad, const float* fd, const int* id) {\n"
            "  int i = 0;\n  for (int b = 0; b < B; ++b) for (int h = 0; h < H; ++h)\n"
            "  for (int q = 0; q < Nq; ++q) for (int k = 0; k < Nk; ++k, ++i) {\n"
            f"    (void)s; (void)grad; {call}\n  }}\n}}\n")


@pytest.mark.cpu_kernel
@pytest.mark.parametrize("fast", [False, True], ids=["fa2's C", "tc's C"])
@pytest.mark.parametrize("name", list(BUILTIN_MASKS) + list(SCORES))
def test_the_c_a_mod_compiles_to_computes_what_numpy_does(name, fast, tmp_path):
    from flashlab.cpu.build import compiler

    mod = (BUILTIN_MASKS.get(name) or SCORES[name])[0]
    src = tmp_path / "mod.cpp"
    src.write_text(_c_unit(mod, fast))
    lib = tmp_path / "mod.so"
    cmd, _ = compiler()
    r = subprocess.run([*cmd, "-O1", "-shared", "-fPIC", "-Wall", "-Werror", "-o", str(lib),
                        str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + src.read_text()
    grid = ctypes.CDLL(str(lib)).grid
    B, H, Nq, Nk = 2, 3, 12, 16
    S = (np.random.default_rng(1).standard_normal((B, H, Nq, Nk)) * 3).astype(np.float32)
    fd = np.ascontiguousarray(mod.float_data)
    idata = np.ascontiguousarray(mod.int_data)
    ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    outs = []
    for grad in ((0, 1) if mod.kind == "score" else (0,)):
        out = np.full(S.shape, np.nan, np.float32)
        grid(B, H, Nq, Nk, ptr(S), ptr(out), grad, ptr(fd), ptr(idata))
        outs.append(out)
    idx = _grid(Nq, Nk, H, B)
    if mod.kind == "mask":
        assert (outs[0] == mod.mask(*idx)).all()
    else:
        np.testing.assert_allclose(outs[0], mod.score(S.astype(np.float64), *idx), rtol=2e-5,
                                   atol=2e-5)
        np.testing.assert_allclose(outs[1], mod.grad(S.astype(np.float64), *idx), rtol=2e-5,
                                   atol=2e-5)


def test_fl_i2f_is_exact_on_its_range_and_tcs_c_uses_it_and_no_division():
    # PRELUDE_FAST's fl_i2f: the bits of 1.5 2^23 plus v, minus 1.5 2^23, for |v| < 2^22
    v = np.concatenate([np.arange(-(1 << 22) + 1, -(1 << 22) + 2000),
                        np.arange(-3000, 3000), np.arange((1 << 22) - 2000, 1 << 22)])
    got = (np.int32(0x4B400000) + v.astype(np.int32)).view(np.float32) - np.float32(12582912.0)
    assert (got == v.astype(np.float32)).all()
    alibi, softcap = mods.alibi(SLOPES).cuda(fast=True), mods.softcap(30.0).cuda(fast=True)
    assert "fl_i2f((kv_idx - q_idx))" in alibi and "(float)" not in alibi
    assert "(score * (1.0f / 30.0f))" in softcap and "(score / " not in softcap  # folded
    # q_idx * 3 may pass 2^22 under INDEX_LIMIT: converted as before
    tripled = mods.score_mod(lambda score, b, h, q_idx, kv_idx: score + q_idx * 3)
    assert "((float)(q_idx * 3))" in tripled.cuda(fast=True)
    assert "fl_i2f" not in mods.alibi(SLOPES).cuda()  # fa2's C and the CPU's: unchanged


def test_the_c_compiles_for_the_gpu_with_nvrtc():
    pytest.importorskip("cuda.bindings")
    text = mods.PRELUDE
    for m in (mods.mask_mod(mixed_mask), mods.score_mod(mixed_score)):
        text += m.cuda()
    text += ('extern "C" __global__ void use(float* o, const float* f, const int* i) {\n'
             "  o[0] = fl_mask_mod(0, 1, 2, 3, f, i) ? fl_score_mod(o[1], 0, 1, 2, 3, f, i)\n"
             "                                  : fl_score_mod_grad(o[1], 0, 1, 2, 3, f, i);\n}\n")
    nvrtc_compile(Source("mods.cu", text), "sm_80", name_expressions=())


def _print_mask(b, h, q_idx, kv_idx):
    return print(q_idx)


def _loop_mask(b, h, q_idx, kv_idx):
    for _ in range(2):
        pass
    return q_idx >= kv_idx


def _attr_mask(b, h, q_idx, kv_idx):
    return q_idx.real >= kv_idx


def _power_mask(b, h, q_idx, kv_idx):
    return q_idx ** kv_idx >= 1


def _number_mask(b, h, q_idx, kv_idx):
    return q_idx - kv_idx


def _bool_score(score, b, h, q_idx, kv_idx):
    return score > 0


def _unknown_name(b, h, q_idx, kv_idx):
    return q_idx >= pytest  # a module: neither a number nor an array


def _two_args(b, h):
    return b == h


@pytest.mark.parametrize("fn,kind,match", [
    (_print_mask, "mask", r"a call of `print` is not in the subset"),
    (_loop_mask, "mask", r"the statement `for _ in range\(2\):` is not in the subset"),
    (_attr_mask, "mask", r"a Attribute expression is not in the subset"),
    (_power_mask, "mask", r"a power whose exponent is not a constant"),
    (_number_mask, "mask", r"a mask_mod returns a condition .* this returns an int"),
    (_bool_score, "score", r"a score_mod returns a number; this returns a condition"),
    (_unknown_name, "mask", r"the name `pytest` \(neither a parameter"),
    (_two_args, "mask", r"a mask_mod takes 4 arguments \(b, h, q_idx, kv_idx\), _two_args takes 2"),
])
def test_constructs_outside_the_subset_name_themselves_and_their_line(fn, kind, match):
    with pytest.raises(mods.ModError, match=match) as e:
        (mods.mask_mod if kind == "mask" else mods.score_mod)(fn)
    if "arguments" not in match:
        line = fn.__code__.co_firstlineno + 1  # the line of the body that is refused
        assert f"test_mods.py:{line}:" in str(e.value)


def test_a_lambda_reads_like_a_def_and_out_of_range_indices_are_caught():
    m = mods.mask_mod(lambda b, h, q, k: DOCS[q] == DOCS[k])
    assert (m.mask(*_grid(Nq=16, Nk=16)) == mods.document(DOCS).mask(*_grid(Nq=16, Nk=16))).all()
    with pytest.raises(IndexError, match=r"indexes DOCS \(length 16\) at 0 \.\. 19"):
        m.mask(*_grid(Nq=20, Nk=20))
    assert m.key == mods.mask_mod(lambda b, h, q, k: DOCS[q] == DOCS[k]).key
    assert m.key != mods.document(DOCS[::-1].copy()).key  # the captured values are in the key


# ----------------------------------------------------------------------------- block masks

def _brute_blocks(masks, B, H, Nq, Nk, Br, Bc):
    idx = _grid(Nq, Nk, H, B)
    vis = np.ones((B, H, Nq, Nk), bool)
    for m in masks:
        vis &= m.mask(*idx)
    Tr, Tc = -(-Nq // Br), -(-Nk // Bc)
    anyv = np.zeros((B, H, Tr, Tc), bool)
    full = np.zeros((B, H, Tr, Tc), bool)
    for i in range(Tr):
        for j in range(Tc):
            t = vis[:, :, i * Br:(i + 1) * Br, j * Bc:(j + 1) * Bc]
            anyv[:, :, i, j] = t.any(axis=(2, 3))
            full[:, :, i, j] = t.all(axis=(2, 3))
    return anyv, full


def _head_window(b, h, q_idx, kv_idx):
    return q_idx - kv_idx <= 2 + 3 * h  # a window that widens with the head


@pytest.mark.parametrize("masks", [
    [mods.causal()], [mods.sliding_window(5, 0)], [mods.document(DOCS), mods.causal()],
    [mods.prefix_lm(3)], [mods.mask_mod(_head_window), mods.causal()],
])
def test_block_masks_are_the_tiles_with_something_visible_and_those_with_all(masks):
    from flashlab.mods.blocks import block_mask

    B, H, Nq, Nk, Br, Bc = 2, 3, 16, 16, 4, 3  # ragged last key tile
    bm = block_mask(masks, B, H, Nq, Nk, Br, Bc)
    anyv, full = _brute_blocks(masks, B, H, Nq, Nk, Br, Bc)
    reads_h = any(m.name == "_head_window" for m in masks)
    assert bm.any_visible.shape == ((1, 3) if reads_h else (1, 1)) + anyv.shape[2:]
    assert (np.broadcast_to(bm.any_visible, anyv.shape) == anyv).all()
    assert (np.broadcast_to(bm.full, full.shape) == full).all()
    assert 0 < bm.density() < 1 and bm.partial.any()
    assert list(bm.visit(1, 2, 3)) == list(np.flatnonzero(anyv[1, 2, 3]))
    assert block_mask(masks, B, H, Nq, Nk, Br, Bc) is bm  # computed once, cached


def test_the_causal_block_mask_is_f2_l3s_causal_skipping():
    from flashlab.mods.blocks import block_mask
    from flashlab.reference.tiles import causal_visits

    Nq, Nk, Br, Bc = 37, 29, 8, 6
    bm = block_mask([mods.causal()], 1, 1, Nq, Nk, Br, Bc)
    want = np.array([[causal_visits(i, Br, Nq, j, Bc) for j in range(-(-Nk // Bc))]
                     for i in range(-(-Nq // Br))])
    assert (bm.any_visible[0, 0] == want).all()


LAMBDAS_IN_A_LITERAL = {"every other row": (dict(mask_mod=lambda b, h, q_idx, kv_idx:
                                                  q_idx % 2 == 0), (2, 2),
                                             "more of the literal"),
                        "two": [lambda score, b, h, q, kv: score * (q
                                                                 - kv), 5]}


def test_a_lambda_inside_a_literal_that_spans_lines_is_read():
    m = mods.mask_mod(LAMBDAS_IN_A_LITERAL["every other row"][0]["mask_mod"])
    q = np.arange(4)[:, None]
    assert m.mask(0, 0, q, np.arange(3)[None, :]).tolist() == [[True] * 3, [False] * 3] * 2
    s = mods.score_mod(LAMBDAS_IN_A_LITERAL["two"][0])
    assert float(s.score(np.float64(2.0), 0, 0, 5, 1)) == 8.0
