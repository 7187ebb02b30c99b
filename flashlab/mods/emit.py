"""What flashlab does with a mod's expression tree (flashlab.mods.parse.Node): evaluate it on
NumPy index arrays (the references), differentiate a score_mod with respect to the score (the
backward's dS), and write it as CUDA C (the kernels, and the CPU backend, which compiles the
same C).

In C the indices are `int`, scores `float`, conditions `bool`. Python's // and % floor (they
differ from C's on negative operands, as q_idx - kv_idx can be), so the C uses fl_floordiv and
fl_mod from PRELUDE. Closed-over arrays are read from two buffers the kernel is given (floats,
ints) at offsets fixed when the mod is compiled.
"""
from __future__ import annotations

import numpy as np

from .parse import Node

# ---------------------------------------------------------------- NumPy

_NP_BIN = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.true_divide,
           "//": np.floor_divide, "%": np.mod, "**": np.power, "&": np.logical_and,
           "|": np.logical_or}
_NP_CMP = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
           "==": np.equal, "!=": np.not_equal}
_NP_CALL = {"abs": np.abs, "min": np.minimum, "max": np.maximum, "exp": np.exp, "log": np.log,
            "tanh": np.tanh, "sqrt": np.sqrt}


def evaluate(n: Node, env: dict, arrays: dict, float_dtype=np.float64):
    """The value of `n` for env (parameter name -> NumPy array or number, broadcasting) and the
    closed-over arrays; floats in float_dtype."""
    if n.op == "const":
        return float_dtype(n.value) if n.kind == "float" else n.value
    if n.op == "param":
        return env[n.value]
    a = [evaluate(x, env, arrays, float_dtype) for x in n.args]
    if n.op == "array":
        arr = arrays[n.value]
        idx = np.asarray(a[0])
        if idx.size and (idx.min() < 0 or idx.max() >= len(arr)):
            raise IndexError(f"the mod indexes {n.value} (length {len(arr)}) at "
                             f"{int(idx.min())} .. {int(idx.max())}")
        out = arr[idx]
        return out.astype(float_dtype) if n.kind == "float" else out
    if n.op == "bin":
        if n.value == "/":
            return np.true_divide(np.asarray(a[0], float_dtype), a[1])
        return _NP_BIN[n.value](a[0], a[1])
    if n.op == "cmp":
        return _NP_CMP[n.value](a[0], a[1])
    if n.op == "not":
        return np.logical_not(a[0])
    if n.op == "neg":
        return np.negative(a[0])
    if n.op == "where":
        return np.where(a[0], a[1], a[2])
    if n.op == "call":
        if n.kind == "float":
            a = [np.asarray(x, float_dtype) for x in a]
        return _NP_CALL[n.value](*a)
    raise AssertionError(n.op)


# ---------------------------------------------------------------- d/d score

ZERO = Node("const", "float", 0.0)
ONE = Node("const", "float", 1.0)


def _bin(op, a, b):
    if op == "+":
        if a == ZERO:
            return b
        if b == ZERO:
            return a
    if op == "-" and b == ZERO:
        return a
    if op == "*":
        if ZERO in (a, b):
            return ZERO
        if a == ONE:
            return b
        if b == ONE:
            return a
    return Node("bin", "float", op, (a, b))


