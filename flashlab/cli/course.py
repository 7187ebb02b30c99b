"""`flashlab assignment make` (a student copy with exercise regions stubbed) and `flashlab grade`
(per-exercise scores with per-tile feedback; Gradescope's results.json)."""
from __future__ import annotations

from tabulate import tabulate


def _cmd_assignment_make(args) -> int:
    from ..course import assignment

    handed = assignment.make(args.outdir, args.exercises, force=args.force, solution=args.solution)
    kind = "solution copy" if args.solution else "student copy"
    print(f"{kind} written to {args.outdir}: exercises {', '.join(handed)}")
    print(f"hand out {args.outdir}/ASSIGNMENT.md; grade with: flashlab grade {args.outdir}")
    return 0


def _cmd_grade(args) -> int:
    import json

    from ..course import assignment

    report = assignment.grade(args.dir, args.exercises)
    rows = [[r.exercise.id, f"{r.score:g} / {r.max_score:g}", r.status, r.output.splitlines()[0]]
            for r in report.results]
    print(tabulate(rows, headers=["exercise", "score", "status", "result"], disable_numparse=True))
    print(f"total: {report.score:g} / {report.max_score:g}")
    for r in report.results:
        if r.status == "failed" and "\n" in r.output:
            print(f"\nExercise {r.exercise.id}: " + r.output.split("\n", 1)[1])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(assignment.results_json(report), f, indent=1)
        print(f"Gradescope results written to {args.json}")
    return 0
