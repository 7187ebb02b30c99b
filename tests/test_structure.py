"""The layout's promises (docs/STYLE.md): no import cycle among flashlab's modules, at module
level or inside functions; no module over 500 lines; no module that compares kernel names as
strings (the registry knows the kernels). Read from the sources with ast; nothing is imported."""
import ast
from pathlib import Path

import pytest

from flashlab import registry

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "flashlab"
MAX_LINES = 500
# the one cycle the design keeps: a Tensor's methods build Functions, Functions make Tensors
ALLOWED_CYCLES = [{"flashlab.autodiff.tensor", "flashlab.autodiff.tensor_functions"}]


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(PKG.rglob("*.py")) if "__pycache__" not in p.parts}


def _imports(name: str, path: Path) -> set:
    """The flashlab modules `name` imports anywhere in its text (functions included); for
    `from X import y`, X.y where that is a module, else X."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                found.add(sub if sub in MODULES else target)
    return {m for m in found if m in MODULES and m != name}


def _graph() -> dict:
    graph = {m: _imports(m, p) for m, p in MODULES.items()}
    for allowed in ALLOWED_CYCLES:
        for m in allowed & set(graph):
            graph[m] -= allowed
    return graph


def _cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _path(graph, comp):
    """One cycle through the component, for the message: a -> b -> ... -> a."""
    start, members = comp[0], set(comp)
    seen, trail = {start}, [start]
    while True:
        nxt = next(w for w in sorted(graph[trail[-1]]) if w in members
                   and (w == start or w not in seen)) if len(trail) > 1 else \
            next(w for w in sorted(graph[start]) if w in members)
        trail.append(nxt)
        if nxt == start or nxt in seen:
            return " -> ".join(trail)
        seen.add(nxt)


def test_the_import_graph_reads_relative_imports_and_imports_inside_functions():
    graph = _graph()
    assert "flashlab.registry" in graph["flashlab.launch"]  # from .. import registry
    assert "flashlab.launch.sources" in graph["flashlab.course.bugs"]
    assert "flashlab.launch" in graph["flashlab.kernel_check"]
    assert "flashlab.install" in graph["flashlab.launch.device"]  # inside _cupy()


def test_no_import_cycle():
    graph = _graph()
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(_path(graph, c) for c in cycles)


def test_trace_does_not_import_the_launcher():
    # trace.py is the format, record and compare; kernel_check.py runs kernels against it
    assert not {m for m in _graph()["flashlab.trace"] if m.startswith("flashlab.launch")
                or m in ("flashlab.cuda_kernel_ops", "flashlab.kernel_check")}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_over_500_lines(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module].relative_to(ROOT)} has {lines} lines"


def test_the_old_launcher_is_a_thin_alias():
    # plain defs that convert the old arguments and hand over to the new homes
    assert len(MODULES["flashlab.cuda_kernel_ops"].read_text().splitlines()) < 150


def test_nothing_in_flashlab_imports_the_old_launcher():
    # callers import the new homes; only the tests of the alias itself import it
    graph = _graph()
    users = sorted(m for m, deps in graph.items() if "flashlab.cuda_kernel_ops" in deps)
    assert not users, f"{', '.join(users)} import flashlab.cuda_kernel_ops (an alias only)"
    others = [p for d in ("scripts", "tutorials") for p in sorted((ROOT / d).glob("*.py"))]
    for path in others:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [f"{node.module}.{a.name}" for a in node.names]
                     if isinstance(node, ast.ImportFrom) else [])
            old = [n for n in names if (n + ".").startswith("flashlab.cuda_kernel_ops.")]
            assert not old, f"{path.relative_to(ROOT)} imports {old[0]}"


def _string_constants(node) -> set:
    out = set()
    for c in [node.left] + node.comparators:
        elts = c.elts if isinstance(c, (ast.Tuple, ast.List, ast.Set)) else [c]
        out |= {e.value for e in elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    return out


def test_no_module_compares_kernel_names():
    # `kernel == "tc"`, `kernel in ("fa1", "fa2")`: a registry attribute says it instead
    names = set(registry.names()) | {v.source.removesuffix(".cu") for s in registry.KERNELS.values()
                                     for v in s.variants.values()}
    found = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Compare) and _string_constants(node) & names:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "\n".join(found)


def test_no_module_uses_a_name_it_never_defines():
    # code that only a GPU runs (bench/gpu.py, cli/info.py's kernel table) is not exercised by
    # the CPU suite: a name it forgot to import would first fail on a GPU machine
    from pyflakes import api, messages

    class Collect:
        def __init__(self):
            self.found = []

        def flake(self, m):
            if isinstance(m, (messages.UndefinedName, messages.UndefinedLocal,
                              messages.UndefinedExport)):
                self.found.append(f"{m.filename}:{m.lineno}: {m.message % m.message_args}")

        def unexpectedError(self, filename, msg):
            self.found.append(f"{filename}: {msg}")

        def syntaxError(self, filename, msg, lineno, offset, text):
            self.found.append(f"{filename}:{lineno}: {msg}")

    out = Collect()
    for path in sorted(PKG.rglob("*.py")) + sorted((ROOT / "scripts").glob("*.py")):
        api.checkPath(str(path), out)
    assert out.found == []
