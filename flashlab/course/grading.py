"""Grading a copy (flashlab/course/assignment.py makes them): each exercise scored alone, its
student code in a child process (flashlab/course/isolate.py), every result written.

The grader is this process: it imports its own flashlab, never the copy's, and the student's
code runs in children with a time and a memory limit, so a syntax error, an import error, a
crash, a hang or a monkeypatch costs only the exercise it is in, with the student's file and
line in its feedback. The copy's assignment.json says what was handed out; those exercises are
graded and the maximum is their sum.
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import reference as solution
from .. import trace as trace_mod
from ..cpu import host
from ..kernel_check import default_backend
from ..launch import device, plans, sources
from . import isolate
from .assignment import (_LINE, EXERCISES, PY_SHAPES, STEP_THROUGHS, Exercise, _order,
                         _solution_file, handed_out, regions, splice)
from .bugs import HUNT


@dataclass
class Result:
    exercise: Exercise
    score: float = 0.0
    output: str = ""
    status: str = "failed"  # passed / failed / not implemented

    @property
    def max_score(self):
        return self.exercise.points


@dataclass
class Report:
    results: list = field(default_factory=list)

    @property
    def score(self):
        return sum(r.score for r in self.results)

    @property
    def max_score(self):
        return sum(r.max_score for r in self.results)


def _inputs(e: Exercise, B, H, Nq, Nk, d, causal):
    """The grading inputs of one shape: scaled so the running max changes from tile to tile
    (a missing rescale shows), and for a backward pass the solution's o and lse."""
    rng = np.random.default_rng(Nq * 100 + Nk)
    q, k, v, do = (rng.standard_normal(s) for s in ((B, H, Nq, d), (B, H, Nk, d), (B, H, Nk, d),
                                                     (B, H, Nq, d)))
    q = 2.0 * q
    if e.algorithm in ("B1", "G2"):
        o, lse = solution.naive_attention(q, k, v, causal)
        return {"do": do, "q": q, "k": k, "v": v, "o": o, "lse": lse}
    return {"q": q, "k": k, "v": v}


def _yours(root: Path, e: Exercise, line_tag: str) -> str:
    """Where in the student's file of exercise e the algorithm line `line_tag` (A1:L12) is, as
    " (your FILE:N is tagged A1:L12)", or "" when no line of theirs carries the tag."""
    try:
        text = (root / e.file).read_text(errors="replace")
        region = next(r for r in regions(text) if r.id == e.id)
    except (OSError, ValueError, StopIteration):
        return ""
    alg, _, n = line_tag.partition(":")
    pattern = re.compile(rf"\b{alg}:L(\d+)(?:-L(\d+))?")
    rows = text.splitlines()
    found = []  # (outside the region, width of the tag's range, line): in it and narrow wins
    for k, row in enumerate(rows):
        for m in pattern.finditer(row):
            lo, hi = int(m[1]), int(m[2] or m[1])
            if lo <= int(n[1:]) <= hi:
                found.append((not region.start <= k <= region.end, hi - lo, k + 1, m[0]))
    if not found:
        return ""
    _, _, line, tag = min(found)
    return f" (your {e.file}:{line} is tagged {tag})"


def _grade_python(e: Exercise, root: Path) -> Result:
    res = Result(e)
    module_name, fn_name = STEP_THROUGHS[e.algorithm]
    cases, expected = [], []
    for B, H, Nq, Nk, d, Br, Bc, causal in PY_SHAPES:
        args = _inputs(e, B, H, Nq, Nk, d, causal)
        cases.append({"args": args, "causal": causal, "Br": Br, "Bc": Bc})
        expected.append(trace_mod.record(getattr(solution, fn_name)(*args.values(), causal,
                                                                    Br=Br, Bc=Bc))[0])
    run = isolate.python_steps(root, module_name, fn_name, cases)
    if "error" in run:
        res.output = run["error"] + (f" ({run['where']})" if run.get("where") else "")
        return res
    passed, notes = 0, []
    for (B, H, Nq, Nk, d, Br, Bc, causal), want, got in zip(PY_SHAPES, expected, run["cases"]):
        shape = f"Nq={Nq}, Nk={Nk}, d={d}, Br={Br}, Bc={Bc}{', causal' if causal else ''}"
        if got["status"] == "not implemented":
            res.status, res.output = "not implemented", f"{got['message']} is not implemented yet"
            return res
        if got["status"] == "error":
            notes.append(f"[{shape}] {got['message']}"
                         + (f" ({got['where']})" if got.get("where") else ""))
            continue
        try:
            actual, _ = trace_mod.record(iter(got["steps"]), label="your step-through")
            div = trace_mod.compare(want, actual, rtol=1e-9, atol=1e-12)
        except Exception as exc:  # steps that are not the algorithm's (shapes, names, none)
            notes.append(f"[{shape}] your steps cannot be compared: {type(exc).__name__}: {exc}")
            continue
        if div is None:
            passed += 1
        else:
            notes.append(f"[{shape}] {div}{_yours(root, e, div.line)}")
    # all or nothing: a shape that a mistake cannot show (the safe max is a causal matter) must
    # not earn part of the points for the mistake
    res.score = e.points if passed == len(PY_SHAPES) else 0.0
    res.status = "passed" if passed == len(PY_SHAPES) else "failed"
    res.output = f"{passed}/{len(PY_SHAPES)} shapes match the solution tile by tile" + \
        ("" if not notes else "\nfirst problem: " + notes[0])
    return res


