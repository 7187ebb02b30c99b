"""Course assignments: exercise regions, student copies, an autograder with per-tile feedback.

Instructors mark exercise regions in the solution sources (the references and the kernels): a
line `# BEGIN EXERCISE 1.1: hint for the student` (the hint may go on over the comment lines
right after it), the solution, then a line `# END EXERCISE`; `//` instead of `#` in .cu files.
docs/ASSIGNMENTS.md shows one. `make(outdir)` writes a student copy of flashlab/ and kernels/
in which each region's body becomes a stub (Python: `raise NotImplementedError("Exercise 1.1")`;
CUDA: a TODO comment, placed so the kernel still compiles) and keeps the markers, so the grader
can find the student's code again, and records what it handed out (assignment.json).
flashlab/course/grading.py's `grade(dir)` scores those exercises:

* Python exercises run the student's step-through on a few shapes and compare its trace with the
  solution's: feedback names the first divergent tile (step, algorithm line, row, column).
* Kernel exercises splice the student's region into the solution kernel (so each exercise is
  graded alone), compile it, and compare its trace with the step-through: on a GPU, or without
  one on the CPU backend (flashlab.cpu), where a race, a barrier divergence or an out-of-bounds
  access fails the run with its message.
* Bug-hunt exercises read answers.txt (`mystery-3: A1:L9`): which algorithm line each planted
  bug breaks, found with `flashlab check kernels/mystery/mystery-N.cu` (the copy carries the
  mystery kernels already patched, and no catalogue; the key is written beside the copy).

grading.py's `results_json(report)` gives the Gradescope autograder format.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..launch import sources
from .bugs import BUGS, HUNT

_BEGIN = re.compile(r"^(?P<indent>[ \t]*)(?P<c>#|//) BEGIN EXERCISE (?P<id>\d+\.\d+): ?(?P<hint>.*)$")
_END = re.compile(r"^[ \t]*(#|//) END EXERCISE\s*$")
_LINE = re.compile(r"\b([ABFG][0-2])\s*:?\s*L\s*(\d+)\b")  # "A1:L12", "a1 l12", ...


@dataclass(frozen=True)
class Exercise:
    id: str
    title: str
    file: str  # relative to the copy's root
    kind: str  # "python", "kernel" or "hunt"
    points: float
    kernel: str = ""  # kernel exercises: fa1 / fa2
    direction: str = "forward"
    algorithm: str = ""  # python exercises: A1 / B1 / F2 / G2
    hunt: str = ""  # bug-hunt exercises: the planted bug's neutral name (mystery-N)


EXERCISES = {e.id: e for e in [
    Exercise("1.1", "A1 forward step (A1:L9-L12) in the step-through", "flashlab/reference/fa1.py",
             "python", 10, algorithm="A1"),
    Exercise("1.2", "B1 backward step (B1:L6-L13) in the step-through", "flashlab/reference/fa1.py",
             "python", 10, algorithm="B1"),
    Exercise("1.3", "F2 forward step (F2:L5-L7) in the step-through", "flashlab/reference/fa2.py",
             "python", 10, algorithm="F2"),
    Exercise("1.4", "G2 backward step (G2:L5-L8) in the step-through", "flashlab/reference/fa2.py",
             "python", 10, algorithm="G2"),
    Exercise("2.1", "A1:L12, the O_i update, in the fa1 kernel", "kernels/fa1.cu", "kernel", 15,
             kernel="fa1"),
    Exercise("2.2", "A1:L10-L11, the row statistics, in the fa1 kernel", "kernels/fa1.cu",
             "kernel", 15, kernel="fa1"),
    Exercise("2.3", "F2:L6-L7, the online softmax in registers, in the fa2 kernel",
             "kernels/fa2.cu", "kernel", 20, kernel="fa2"),
]}
for _bug in sorted((b for b in BUGS.values() if b.hunt), key=lambda b: b.hunt):
    _n = _bug.hunt.split("-")[1]
    EXERCISES[f"3.{_n}"] = Exercise(
        f"3.{_n}", f"bug hunt {_bug.hunt}: which algorithm line does it break?", "answers.txt",
        "hunt", 2, kernel=_bug.kernel, direction=_bug.direction, hunt=_bug.hunt)

STEP_THROUGHS = {"A1": ("fa1", "fa1_forward_steps"), "B1": ("fa1", "fa1_backward_steps"),
                 "F2": ("fa2", "fa2_forward_steps"), "G2": ("fa2", "fa2_backward_steps")}
# (B, H, Nq, Nk, d, Br, Bc, causal): ragged tiles, Nq != Nk both ways, causal and not, at least
# two tiles each way (a missing rescale needs a second tile to show; a fully masked tile row, the
# safe max's case, needs causal with Nq < Nk)
PY_SHAPES = [(1, 2, 13, 11, 5, 4, 3, False), (2, 1, 20, 20, 8, 8, 8, True),
             (1, 1, 17, 30, 4, 3, 5, True), (1, 2, 30, 9, 6, 7, 4, False)]


# ----------------------------------------------------------------------------- regions

@dataclass
class Region:
    id: str
    hint: str
    start: int  # index of the BEGIN line
    end: int  # index of the END line
    indent: str
    comment: str
    hint_end: int = -1  # the first line after the hint's comment lines


def regions(text: str, where: str = "") -> list[Region]:
    """The exercise regions of a source, in order. Raises ValueError on unbalanced markers."""
    lines = text.splitlines()
    out, open_ = [], None
    for n, line in enumerate(lines):
        m = _BEGIN.match(line)
        if m:
            if open_ is not None:
                raise ValueError(f"{where}:{n + 1}: BEGIN EXERCISE {m['id']} inside exercise {open_.id}")
            hint = [m["hint"].strip()]
            k = n + 1
            while k < len(lines) and lines[k].startswith(m["indent"] + m["c"] + " ") and \
                    not _END.match(lines[k]) and "TODO Exercise" not in lines[k]:
                hint.append(lines[k].strip()[len(m["c"]):].strip())
                k += 1
            open_ = Region(m["id"], " ".join(h for h in hint if h), n, -1, m["indent"], m["c"], k)
        elif _END.match(line):
            if open_ is None:
                raise ValueError(f"{where}:{n + 1}: END EXERCISE without BEGIN")
            open_.end = n
            out.append(open_)
            open_ = None
    if open_ is not None:
        raise ValueError(f"{where}: exercise {open_.id} has no END EXERCISE")
    return out


def stub(text: str, keep=lambda ex_id: False, where: str = "") -> str:
    """Replace the body of every region (but those `keep` says to keep) by a stub."""
    lines = text.splitlines()
    out, last = [], 0
    for r in regions(text, where):
        if keep(r.id):
            continue
        out += lines[last:r.hint_end]
        if r.comment == "#":
            out.append(f'{r.indent}raise NotImplementedError("Exercise {r.id}")')
        else:
            out.append(f"{r.indent}// TODO Exercise {r.id}: your code here")
        out.append(lines[r.end])
        last = r.end + 1
    out += lines[last:]
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def body(text: str, ex_id: str, where: str = "") -> list[str]:
    """The lines of region `ex_id` between its hint and its END line."""
    try:
        found = regions(text, where)
    except ValueError as exc:
        raise ValueError(f"{exc}: keep the marker lines as they were handed out") from None
    for r in found:
        if r.id == ex_id:
            return text.splitlines()[r.hint_end:r.end]
    raise ValueError(f"exercise {ex_id}: its BEGIN/END EXERCISE lines are not in {where}; "
                     "keep the marker lines around your code")


def splice(solution: str, student: str, ex_id: str, where: str = "") -> str:
    """The solution source with region `ex_id`'s body taken from the student's source."""
    mine = body(student, ex_id, where)
    lines = solution.splitlines()
    r = next(r for r in regions(solution) if r.id == ex_id)
    return "\n".join(lines[:r.hint_end] + mine + lines[r.end:]) + "\n"


def _package_dir() -> Path:
    """flashlab/, the package this module is part of (flashlab/course/assignment.py)."""
    return Path(__file__).resolve().parents[1]


def _solution_file(rel: str) -> Path:
    """The solution of a copy's file `rel` ("flashlab/reference/fa1.py", "kernels/fa1.cu")."""
    if rel.startswith("kernels/"):
        return sources.kernel_dir() / rel.split("/", 1)[1]
    return _package_dir().parent / rel


