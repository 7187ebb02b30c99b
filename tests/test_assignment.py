"""Assignments: markers, student copies that import and compile, a grader that gives per-tile
feedback, full marks for the solution, zero for stubs, Gradescope's results.json."""
import json

import pytest

from flashlab.course import assignment as a
from flashlab.course import grading as g
from flashlab import course
from flashlab.launch import compiler, device, sources
from flashlab.cli import main


def _sources():
    from pathlib import Path

    pkg = Path(a.__file__).resolve().parents[1]  # flashlab/ (assignment.py is in course/)
    return [f for f in list(pkg.glob("**/*.py")) + list(sources.kernel_dir().glob("*.cu*"))
            if "__pycache__" not in f.parts]


def test_markers_are_balanced_and_match_the_registry():
    found = {}
    for f in _sources():
        for r in a.regions(f.read_text(), str(f)):
            assert r.id not in found, f"exercise {r.id} marked twice"
            found[r.id] = f
            assert r.hint, f"exercise {r.id} has no hint"
    coded = {i for i, e in a.EXERCISES.items() if e.kind != "hunt"}
    assert set(found) == coded
    for ex_id, f in found.items():
        assert str(f).endswith(a.EXERCISES[ex_id].file.split("/")[-1])


def test_unbalanced_markers_are_refused():
    with pytest.raises(ValueError, match="has no END EXERCISE"):
        a.regions("# BEGIN EXERCISE 9.9: x\ny = 1\n")
    with pytest.raises(ValueError, match="END EXERCISE without BEGIN"):
        a.regions("y = 1\n# END EXERCISE\n")


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    out = tmp_path_factory.mktemp("hw") / "hw"
    handed = a.make(out)
    return out, handed


def test_student_copy_imports_compiles_and_scores_zero(student):
    out, handed = student
    assert handed == sorted(a.EXERCISES, key=lambda s: tuple(map(int, s.split("."))))
    assert "Exercise 1.1" in (out / "flashlab/reference/fa1.py").read_text()
    import json

    assert json.loads((out / "assignment.json").read_text())["exercises"] == handed
    assert (out / "flashlab/data/sonnets.txt").is_file()  # the data files travel too
    for kernel in ("naive", "fa1", "fa2"):  # still compiles with the stubs in place
        compiler.nvrtc_compile(sources.user_file(out / "kernels" / f"{kernel}.cu", kernel), "sm_80",
                               kernel=kernel)
    report = g.grade(out)
    assert report.score == 0 and report.max_score == sum(e.points for e in a.EXERCISES.values())
    assert all(r.status == "not implemented" for r in report.results), \
        [(r.exercise.id, r.status, r.output) for r in report.results]
    handout = (out / "ASSIGNMENT.md").read_text()
    assert all(f"| {i} |" in handout for i in ("1.1", "2.3")) and "mystery-4" in handout
    assert "racecheck" in handout  # the race's question


@pytest.mark.cpu_kernel
def test_solution_copy_scores_full_marks_without_a_gpu(tmp_path, monkeypatch):
    # every exercise, the kernel ones on the CPU backend: the grader needs no GPU
    monkeypatch.setattr(device, "gpu_available", lambda: False)
    a.make(tmp_path / "key", solution=True)  # answers.txt holds the bug hunt's answers
    report = g.grade(tmp_path / "key")
    assert report.score == report.max_score == 102, \
        [(r.exercise.id, r.status, r.output) for r in report.results if r.score < r.max_score]
    kernels = [r for r in report.results if r.exercise.kind == "kernel"]
    assert len(kernels) == 3 and all("on the CPU backend" in r.output for r in kernels)
    # answers in lower case count too
    (tmp_path / "key/answers.txt").write_text(
        "".join(f"{b.hunt}: {b.line.lower()}\n" for b in course.BUGS.values() if b.hunt))
    assert g.grade(tmp_path / "key", ["3.1", "3.6"]).score == 4


