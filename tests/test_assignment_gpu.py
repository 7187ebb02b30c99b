"""GPU: kernel exercises are graded tile by tile; the solution scores full marks."""
import pytest

from flashlab.course import assignment as a
from flashlab.course import grading as g
from flashlab.launch.sources import kernel_dir

pytestmark = pytest.mark.gpu


def test_solution_kernels_score_full_marks(tmp_path):
    a.make(tmp_path / "key", solution=True)
    report = g.grade(tmp_path / "key", ["2.1", "2.2", "2.3"])
    for r in report.results:
        assert r.status == "passed" and r.score == r.max_score, (r.exercise.id, r.output)


def test_a_wrong_kernel_region_gets_the_first_divergent_tile(tmp_path):
    a.make(tmp_path / "hw", exercises=["2.1", "2.3"])
    f = tmp_path / "hw/kernels/fa1.cu"
    solution = (kernel_dir() / "fa1.cu").read_text()
    wrong = [l.replace("add[r] * pv", "pv") for l in a.body(solution, "2.1")]  # forgets e^(m~_ij - m_new)
    text = f.read_text()
    r = next(r for r in a.regions(text) if r.id == "2.1")
    lines = text.splitlines()
    f.write_text("\n".join(lines[:r.hint_end] + wrong + lines[r.end:]) + "\n")
    res = {x.exercise.id: x for x in g.grade(tmp_path / "hw", ["2.1", "2.3"]).results}
    assert res["2.1"].status == "failed" and res["2.1"].score == 0
    # at j = 0 the factor is 1, so the first wrong tile is (0, 1)
    assert "your Exercise 2.1 kernel diverges at step (i=0, j=1), A1:L12, O_i" in res["2.1"].output
    assert res["2.3"].status == "not implemented"
