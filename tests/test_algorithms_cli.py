"""`flashlab algorithms`: the listings the code cites, printed from flashlab/algorithms.py, which
holds docs/ALGORITHMS.md's text word for word."""
import re
from pathlib import Path

import pytest

from flashlab import algorithms
from flashlab.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "ALGORITHMS.md"


def _doc_sections():
    """{label: section text without its '## '} for the five algorithm sections of the doc."""
    parts = re.split(r"(?m)^## ", DOC.read_text())[1:]
    return {p.split()[0]: p.rstrip("\n") for p in parts if p.split()[0] in algorithms.ALGORITHMS}


def test_the_doc_and_algorithms_py_hold_the_same_listings_line_for_line():
    doc = _doc_sections()
    assert list(doc) == list(algorithms.ALGORITHMS)
    for label in algorithms.ALGORITHMS:
        assert doc[label].splitlines() == algorithms.LISTINGS[label].splitlines(), label


def test_lines_are_read_off_the_listings():
    # every labelled line but the bare "end for" ones, its text with the spacing collapsed
    assert algorithms.LINES["A1:L12"].startswith("O_i <- diag(l_new)^-1 (diag(l_i)")
    assert "A1:L14" not in algorithms.LINES and "A1:L16" in algorithms.LINES
    for label, text in algorithms.LINES.items():
        line = algorithms.listing_lines(label.split(":")[0])[label]
        assert " ".join(line.split()[1:]) == text


@pytest.mark.parametrize("label", algorithms.ALGORITHMS)
def test_each_label_prints_its_listing(label, capsys):
    assert main(["algorithms", label]) == 0
    out = capsys.readouterr().out
    assert out.rstrip("\n") == algorithms.LISTINGS[label]
    assert f"{label}:L1 " in out or f"{label}:L0 " in out


def test_no_label_prints_all_five(capsys):
    assert main(["algorithms"]) == 0
    out = capsys.readouterr().out
    for label in algorithms.ALGORITHMS:
        assert algorithms.LISTINGS[label] in out


def test_line_prints_that_one_line(capsys):
    assert main(["algorithms", "A1", "--line", "L12"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert out.startswith("A1:L12 ") and "O_i <- diag(l_new)^-1" in out
    for argv in (["algorithms", "a1", "--line", "12"], ["algorithms", "--line", "A1:L12"]):
        assert main(argv) == 0
        assert capsys.readouterr().out == out
    assert main(["algorithms", "F2", "--line", "L8"]) == 0
    assert capsys.readouterr().out.split() == ["F2:L8", "end", "for"]


@pytest.mark.parametrize("argv, says", [
    (["algorithms", "X9"], "unknown algorithm 'X9': choose A0, A1, B1, F2, G2"),
    (["algorithms", "A1", "--line", "L99"], "A1 has no line 'L99': its lines are L1-L16"),
    (["algorithms", "--line", "L3"], "--line L3 needs an algorithm (A0, A1, B1, F2, G2)"),
])
def test_mistakes_are_one_line_and_exit_2(argv, says, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: flashlab algorithms: ") and says in captured.err
    assert len(captured.err.strip().splitlines()) == 1