@pytest.mark.cpu_kernel
@pytest.mark.parametrize("change,shows", [
    ("o = (l_i[r] * O_i[r * p + x] + pv) / l_new[r];", "diverges at step (i=0, j=1), A1:L12"),
    ("o = (keep[r] * O_i[r * p + x] + add[r] * V_j[(bc + 300) * p + x]) / l_new[r];",
     "out-of-bounds read of dynamic shared memory"),
])
def test_a_wrong_kernel_exercise_fails_on_the_cpu_with_its_message(tmp_path, monkeypatch,
                                                                   change, shows):
    monkeypatch.setattr(device, "gpu_available", lambda: False)
    a.make(tmp_path / "hw", exercises=["2.1"])
    f = tmp_path / "hw/kernels/fa1.cu"
    ours = (sources.kernel_dir() / "fa1.cu").read_text()
    right = "o = (keep[r] * O_i[r * p + x] + add[r] * pv) / l_new[r];"
    assert any(right in line for line in a.body(ours, "2.1"))  # the line is the student's part
    f.write_text(ours.replace(right, change))
    (r,) = g.grade(tmp_path / "hw", ["2.1"]).results
    assert r.status == "failed" and r.score == 0 and shows in r.output, r.output


def test_a_wrong_step_gets_per_tile_feedback(tmp_path):
    a.make(tmp_path / "hw", exercises=["1.3"])
    f = tmp_path / "hw/flashlab/reference/fa2.py"
    solution = (sources.kernel_dir().parent / "flashlab/reference/fa2.py").read_text()
    wrong = [l.replace("alpha[..., None] * O_tilde + P_tilde @ V_j", "O_tilde + P_tilde @ V_j")
             for l in a.body(solution, "1.3")]
    f.write_text(_put(f.read_text(), "1.3", wrong))
    (r,) = g.grade(tmp_path / "hw", ["1.3"]).results
    assert r.status == "failed" and r.score < r.max_score
    assert "your step-through diverges at step (i=0, j=1), F2:L7, O~ row 0" in r.output


def _put(text, ex_id, lines):
    lines_all = text.splitlines()
    r = next(r for r in a.regions(text) if r.id == ex_id)
    return "\n".join(lines_all[:r.hint_end] + lines + lines_all[r.end:]) + "\n"


def test_only_the_chosen_exercises_are_stubbed(tmp_path):
    a.make(tmp_path / "hw", exercises=["1.2", "2.1"])
    fa1 = (tmp_path / "hw/flashlab/reference/fa1.py").read_text()
    assert 'NotImplementedError("Exercise 1.2")' in fa1 and "Exercise 1.1\")" not in fa1
    cu = (tmp_path / "hw/kernels/fa1.cu").read_text()
    assert "TODO Exercise 2.1" in cu and "TODO Exercise 2.2" not in cu
    with pytest.raises(ValueError, match="unknown exercises"):
        a.make(tmp_path / "other", exercises=["9.9"])
    with pytest.raises(ValueError, match="not empty"):
        a.make(tmp_path / "hw")


def test_deleted_markers_are_reported(tmp_path):
    a.make(tmp_path / "hw", exercises=["2.2"])
    f = tmp_path / "hw/kernels/fa1.cu"
    f.write_text(f.read_text().replace("BEGIN EXERCISE 2.2", "BEGIN EXERCISE"))
    (r,) = g.grade(tmp_path / "hw", ["2.2"]).results
    assert "keep the marker lines" in r.output and r.score == 0


def test_cli_round_trip_writes_gradescope_json(tmp_path, capsys):
    assert main(["assignment", "make", str(tmp_path / "hw")]) == 0
    (tmp_path / "hw/answers.txt").write_text("mystery-1: A1:L12\nmystery-2: A1:L9\n")
    out_json = tmp_path / "results.json"
    assert main(["grade", str(tmp_path / "hw"), "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "total: 2 / " in text
    res = json.loads(out_json.read_text())
    assert res["score"] == 2 and len(res["tests"]) == len(a.EXERCISES)
    t = {x["number"]: x for x in res["tests"]}
    assert t["3.1"]["status"] == "passed" and t["3.2"]["status"] == "failed"
    assert {"name", "score", "max_score", "output", "status"} <= set(t["1.1"])
    assert main(["grade", str(tmp_path / "nothing")]) == 1  # not a student copy: one line, exit 1
