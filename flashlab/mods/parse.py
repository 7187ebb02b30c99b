"""A user's mask_mod or score_mod, read into a small expression tree.

FlexAttention's signatures: mask_mod(b, h, q_idx, kv_idx) -> bool and
score_mod(score, b, h, q_idx, kv_idx) -> score. The body is a `return` (after any number of
`name = expression` lines), or a lambda, in this subset:

  numbers and True/False; the parameters; names assigned above; closed-over (or global) numbers
  and 1-D arrays, indexed by an expression (slopes[h], doc[q_idx]);
  + - * / // % and ** (to a constant power); comparisons (chained too); & | ~ and `and`, `or`,
  `not` on conditions; `a if cond else b`;
  where(cond, a, b), abs, min, max (of two), exp, log, tanh, sqrt, under any module prefix
  (torch.where, np.exp, math.tanh: only the last name counts).

Anything else is a ModError that names the construct and the file and line it is on. The tree
(`Node`) is what flashlab.mods.emit evaluates on NumPy index arrays, differentiates, and writes
out as CUDA C.
"""
from __future__ import annotations

import ast
import re
import inspect
import textwrap
from dataclasses import dataclass

import numpy as np

FUNCS = {"where": 3, "abs": 1, "min": 2, "max": 2, "exp": 1, "log": 1, "tanh": 1, "sqrt": 1}
BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
          ast.Mod: "%", ast.Pow: "**", ast.BitAnd: "&", ast.BitOr: "|"}
CMPOPS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}
PARAMS = {"mask": ("b", "h", "q_idx", "kv_idx"), "score": ("score", "b", "h", "q_idx", "kv_idx")}


class ModError(ValueError):
    """A mask_mod / score_mod outside the subset flashlab compiles: says what and where."""


@dataclass(frozen=True)
class Node:
    """op: "const" (value), "param" (name), "array" (name, index node), "bin" (op, a, b),
    "cmp" (op, a, b), "not" (a), "neg" (a), "call" (name, args), "where" (c, a, b).
    kind: "int", "float" or "bool"."""

    op: str
    kind: str
    value: object = None
    args: tuple = ()


def _kind_of_binop(op: str, a: Node, b: Node, where: str) -> str:
    if op in ("&", "|"):
        if a.kind != "bool" or b.kind != "bool":
            raise ModError(f"{where}: `{op}` joins conditions (True/False); it got {a.kind} "
                           f"and {b.kind} (bitwise arithmetic on indices is not supported)")
        return "bool"
    if op == "/":
        return "float"
    if op in ("//", "%") and "float" in (a.kind, b.kind):
        raise ModError(f"{where}: `{op}` takes whole numbers (indices); got {a.kind} and {b.kind}")
    return "float" if "float" in (a.kind, b.kind) else "int"