def _grade_kernel(e: Exercise, root: Path) -> Result:
    res = Result(e)
    student_file = root / e.file
    if not student_file.exists():
        res.output = f"{e.file} is missing"
        return res
    try:
        spliced = splice(_solution_file(e.file).read_text(), student_file.read_text(), e.id,
                         e.file)
    except ValueError as exc:
        res.output = str(exc)
        return res
    if f"TODO Exercise {e.id}" in spliced:
        res.status, res.output = "not implemented", f"Exercise {e.id} is not implemented yet"
        return res
    backend = default_backend()  # the GPU where there is one, else the CPU backend
    if backend == "gpu":
        import cupy as cp

        smem = device.device_limits(cp.cuda.Device().id)["smem_optin"]
    else:
        smem = host.LIMITS["smem_optin"]
    p = plans.plan(e.kernel, 64, e.direction, smem)
    N = 2 * max(p["Br"], p["Bc"]) + 17  # at least two tiles each way, the last one ragged
    where = "on the GPU" if backend == "gpu" else "on the CPU backend (no GPU here)"
    passed, notes = 0, []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(e.file).name
        path.write_text(spliced)
        (Path(tmp) / "common.cuh").write_text((sources.kernel_dir() / "common.cuh").read_text())
        for causal in (False, True):
            got = isolate.kernel_check(path, e.kernel, e.direction, N, causal, 3, backend,
                                       f"your Exercise {e.id} kernel")
            if got.get("kind") == "compile":
                res.output = got["error"]
                return res
            if "error" in got:
                notes.append(f"[N={N}, {'causal' if causal else 'non-causal'}] {got['error']}")
            elif got["divergence"] is None:
                passed += 1
            else:
                tag = re.search(r", ([ABFG][0-2]:L\d+), ", got["divergence"])
                notes.append(f"[N={N}, {'causal' if causal else 'non-causal'}] {got['divergence']}"
                             + (_yours(root, e, tag[1]) if tag else ""))
    res.score = e.points if passed == 2 else 0.0  # all or nothing, as the Python exercises
    res.status = "passed" if passed == 2 else "failed"
    res.output = f"{passed}/2 runs match the step-through tile by tile {where}" + \
        ("" if not notes else "\nfirst problem: " + notes[0])
    return res


def _grade_hunts(exercises, root: Path) -> list:
    answers = {}
    path = root / "answers.txt"
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            if ":" in line and not line.lstrip().startswith("#"):
                key, _, value = line.partition(":")
                m = _LINE.search(value.upper())
                answers[key.strip()] = f"{m[1]}:L{m[2]}" if m else value.strip()
    out = []
    for e in exercises:
        b = HUNT[e.hunt]
        res = Result(e)
        given = answers.get(b.hunt, "")
        if not given:
            res.status, res.output = "not implemented", f"no answer for {b.hunt} in answers.txt"
        elif given == b.line.upper():
            res.score, res.status, res.output = e.points, "passed", f"{b.hunt}: {b.line} is right"
        else:
            res.output = f"{b.hunt}: {given} is not the line this bug breaks"
        out.append(res)
    return out


def chosen(root, exercises=None) -> list:
    """The exercises `grade` scores: `exercises` if given (each must be known), else those the
    copy was handed out with (assignment.json), else all."""
    if exercises:
        unknown = [i for i in exercises if i not in EXERCISES]
        if unknown:
            raise ValueError(f"unknown exercise{'s' * (len(unknown) > 1)} {', '.join(unknown)}: "
                             f"choose from {', '.join(sorted(EXERCISES, key=_order))}")
        ids = list(dict.fromkeys(exercises))
    else:
        ids = handed_out(root) or sorted(EXERCISES, key=_order)
    return [EXERCISES[i] for i in sorted(ids, key=_order)]


def grade(root=".", exercises=None) -> Report:
    """Grade the copy at `root` (a directory with flashlab/, kernels/ and answers.txt): every
    chosen exercise gets a Result, whatever the others do."""
    root = Path(root)
    report = Report()
    picked = chosen(root, exercises)
    for e in picked:
        if e.kind == "hunt":
            continue
        try:
            r = _grade_python(e, root) if e.kind == "python" else _grade_kernel(e, root)
        except Exception as exc:  # the grader's own failure: this exercise, not the report
            r = Result(e, output=f"the grader failed on this exercise: {type(exc).__name__}: {exc}")
        report.results.append(r)
    report.results += _grade_hunts([e for e in picked if e.kind == "hunt"], root)
    report.results.sort(key=lambda r: _order(r.exercise.id))
    return report


def results_json(report: Report) -> dict:
    """The Gradescope autograder results.json format."""
    return {
        "score": report.score,
        "output": f"{report.score:g} / {report.max_score:g} points",
        "stdout_visibility": "visible",
        "tests": [{"name": f"Exercise {r.exercise.id}: {r.exercise.title}", "number": r.exercise.id,
                   "score": r.score, "max_score": r.max_score,
                   "status": "passed" if r.status == "passed" else "failed",
                   "output": f"[{r.status}] {r.output}"} for r in report.results],
    }
