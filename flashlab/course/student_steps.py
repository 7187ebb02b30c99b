"""The grader's child process for a Python exercise: run a student's step-through, save its steps.

Run as a script by flashlab/course/isolate.py, never imported by flashlab: it imports NumPy and
the student's package (under a private name, from their copy), not the grader's flashlab, which
an import hook refuses to student code. It writes each case's steps (the tiles as arrays, the
rest as JSON) to an .npz; the grader compares them with its own reference in its own process.

    python -I student_steps.py ROOT MODULE FUNCTION INPUTS.npz CASES.json OUT.npz
"""
import importlib.abc
import importlib.util
import json
import sys
import traceback
import types
from pathlib import Path

import numpy as np

STUDENT = "flashlab_student"


class Unavailable(types.ModuleType):
    """What `import flashlab` gives student code here: not the grader's package (which holds the
    solutions) but an inert stand-in. Setting its attributes (a monkeypatch) does nothing to the
    grader; calling anything from it raises."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        sub = Unavailable(f"{self.__name__}.{name}")
        setattr(self, name, sub)
        return sub

    def __call__(self, *args, **kwargs):
        raise ImportError(f"{self.__name__} is the grader's, not available to student code: use "
                          "your copy's own modules (relative imports)")


class RefuseGrader(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import flashlab[.x]` from student code: the inert stand-in, never the grader's modules."""

    def find_spec(self, name, path=None, target=None):
        if name == "flashlab" or name.startswith("flashlab."):
            return importlib.util.spec_from_loader(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return Unavailable(spec.name)

    def exec_module(self, module):
        module.__path__ = []


def load_student(root: Path):
    """The student's flashlab/ and flashlab/reference/ as package shells (their __init__ files
    not run), so importing one module runs only what it imports itself: a syntax error in
    fa2.py does not stop fa1.py's exercises."""
    for name, path in ((STUDENT, root / "flashlab"), (f"{STUDENT}.reference",
                                                      root / "flashlab" / "reference")):
        shell = types.ModuleType(name)
        shell.__path__ = [str(path)]
        shell.__package__ = name
        shell.__file__ = str(path / "__init__.py")
        sys.modules[name] = shell


def _rel(filename, root: Path):
    try:
        return str(Path(filename).resolve().relative_to(root.resolve()))
    except (ValueError, OSError):
        return None


def where(exc, root: Path) -> str:
    """Where in the student's copy an exception arose, as file:line ("" when not there)."""
    if isinstance(exc, SyntaxError) and exc.filename and _rel(exc.filename, root):
        return f"{_rel(exc.filename, root)}:{exc.lineno}"
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if _rel(frame.filename, root):
            return f"{_rel(frame.filename, root)}:{frame.lineno}"
    return ""


def main():
    root, module, function, inputs, cases, out = sys.argv[1:7]
    root = Path(root)
    sys.meta_path.insert(0, RefuseGrader())
    data = np.load(inputs, allow_pickle=False)
    cases = json.loads(Path(cases).read_text())
    meta, arrays = {"cases": []}, {}
    try:
        load_student(root)
        fn = getattr(importlib.import_module(f"{STUDENT}.reference.{module}"), function)
    except BaseException as exc:  # a syntax error, an import error, anything
        meta["error"] = f"your package does not import: {type(exc).__name__}: {exc}"
        meta["where"] = where(exc, root)
        Path(out).with_suffix(".json").write_text(json.dumps(meta))
        np.savez(out, **arrays)
        return
    for n, case in enumerate(cases):
        args = [data[f"c{n}_{name}"] for name in case["args"]] + [case["causal"]]
        entry = {"status": "ok", "steps": []}
        try:
            for k, step in enumerate(fn(*args, Br=case["Br"], Bc=case["Bc"])):
                entry["steps"].append({"algorithm": step.algorithm, "i": int(step.i),
                                       "j": int(step.j), "seq": int(step.seq), "line": step.line,
                                       "blocks": [int(b) for b in step.blocks],
                                       "tiles": sorted(step.tiles)})
                for name, tile in step.tiles.items():
                    arrays[f"c{n}_s{k}_{name}"] = np.asarray(tile, dtype=np.float64)
        except NotImplementedError as exc:
            entry = {"status": "not implemented", "message": str(exc), "steps": []}
        except BaseException as exc:
            entry = {"status": "error", "message": f"{type(exc).__name__}: {exc}",
                     "where": where(exc, root), "steps": []}
        meta["cases"].append(entry)
    np.savez(out, **arrays)
    Path(out).with_suffix(".json").write_text(json.dumps(meta))


if __name__ == "__main__":
    main()