# ----------------------------------------------------------------------------- make

def make(outdir, exercises=None, force=False, solution=False) -> list[str]:
    """Write a student copy into `outdir`; returns the ids of the exercises handed out.

    exercises: ids to stub (default all); solution=True stubs none (to check the grader).
    """
    outdir = Path(outdir)
    chosen = set() if solution else (set(exercises) if exercises else None)
    unknown = (chosen or set()) - set(EXERCISES)
    if unknown:
        raise ValueError(f"unknown exercises {sorted(unknown)}; choose from {sorted(EXERCISES)}")
    if outdir.exists() and any(outdir.iterdir()) and not force:
        raise ValueError(f"{outdir} is not empty; pass --force to overwrite it")
    pkg = _package_dir()
    stubbed = []
    for src_root, dst_root, pattern in ((pkg, outdir / "flashlab", "**/*"),
                                        (sources.kernel_dir(), outdir / "kernels", "*.cu*")):
        for f in sorted(src_root.glob(pattern)):
            if "__pycache__" in f.parts or not f.is_file() or f.suffix in (".pyc", ".so"):
                continue
            rel = f.relative_to(src_root)
            if rel.as_posix() == "course/bugs.py" and not solution:
                text = _NO_CATALOGUE  # the planted bugs stay with the instructor
            else:
                text = f.read_text()
            if "BEGIN EXERCISE" in text:
                keep = (lambda i: chosen is not None and i not in chosen)
                stubbed += [r.id for r in regions(text, str(rel)) if not keep(r.id)]
                text = stub(text, keep, str(rel))
            dst = dst_root / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(text)
    hunts = [e for e in EXERCISES.values()
             if e.kind == "hunt" and (chosen is None or solution or e.id in chosen)]
    for e in hunts:  # each mystery is a whole kernel with its bug already planted
        b = HUNT[e.hunt]
        mystery = outdir / "kernels" / "mystery" / f"{b.hunt}.cu"
        mystery.parent.mkdir(parents=True, exist_ok=True)
        text = (sources.kernel_dir() / f"{b.kernel}.cu").read_text()
        if text.count(b.old) != 1:
            raise RuntimeError(f"bug {b.name}: its text is not in kernels/{b.kernel}.cu once")
        mystery.write_text(text.replace(b.old, b.new))
    (outdir / "answers.txt").write_text(
        "# Bug hunt: for each mystery kernel, the algorithm line its bug breaks (e.g. A1:L12).\n"
        "# ASSIGNMENT.md gives the command that runs each one against its step-through.\n"
        # the solution copy holds the answers too: it must score full marks (the grader's check)
        + "".join(f"{e.hunt}: {HUNT[e.hunt].line if solution else ''}\n" for e in hunts))
    if hunts and not solution:  # the key, beside the copy and not in it
        key = outdir.parent / f"{outdir.name}-answer-key.txt"
        key.write_text("".join(f"{e.hunt}: {HUNT[e.hunt].line}  ({HUNT[e.hunt].name})\n"
                               for e in hunts))
    (outdir / "ASSIGNMENT.md").write_text(_handout(sorted(set(stubbed)), hunts))
    handed = sorted(set(stubbed)) + [e.id for e in hunts]
    # what was handed out: `flashlab grade` scores these and no other (the maximum is their sum)
    graded = sorted(EXERCISES, key=_order) if solution else handed
    (outdir / MANIFEST).write_text(json.dumps({"exercises": graded}, indent=1) + "\n")
    return handed


