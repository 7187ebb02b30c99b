"""The autograder can be trusted: student code runs in child processes and never in the
grader's, a broken file costs only its exercise (and results.json is always written), a copy
is graded on what it was handed out, and every mutant (a mistake students make) scores 0."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flashlab.cli import main
from flashlab.course import assignment as a
from flashlab.course import grading as g
from flashlab.launch import device

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = {"flashlab/reference/fa1.py": ROOT / "flashlab/reference/fa1.py",
            "flashlab/reference/fa2.py": ROOT / "flashlab/reference/fa2.py"}

# exercise -> [(what students get wrong, old text, new text)], each a change of the solution's
# region that must score 0 on its exercise
MUTANTS = {
    "1.1": [("l without its rescale", "l_new = alpha * l_i + beta * l_tilde_ij",
             "l_new = l_i + beta * l_tilde_ij"),
            ("O without both factors", "O_i = ((l_i * alpha)[..., None] * O_i",
             "O_i = ((l_i)[..., None] * O_i"),
            ("the tile max for the running max", "m_new = np.maximum(m_i, m_tilde_ij)",
             "m_new = m_tilde_ij"),
            ("no safe max", "P_tilde_ij = np.exp(S_ij - safe(m_tilde_ij)[..., None])",
             "P_tilde_ij = np.exp(S_ij - m_tilde_ij[..., None])"),
            ("beta dropped from O", "+ beta[..., None] * (P_tilde_ij @ V_j))",
             "+ (P_tilde_ij @ V_j))")],
    "1.2": [("tau forgotten in dQ", "dQ_i = dQ_i + tau * (dS_ij @ K_j)", "dQ_i = dQ_i + (dS_ij @ K_j)"),
            ("tau forgotten in dK", "dK_tilde_j = dK_tilde_j + tau * (", "dK_tilde_j = dK_tilde_j + ("),
            ("D from the wrong product", "D_i = (dO_i * O_i).sum(axis=-1)",
             "D_i = (dO_i * dO_i).sum(axis=-1)"),
            ("P transposed wrong", "np.swapaxes(P_ij, -1, -2) @ dO_i", "P_ij[..., :, :] @ dO_i[..., :P_ij.shape[-1], :]")],
    "1.3": [("O~ not rescaled", "O_tilde = alpha[..., None] * O_tilde + P_tilde @ V_j",
             "O_tilde = O_tilde + P_tilde @ V_j"),
            ("l not rescaled", "l_i = alpha * l_i + P_tilde.sum(axis=-1)",
             "l_i = l_i + P_tilde.sum(axis=-1)"),
            ("the tile max for the running max", "m_new = np.maximum(m_i, S_ij.max(axis=-1))",
             "m_new = S_ij.max(axis=-1)"),
            ("m not carried", "            m_i = m_new", "            pass")],
    "1.4": [("tau forgotten in dQ", "dQ_ij = tau * (dS_ij @ K_j)", "dQ_ij = (dS_ij @ K_j)"),
            ("tau forgotten in dK", "dK_tilde = dK_tilde + tau * (", "dK_tilde = dK_tilde + ("),
            ("dS without D", "dS_ij = P_ij * (dP_ij - D_i[..., None])", "dS_ij = P_ij * dP_ij")],
}


def _copy_with(tmp_path, ex_id, old, new):
    """A solution copy of exercise ex_id's file with one change in its region."""
    out = tmp_path / "copy"
    a.make(out, exercises=[ex_id])
    e = a.EXERCISES[ex_id]
    text = SOLUTION[e.file].read_text()
    region = "\n".join(a.body(text, ex_id, e.file))
    assert region.count(old) == 1, (ex_id, old)
    (out / e.file).write_text(text.replace(region, region.replace(old, new)))
    return out


@pytest.mark.parametrize("ex_id,what,old,new", [(i, *m) for i, ms in MUTANTS.items() for m in ms],
                         ids=lambda x: x if isinstance(x, str) and len(x) < 40 else None)
def test_every_mutant_scores_zero(tmp_path, ex_id, what, old, new):
    (r,) = g.grade(_copy_with(tmp_path, ex_id, old, new), [ex_id]).results
    assert r.score == 0, f"{ex_id} with {what} scored {r.score}: {r.output}"