def derivative(n: Node) -> Node:
    """d n / d score, as a tree (ZERO where n does not depend on the score)."""
    if n.op == "param":
        return ONE if n.value == "score" else ZERO
    if n.op in ("const", "array", "cmp", "not") or n.kind == "bool":
        return ZERO
    if n.op == "neg":
        d = derivative(n.args[0])
        return ZERO if d == ZERO else Node("neg", "float", None, (d,))
    if n.op == "where":
        c, a, b = n.args
        da, db = derivative(a), derivative(b)
        return ZERO if da == db == ZERO else Node("where", "float", None, (c, da, db))
    if n.op == "bin":
        a, b = n.args
        da, db = derivative(a), derivative(b)
        op = n.value
        if op in ("+", "-"):
            return _bin(op, da, db)
        if op == "*":
            return _bin("+", _bin("*", da, b), _bin("*", a, db))
        if op == "/":  # (da b - a db) / b^2
            num = _bin("-", _bin("*", da, b), _bin("*", a, db))
            return ZERO if num == ZERO else _bin("/", num, _bin("*", b, b))
        if op == "**":  # constant exponent: p a^(p-1) da
            if da == ZERO:
                return ZERO
            p = b.value
            return _bin("*", _bin("*", Node("const", "float", float(p)),
                                  Node("bin", "float", "**", (a, Node("const", "float",
                                                                      float(p) - 1)))), da)
        return ZERO  # // and % of indices
    if n.op == "call":
        a = n.args
        d = [derivative(x) for x in a]
        if all(x == ZERO for x in d):
            return ZERO
        f = n.value
        if f == "exp":
            return _bin("*", n, d[0])
        if f == "log":
            return _bin("/", d[0], a[0])
        if f == "sqrt":
            return _bin("/", d[0], _bin("*", Node("const", "float", 2.0), n))
        if f == "tanh":
            return _bin("*", _bin("-", ONE, _bin("*", n, n)), d[0])
        if f == "abs":
            neg = Node("cmp", "bool", "<", (a[0], ZERO))
            return Node("where", "float", None, (neg, Node("neg", "float", None, (d[0],)), d[0]))
        if f in ("min", "max"):
            pick = Node("cmp", "bool", "<=" if f == "min" else ">=", (a[0], a[1]))
            return Node("where", "float", None, (pick, d[0], d[1]))
    raise AssertionError(n.op)


# ---------------------------------------------------------------- CUDA C

_INTS = """\
/* flashlab.mods: Python's floor division and modulo on ints */
__device__ __forceinline__ int fl_floordiv(int a, int b) {
    const int q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}
__device__ __forceinline__ int fl_mod(int a, int b) {
    const int r = a % b;
    return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}
"""
_CALLS = """\
/* exp, log and tanh as the mods call them: the C library's (fp32-accurate) */
__device__ __forceinline__ float fl_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ float fl_exp(float x) { return expf(x); }
__device__ __forceinline__ float fl_log(float x) { return logf(x); }
"""
I2F = "__device__ __forceinline__ float fl_i2f(int v) { return (float)v; }\n"
PRELUDE = _INTS + _CALLS + I2F

# The 16-bit tensor-core kernels' prelude (KernelVariant.source), whose S is rounded to 16 bits
# anyway: exp, log and tanh as one MUFU instruction each (about 2^-11 relative error), and
# fl_i2f, which converts the small index expressions to_c(fast=True) gives it (|v| < 2^22 where
# every index is below INDEX_LIMIT), with an integer add and a float subtract, exactly, instead
# of I2F, which shares the quarter-rate pipe with the softmax's exp2. PRELUDE_FAST_LONG keeps the
# conversion, for longer sequences.
_FAST_CALLS = """\
/* exp, log and tanh as the mods call them: one MUFU instruction each (2^-11 relative error) */
__device__ __forceinline__ float fl_tanh(float x) {
    float y;
    asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ float fl_exp(float x) { return __expf(x); }
__device__ __forceinline__ float fl_log(float x) { return __logf(x); }
"""
I2F_FAST = """\
/* int -> float for |v| < 2^22, exact: v added to the bits of 1.5 2^23 (whose ulp is 1) */
__device__ __forceinline__ float fl_i2f(int v) {
    return __int_as_float(0x4B400000 + v) - 12582912.0f;
}
"""
PRELUDE_FAST = _INTS + _FAST_CALLS + I2F_FAST
PRELUDE_FAST_LONG = _INTS + _FAST_CALLS + I2F
INDEX_LIMIT = 1 << 20  # PRELUDE_FAST's fl_i2f is exact where every index is below this


def _small_index(n: Node):
    """(coefficient, constant) bounding an int expression made of q_idx, kv_idx, int constants,
    + and - by coefficient * (largest index) + constant, or None for any other expression."""
    if n.kind != "int":
        return None
    if n.op == "param" and n.value in ("q_idx", "kv_idx"):
        return 1, 0
    if n.op == "const":
        return 0, abs(int(n.value))
    if n.op == "neg":
        return _small_index(n.args[0])
    if n.op == "bin" and n.value in ("+", "-"):
        a, b = _small_index(n.args[0]), _small_index(n.args[1])
        if a is not None and b is not None:
            return a[0] + b[0], a[1] + b[1]
    return None