MANIFEST = "assignment.json"


def _order(ex_id: str):
    return tuple(int(x) for x in ex_id.split("."))


def handed_out(root) -> list[str] | None:
    """The exercises a copy was handed out with (its assignment.json), or None for a copy
    made before copies recorded them."""
    path = Path(root) / MANIFEST
    if not path.exists():
        return None
    ids = json.loads(path.read_text()).get("exercises", [])
    return [i for i in ids if i in EXERCISES]


def hunt_command(b) -> str:
    """The command that shows planted bug `b` from the copy's mystery kernel (its pass, its
    mask, tiles enough to see it)."""
    flags = (" --backward" if b.direction == "backward" else "") + \
            (" --causal" if "causal" in b.name else "")
    return f"flashlab check kernels/mystery/{b.hunt}.cu --algorithm {b.kernel}{flags} --seq 600"


_NO_CATALOGUE = '''"""The planted bugs stay with the instructor: this copy's bug hunt is kernels/mystery/*.cu,
each a whole kernel with its bug already in it (run them with `flashlab check`)."""
BUGS: dict = {}
HUNT: dict = {}


class Bug:
    pass


def find(name):
    raise ValueError(f"no planted bugs in a student copy ({name!r}); see kernels/mystery/")


def patched(*args, **kwargs):
    raise ValueError("no planted bugs in a student copy; see kernels/mystery/")
'''


def _handout(stubbed, hunts) -> str:
    lines = ["# flashlab assignment", "",
             "Fill in each exercise between its `BEGIN EXERCISE` and `END EXERCISE` lines (keep those "
             "lines). Grade yourself with `flashlab grade .` from this directory; kernel exercises "
             "run on a CUDA GPU, or without one on flashlab's CPU backend (a C++ compiler).", "", "| exercise | points | file | what |", "|---|---|---|---|"]
    for ex_id in stubbed:
        e = EXERCISES[ex_id]
        lines.append(f"| {e.id} | {e.points:g} | `{e.file}` | {e.title} |")
    if hunts:
        lines += ["", "## Bug hunt", "",
                  "Each mystery (kernels/mystery/mystery-N.cu) is a whole kernel with one planted bug. "
                  "Run it against its step-through with the command given, find the algorithm line "
                  "its bug breaks, and write it in answers.txt as `mystery-N: A1:L12`.", ""]
        for e in hunts:
            b = HUNT[e.hunt]
            cause = (" What kind of bug makes the result depend on the order the threads run "
                     "in? (On a GPU, run it several times and confirm with `compute-sanitizer "
                     "--tool racecheck`; the CPU backend runs two orders and says where they "
                     "differ.)" if b.race else "")
            lines.append(f"- {e.id} ({e.points:g} points) `{hunt_command(b)}`: the {b.kernel} "
                         f"{b.direction} pass is wrong "
                         f"somewhere. At which step does it first diverge, and which line of the "
                         f"algorithm is broken?{cause}")
    return "\n".join(lines) + "\n"


