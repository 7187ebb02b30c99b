"""GPU paths of the command line: bench, trace (with and without a planted bug), check, info."""
import json

import pytest

from flashlab.cli import main
from flashlab.launch.sources import kernel_dir

pytestmark = pytest.mark.gpu


def test_bench_checks_then_times_every_kernel(tmp_path, capsys):
    js, png = tmp_path / "b.json", tmp_path / "b.png"
    assert main(["bench", "--seq", "256,512", "--backward", "--causal", "--tokens", "2048",
                 "--repeat", "3", "--json", str(js), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "gpu:" in out and "compute_capability" in out
    rows = json.loads(js.read_text())["rows"]
    assert len(rows) == 2 * 3 * 2
    assert all(r["check"].startswith("ok") and r["ms"] > 0 for r in rows), rows
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_trace_reports_a_match_and_a_planted_bug(capsys):
    assert main(["trace", "--kernel", "fa2", "--seq", "200", "--causal"]) == 0
    assert "all steps match" in capsys.readouterr().out
    assert main(["trace", "--kernel", "fa1", "--seq", "600", "--inject-bug", "no-rescale"]) == 1
    out = capsys.readouterr().out
    assert "fa1 forward with bug 'no-rescale' diverges at step (i=0, j=1), A1:L12, O_i" in out
    assert main(["trace", "--kernel", "fa2", "--inject-bug", "no-rescale"]) == 2  # wrong kernel


def test_check_runs_a_user_copy_of_a_kernel(tmp_path, capsys):
    mine = tmp_path / "mine_fa2.cu"
    mine.write_text((kernel_dir() / "fa2.cu").read_text())
    assert main(["check", str(mine), "--algorithm", "fa2", "--seq", "150", "--backward"]) == 0
    out = capsys.readouterr().out
    assert "mine_fa2.cu" in out and "all steps match" in out
    broken = tmp_path / "broken_fa1.cu"
    broken.write_text((kernel_dir() / "fa1.cu").read_text().replace(
        "dV_j[c * p + x] += acc;", "dV_j[c * p + x] += 2.0f * acc;"))
    assert main(["check", str(broken), "--algorithm", "fa1", "--seq", "100", "--backward"]) == 1
    assert "B1:L8, dV~_j" in capsys.readouterr().out


def test_info_names_the_device(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "compute capability" in out and "opt-in" in out and "fa2" in out


def test_bug_hunt_names_give_nothing_away(capsys):
    assert main(["trace", "--seq", "600", "--inject-bug", "mystery-2"]) == 1
    out = capsys.readouterr().out
    bug = __import__("flashlab.course", fromlist=["BUGS"]).BUGS["wrong-l-update"]
    assert "bug hunt mystery-2" in out and bug.name not in out and bug.question not in out
    assert "diverges at step (i=0, j=1), A1:L11" in out