def test_the_grading_shapes_have_two_tiles_each_way():
    for B, H, Nq, Nk, d, Br, Bc, causal in a.PY_SHAPES:
        assert -(-Nq // Br) >= 2 and -(-Nk // Bc) >= 2, (Nq, Nk, Br, Bc)


def test_a_syntax_error_costs_only_its_exercises_and_results_json_is_written(tmp_path):
    out = tmp_path / "hw"
    a.make(out, solution=True)
    f = out / "flashlab/reference/fa2.py"
    f.write_text(f.read_text().replace("def fa2_forward_steps(", "def fa2_forward_steps((", 1))
    res = tmp_path / "results.json"
    assert main(["grade", str(out), "--json", str(res)]) == 0
    tests = {t["number"]: t for t in json.loads(res.read_text())["tests"]}
    assert tests["1.3"]["score"] == tests["1.4"]["score"] == 0
    assert "SyntaxError" in tests["1.3"]["output"] and "flashlab/reference/fa2.py:" in tests["1.3"]["output"]
    assert tests["1.1"]["score"] == 10 and tests["3.1"]["score"] == 2


def test_a_monkeypatch_in_the_students_package_changes_no_score(tmp_path):
    out = _copy_with(tmp_path, "1.1", *MUTANTS["1.1"][0][1:])
    init = out / "flashlab/__init__.py"
    init.write_text(init.read_text() + "\nimport flashlab, flashlab.trace\n"
                    "flashlab.trace.compare = lambda *a, **k: None\n")
    (r,) = g.grade(out, ["1.1"]).results
    assert r.score == 0 and "diverges at step" in r.output, r.output
    assert "(your flashlab/reference/fa1.py:" in r.output  # the student's own line of it


def test_grading_from_inside_the_copy_uses_the_installed_grader(tmp_path):
    out = _copy_with(tmp_path, "1.1", *MUTANTS["1.1"][0][1:])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-m", "flashlab", "grade", ".", "--exercises", "1.1"],
                       cwd=out, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "0 / 10" in r.stdout and "diverges at step" in r.stdout, r.stdout


def test_a_hang_is_that_exercise_s_zero(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHLAB_GRADE_TIMEOUT", "5")
    out = _copy_with(tmp_path, "1.3", "            m_i = m_new",
                     "            m_i = m_new\n            while True: pass")
    report = g.grade(out, ["1.3", "3.1"])
    r = {x.exercise.id: x for x in report.results}
    assert r["1.3"].score == 0 and "5 s limit" in r["1.3"].output


def test_only_what_was_handed_out_is_graded(tmp_path, capsys):
    out = tmp_path / "hw"
    a.make(out, exercises=["1.1", "3.3"])
    report = g.grade(out)
    assert [r.exercise.id for r in report.results] == ["1.1", "3.3"]
    assert report.max_score == 12 and report.score == 0
    assert main(["grade", str(out), "--exercises", "9.9"]) == 2
    assert "unknown exercise 9.9" in capsys.readouterr().err
    assert "--causal" in next(line for line in (out / "ASSIGNMENT.md").read_text().splitlines()
                              if "mystery-3" in line)


@pytest.mark.cpu_kernel
def test_a_kernel_exercise_that_races_scores_zero_with_the_race(tmp_path, monkeypatch):
    monkeypatch.setattr(device, "gpu_available", lambda: False)
    out = tmp_path / "hw"
    a.make(out, exercises=["2.2"])
    text = (ROOT / "kernels/fa1.cu").read_text()
    # the student's region writes S_ij (other threads' rows) with no barrier after
    right = "S_ij[r * Bc + c] = pv;"
    (out / "kernels/fa1.cu").write_text(text.replace(right, "S_ij[((r + 1) % br) * Bc + c] = pv;"))
    (r,) = g.grade(out, ["2.2"]).results
    assert r.score == 0 and ("race" in r.output or "diverges" in r.output), r.output


@pytest.mark.cpu_kernel
def test_the_bug_hunt_copy_carries_the_mysteries_not_the_catalogue(tmp_path, capsys, monkeypatch):
    from flashlab.course import BUGS
    from flashlab.launch import sources

    monkeypatch.setattr(device, "gpu_available", lambda: False)
    monkeypatch.setattr(sources, "SOURCE_RECHECK_S", 0.0)
    out = tmp_path / "hw"
    a.make(out)
    copy_text = "\n".join(p.read_text(errors="replace") for p in (out / "flashlab").rglob("*.py"))
    # no catalogue: neither a bug's question nor its replacement text, nor a mystery -> bug map
    assert "BUGS: dict = {}" in (out / "flashlab/course/bugs.py").read_text()
    assert not any(b.question[:40] in copy_text or b.new in copy_text for b in BUGS.values())
    assert not any(f'"{b.hunt}"' in copy_text for b in BUGS.values() if b.hunt)
    key = (tmp_path / "hw-answer-key.txt").read_text()
    handout = (out / "ASSIGNMENT.md").read_text()
    for b in (b for b in BUGS.values() if b.hunt):
        assert f"{b.hunt}: {b.line}" in key and b.line not in handout.split(b.hunt, 1)[1][:80]
        command = next(line for line in handout.splitlines() if f"{b.hunt}.cu" in line)
        argv = command.split("`")[1].split()[1:]
        assert argv[0] == "check"
        monkeypatch.chdir(out)
        assert main(argv + ["--seq", "200"]) == 1, (b.hunt, capsys.readouterr())
        said = "".join(capsys.readouterr())
        assert ("diverges at step" in said) or (b.race and "race" in said), (b.hunt, said)


@pytest.mark.cpu_kernel
def test_the_gradescope_zip_grades_as_gradescope_would(tmp_path):
    """Unpack the autograder as Gradescope does, set it up in a fresh venv, and grade a solution
    submission with no GPU, on one core: full marks, within 768 MB."""
    import resource
    import zipfile

    zip_path = tmp_path / "autograder.zip"
    assert main(["assignment", "make", str(tmp_path / "hw"), "--exercises", "1.1,2.1,3.3",
                 "--gradescope", str(zip_path)]) == 0
    root = tmp_path / "autograder"
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(root / "source")
        for info in z.infolist():  # zipfile drops the mode bits; Gradescope keeps them
            os.chmod(root / "source" / info.filename, (info.external_attr >> 16) or 0o644)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(AUTOGRADER_ROOT=str(root), FLASHLAB_CACHE_DIR=str(tmp_path / "cache"),
               CUDA_VISIBLE_DEVICES="")
    r = subprocess.run(["bash", str(root / "source/setup.sh")], env=env, capture_output=True,
                       text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    a.make(root / "submission", solution=True)  # a student who got everything right

    def one_core():
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    r = subprocess.run(["bash", str(root / "source/run_autograder")], env=env, capture_output=True,
                       text=True, timeout=600, preexec_fn=one_core)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads((root / "results/results.json").read_text())
    assert [t["number"] for t in res["tests"]] == ["1.1", "2.1", "3.3"]  # the handed-out ones
    assert res["score"] == 10 + 15 + 2, res
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    assert peak_mb < 768, f"a grading process peaked at {peak_mb:.0f} MB"