def _fits_fl_i2f(n: Node) -> bool:
    """n's value is below 2^22 in magnitude wherever the indices are below INDEX_LIMIT."""
    bound = _small_index(n)
    return bound is not None and bound[0] <= 2 and bound[1] < (1 << 21)


def _constant(n: Node) -> bool:
    """n reads no parameter and no array: a constant the C compiler folds."""
    return n.op == "const" or (n.op not in ("param", "array") and all(_constant(x) for x in n.args))


_C_CALL_F = {"abs": "fabsf", "min": "fminf", "max": "fmaxf", "exp": "fl_exp", "log": "fl_log",
             "tanh": "fl_tanh", "sqrt": "sqrtf"}


def _c_num(v, kind) -> str:
    if kind == "bool":
        return "true" if v else "false"
    if kind == "int":
        return str(int(v))
    r = repr(float(v))
    if r in ("inf", "-inf"):
        return "INFINITY" if r == "inf" else "(-INFINITY)"
    return (r if ("e" in r or "." in r) else r + ".0") + "f"


def to_c(n: Node, offsets: dict, fbuf: str = "fl_mod_f", ibuf: str = "fl_mod_i",
         fast: bool = False) -> str:
    """n as a C expression; offsets: closed-over array name -> (buffer "f" or "i", offset).
    fast (the 16-bit kernels, after PRELUDE_FAST): a float division by a constant becomes a
    product with its reciprocal (folded by the compiler), any other __fdividef, and small index
    expressions convert to float through fl_i2f: the same values to within an ulp of S, which
    the kernels round to 16 bits."""
    def f(x: Node) -> str:
        return to_c(x, offsets, fbuf, ibuf, fast)

    def as_float(x: Node) -> str:
        if x.kind == "float":
            return f(x)
        if fast and _fits_fl_i2f(x):
            return f"fl_i2f({f(x)})"
        return f"((float){f(x)})"

    if n.op == "const":
        return _c_num(n.value, n.kind)
    if n.op == "param":
        return n.value
    if n.op == "array":
        buf, off = offsets[n.value]
        return f"{fbuf if buf == 'f' else ibuf}[{off} + ({f(n.args[0])})]"
    if n.op == "neg":
        return f"(-{f(n.args[0])})"
    if n.op == "not":
        return f"(!{f(n.args[0])})"
    if n.op == "where":
        c, a, b = n.args
        if n.kind == "float":
            return f"({f(c)} ? {as_float(a)} : {as_float(b)})"
        return f"({f(c)} ? {f(a)} : {f(b)})"
    if n.op == "cmp":
        a, b = n.args
        if "float" in (a.kind, b.kind):
            return f"({as_float(a)} {n.value} {as_float(b)})"
        return f"({f(a)} {n.value} {f(b)})"
    if n.op == "bin":
        a, b = n.args
        op = n.value
        if op == "&":
            return f"({f(a)} && {f(b)})"
        if op == "|":
            return f"({f(a)} || {f(b)})"
        if op == "//":
            return f"fl_floordiv({f(a)}, {f(b)})"
        if op == "%":
            return f"fl_mod({f(a)}, {f(b)})"
        if op == "**":
            return f"powf({as_float(a)}, {as_float(b)})"
        if n.kind == "float":
            if op == "/" and fast:
                if _constant(b):
                    return f"({as_float(a)} * (1.0f / {as_float(b)}))"
                return f"__fdividef({as_float(a)}, {as_float(b)})"
            return f"({as_float(a)} {op} {as_float(b)})"
        return f"({f(a)} {op} {f(b)})"
    if n.op == "call":
        if n.kind == "int":  # abs, min, max of ints
            if n.value == "abs":
                x = f(n.args[0])
                return f"({x} < 0 ? -{x} : {x})"
            a, b = (f(x) for x in n.args)
            cmp = "<" if n.value == "min" else ">"
            return f"(({a}) {cmp} ({b}) ? ({a}) : ({b}))"
        return f"{_C_CALL_F[n.value]}({', '.join(as_float(x) for x in n.args)})"
    raise AssertionError(n.op)