class _Reader:
    def __init__(self, fn, kind: str, file: str, line0: int, captured: dict):
        self.kind, self.file, self.line0 = kind, file, line0
        self.params = PARAMS[kind]
        self.captured = captured  # name -> number or 1-D array (what the function closes over)
        self.locals: dict = {}

    def at(self, node) -> str:
        return f"{self.file}:{self.line0 + getattr(node, 'lineno', 1) - 1}"

    def fail(self, node, what: str):
        raise ModError(f"{self.at(node)}: {what} is not in the subset a {self.kind}_mod may use "
                       f"(numbers, its parameters, closed-over numbers and 1-D arrays, + - * / "
                       f"// % **, comparisons, & | ~, `x if c else y`, where, abs, min, max, exp, "
                       f"log, tanh, sqrt)")

    def name(self, node: ast.Name) -> Node:
        n = node.id
        if n in self.locals:
            return self.locals[n]
        if n in self.params:
            score = self.kind == "score" and n == self.params[0]
            return Node("param", "float" if score else "int", n)
        if n in self.captured:
            v = self.captured[n]
            if isinstance(v, np.ndarray):
                self.fail(node, f"the array `{n}` used without an index")
            return _const(v, node, self)
        if n in ("True", "False"):
            return Node("const", "bool", n == "True")
        self.fail(node, f"the name `{n}` (neither a parameter nor a closed-over number or array)")

    def expr(self, node) -> Node:
        if isinstance(node, ast.Constant):
            return _const(node.value, node, self)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.BinOp):
            op = BINOPS.get(type(node.op))
            if op is None:
                self.fail(node, f"the operator {type(node.op).__name__}")
            a, b = self.expr(node.left), self.expr(node.right)
            if op == "**" and b.op != "const":
                self.fail(node, "a power whose exponent is not a constant")
            return Node("bin", _kind_of_binop(op, a, b, self.at(node)), op, (a, b))
        if isinstance(node, ast.UnaryOp):
            a = self.expr(node.operand)
            if isinstance(node.op, (ast.Invert, ast.Not)):
                if a.kind != "bool":
                    self.fail(node, f"`~` / `not` of a {a.kind} (it negates conditions)")
                return Node("not", "bool", None, (a,))
            if isinstance(node.op, ast.USub):
                return Node("neg", a.kind, None, (a,))
            if isinstance(node.op, ast.UAdd):
                return a
            self.fail(node, f"the operator {type(node.op).__name__}")
        if isinstance(node, ast.BoolOp):
            op = "&" if isinstance(node.op, ast.And) else "|"
            out = self.expr(node.values[0])
            for v in node.values[1:]:
                b = self.expr(v)
                out = Node("bin", _kind_of_binop(op, out, b, self.at(node)), op, (out, b))
            return out
        if isinstance(node, ast.Compare):
            left, out = self.expr(node.left), None
            for op_node, right_node in zip(node.ops, node.comparators):
                op = CMPOPS.get(type(op_node))
                if op is None:
                    self.fail(node, f"the comparison {type(op_node).__name__}")
                right = self.expr(right_node)
                c = Node("cmp", "bool", op, (left, right))
                out = c if out is None else Node("bin", "bool", "&", (out, c))
                left = right
            return out
        if isinstance(node, ast.IfExp):
            return self.where(node, self.expr(node.test), self.expr(node.body),
                              self.expr(node.orelse))
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.Subscript):
            return self.index(node)
        self.fail(node, f"a {type(node).__name__} expression")

    def where(self, node, c: Node, a: Node, b: Node) -> Node:
        if c.kind != "bool":
            self.fail(node, f"a condition that is a {c.kind}, not a comparison")
        if {a.kind, b.kind} & {"bool"} and a.kind != b.kind:
            self.fail(node, "where() of a condition and a number")
        kind = "bool" if a.kind == "bool" else ("float" if "float" in (a.kind, b.kind) else "int")
        return Node("where", kind, None, (c, a, b))

    def call(self, node: ast.Call) -> Node:
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
        if name not in FUNCS:
            self.fail(node, f"a call of `{ast.unparse(f)}`")
        if node.keywords or len(node.args) != FUNCS[name]:
            keywords = " and keywords" if node.keywords else ""
            self.fail(node, f"`{name}` with {len(node.args)} arguments{keywords} (it takes "
                            f"{FUNCS[name]})")
        args = [self.expr(a) for a in node.args]
        if name == "where":
            return self.where(node, *args)
        if name in ("min", "max", "abs"):
            kind = "float" if any(a.kind == "float" for a in args) else "int"
        else:
            kind = "float"
        if any(a.kind == "bool" for a in args):
            self.fail(node, f"`{name}` of a condition")
        return Node("call", kind, name, tuple(args))

    def index(self, node: ast.Subscript) -> Node:
        if not isinstance(node.value, ast.Name) or node.value.id not in self.captured or \
                not isinstance(self.captured[node.value.id], np.ndarray):
            self.fail(node, f"indexing `{ast.unparse(node.value)}` (only closed-over 1-D arrays "
                            f"may be indexed)")
        i = self.expr(node.slice)
        if i.kind != "int":
            self.fail(node, f"an index that is a {i.kind}")
        arr = self.captured[node.value.id]
        kind = "float" if np.issubdtype(arr.dtype, np.floating) else "int"
        return Node("array", kind, node.value.id, (i,))

    def returned(self, node, tree: Node) -> Node:
        """The returned expression, if it is what a mod of this kind returns."""
        if self.kind == "mask" and tree.kind != "bool":
            raise ModError(f"{self.at(node)}: a mask_mod returns a condition (a comparison, "
                           f"& |, ...); this returns a{'n' if tree.kind == 'int' else ''} "
                           f"{tree.kind}")
        if self.kind == "score" and tree.kind == "bool":
            raise ModError(f"{self.at(node)}: a score_mod returns a number; this returns a "
                           f"condition")
        return tree

    def body(self, fn_node) -> Node:
        if isinstance(fn_node, ast.Lambda):
            return self.returned(fn_node, self.expr(fn_node.body))
        for stmt in fn_node.body:
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and \
                    isinstance(stmt.value.value, str):
                continue  # a docstring
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and \
                    isinstance(stmt.targets[0], ast.Name):
                self.locals[stmt.targets[0].id] = self.expr(stmt.value)
                continue
            if isinstance(stmt, ast.Return) and stmt.value is not None:
                return self.returned(stmt, self.expr(stmt.value))
            self.fail(stmt, f"the statement `{ast.unparse(stmt).splitlines()[0]}`")
        self.fail(fn_node, "a function without a `return`")


def _const(v, node, reader) -> Node:
    if isinstance(v, (bool, np.bool_)):
        return Node("const", "bool", bool(v))
    if isinstance(v, (int, np.integer)):
        return Node("const", "int", int(v))
    if isinstance(v, (float, np.floating)):
        return Node("const", "float", float(v))
    reader.fail(node, f"the value {v!r} ({type(v).__name__})")


