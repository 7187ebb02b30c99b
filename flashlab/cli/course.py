"""`flashlab assignment make` (a student copy with exercise regions stubbed) and `flashlab grade`
(per-exercise scores with per-tile feedback; Gradescope's results.json)."""
from __future__ import annotations

from pathlib import Path

from tabulate import tabulate


def _cmd_assignment_make(args) -> int:
    from ..course import assignment

    handed = assignment.make(args.outdir, args.exercises, force=args.force, solution=args.solution)
    kind = "solution copy" if args.solution else "student copy"
    print(f"{kind} written to {args.outdir}: exercises {', '.join(handed)}")
    print(f"hand out {args.outdir}/ASSIGNMENT.md; grade with: flashlab grade {args.outdir}")
    if args.gradescope:
        from ..course import gradescope

        gradescope.write_zip(args.outdir, args.gradescope)
        print(f"Gradescope autograder written to {args.gradescope} (upload it as the "
              "assignment's autograder; students submit their copy)")
    return 0


def _own_package_inside(root) -> bool:
    """True when the flashlab running is the graded copy's own (`cd COPY && python -m flashlab
    grade .`): the grader must not be the student's code."""
    import flashlab

    try:
        return Path(flashlab.__file__).resolve().parent.is_relative_to(Path(root).resolve())
    except OSError:
        return False


def _regrade_isolated(args) -> int:
    """Run this grade again with `python -I`, which leaves the working directory off sys.path,
    so the installed flashlab grades; refuse when that is the copy itself."""
    import os
    import subprocess
    import sys

    if os.environ.get("FLASHLAB_GRADER_ISOLATED"):
        raise EnvironmentError("flashlab grade: the only flashlab here is the copy being graded; "
                               "install flashlab (pip install flashlab) and grade with it")
    argv = ["grade", args.dir] + (["--exercises", ",".join(args.exercises)] if args.exercises
                                  else []) + (["--json", args.json] if args.json else [])
    env = {**os.environ, "FLASHLAB_GRADER_ISOLATED": "1"}
    return subprocess.run([sys.executable, "-I", "-m", "flashlab", *argv], env=env).returncode


def _cmd_grade(args) -> int:
    import json

    from ..course import grading

    if _own_package_inside(args.dir):
        return _regrade_isolated(args)
    root = Path(args.dir)
    if not (root / "flashlab").is_dir() and not (root / "kernels").is_dir():
        msg = f"{args.dir} is not a student copy: it holds neither flashlab/ nor kernels/"
        if args.json:  # Gradescope shows this instead of no score at all
            with open(args.json, "w") as f:
                json.dump({"score": 0, "output": msg, "stdout_visibility": "visible",
                           "tests": []}, f, indent=1)
        raise EnvironmentError(f"flashlab grade: {msg}")
    try:
        report = grading.grade(args.dir, args.exercises)
    except ValueError as e:  # an unknown exercise
        from .common import UsageError

        raise UsageError(f"flashlab grade: {e}") from None
    rows = [[r.exercise.id, f"{r.score:g} / {r.max_score:g}", r.status, r.output.splitlines()[0]]
            for r in report.results]
    print(tabulate(rows, headers=["exercise", "score", "status", "result"], disable_numparse=True))
    print(f"total: {report.score:g} / {report.max_score:g}")
    for r in report.results:
        if r.status == "failed" and "\n" in r.output:
            print(f"\nExercise {r.exercise.id}: " + r.output.split("\n", 1)[1])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(grading.results_json(report), f, indent=1)
        print(f"Gradescope results written to {args.json}")
    return 0