def _as_array(v):
    """A closed-over value as the subset sees it: a number, a 1-D NumPy array (torch and CuPy
    arrays are copied to the host), or None for anything else."""
    if isinstance(v, (bool, int, float, np.number, np.bool_)):
        return v
    if hasattr(v, "get") and type(v).__module__.startswith("cupy"):
        v = v.get()
    elif type(v).__module__.startswith("torch"):
        v = v.detach().cpu().numpy()
    if isinstance(v, np.ndarray) and v.ndim == 1 and (np.issubdtype(v.dtype, np.number)):
        return v
    return None


def captured_values(fn) -> dict:
    """name -> number or 1-D array for the free variables and globals `fn` reads (others are
    left out, and reading them is then an error naming them)."""
    code = fn.__code__
    out = {}
    for name, cell in zip(code.co_freevars, fn.__closure__ or ()):
        try:
            v = _as_array(cell.cell_contents)
        except ValueError:  # an empty cell
            v = None
        if v is not None:
            out[name] = v
    for name in code.co_names:
        if name in fn.__globals__ and name not in out:
            v = _as_array(fn.__globals__[name])
            if v is not None:
                out[name] = v
    return out


def _find(tree, fn):
    """The FunctionDef or Lambda of `fn` in the parsed source of its lines."""
    code = fn.__code__
    params = list(code.co_varnames[:code.co_argcount])
    found = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.Lambda))
             and [a.arg for a in n.args.args] == params
             and (not isinstance(n, ast.FunctionDef) or n.name == fn.__name__)]
    if len(found) != 1:
        raise ModError(f"{code.co_filename}:{code.co_firstlineno}: cannot tell which of "
                       f"{len(found)} functions on these lines is {fn.__name__} (define it on a "
                       f"line of its own)")
    return found[0]


def _lambda_alone(text: str, fn) -> ast.AST:
    """The lambda of lines that do not parse by themselves (it sits inside a larger expression,
    a call or a literal spanning lines): the longest piece of text from a `lambda` to a comma,
    a closing bracket or a line end that parses as one lambda expression."""
    for start in (m.start() for m in re.finditer(r"\blambda\b", text)):
        seg = text[start:]
        ends = [m.start() for m in re.finditer(r"[,)\]}\n]", seg)] + [len(seg)]
        for end in sorted(set(ends), reverse=True):
            try:
                tree = ast.parse("(" + seg[:end] + "\n)", mode="eval")
            except SyntaxError:
                continue
            if isinstance(tree.body, ast.Lambda) and \
                    len(tree.body.args.args) == fn.__code__.co_argcount:
                return tree
    code = fn.__code__
    raise ModError(f"{code.co_filename}:{code.co_firstlineno}: cannot read the lambda "
                   f"{fn.__name__} out of its lines (define it with def, or on a line of its own)")


def read(fn, kind: str):
    """(tree, captured values, source text, where) of a mask_mod (kind "mask") or score_mod
    (kind "score")."""
    if not callable(fn) or not hasattr(fn, "__code__"):
        raise ModError(f"{kind}_mod must be a Python function (def or lambda), got "
                       f"{type(fn).__name__}")
    code = fn.__code__
    want = PARAMS[kind]
    if code.co_argcount != len(want):
        raise ModError(f"{code.co_filename}:{code.co_firstlineno}: a {kind}_mod takes "
                       f"{len(want)} arguments ({', '.join(want)}), {fn.__name__} takes "
                       f"{code.co_argcount}")
    try:
        lines, line0 = inspect.getsourcelines(fn)
    except (OSError, TypeError) as e:
        raise ModError(f"{kind}_mod {fn.__name__}: its source cannot be read ({e}); define it "
                       f"in a file or a notebook cell") from e
    text = textwrap.dedent("".join(lines))
    try:
        tree = ast.parse(text)
    except SyntaxError:  # a lambda inside a larger expression: parse it alone
        tree = _lambda_alone(text, fn)
    node = _find(tree, fn)
    # the function's own parameter names stand for FlexAttention's, in order
    reader = _Reader(fn, kind, code.co_filename, line0, captured_values(fn))
    reader.params = tuple(a.arg for a in node.args.args)
    out = reader.body(node)
    return _rename(out, dict(zip(reader.params, want))), reader.captured, text, \
        f"{code.co_filename}:{line0}"


def _rename(n: Node, names: dict) -> Node:
    """The tree with the user's parameter names replaced by FlexAttention's."""
    if n.op == "param":
        want = names[n.value]
        return Node("param", "float" if want == "score" else "int", want)
    if not n.args:
        return n
    return Node(n.op, n.kind, n.value, tuple(_rename(a, names) for a in n.args))
