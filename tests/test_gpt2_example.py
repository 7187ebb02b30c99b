"""examples/gpt2_attention.py on the CPU (where PyTorch is installed): the smoke configuration
from its docstring, one variant after another and interleaved, which must train the same
curves (fp32 on the CPU is deterministic) and report every variant."""
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SMOKE = ["--device", "cpu", "--attention", "sdpa-math,sdpa", "--layers", "2", "--heads", "2",
         "--width", "64", "--seq", "64", "--batch", "2", "--steps", "5", "--warmup", "1",
         "--vocab", "256"]


@pytest.fixture
def example(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    sys.modules.pop("gpt2_attention", None)
    import gpt2_attention

    return gpt2_attention


def test_interleaved_training_gives_the_curves_of_one_variant_after_another(example, tmp_path):
    runs = {}
    for k in (0, 2):
        out = tmp_path / f"k{k}"
        assert example.main(SMOKE + ["--interleave", str(k), "--out", str(out)]) == 0
        runs[k] = json.loads((out / "gpt2.json").read_text())["results"]
    for a, b in zip(runs[0], runs[2]):
        assert a["variant"] == b["variant"] and a["ok"] and b["ok"]
        assert a["losses"] == b["losses"] and len(b["step_ms"]) == 5
        assert b["peak_gib"] is None and b["attention_ms"] > 0
    assert "interleaved 2 steps at a time" in (tmp_path / "k2" / "gpt2.md").read_text()


def test_a_negative_interleave_is_refused(example):
    with pytest.raises(SystemExit):
        example.parse_args(SMOKE + ["--interleave", "-1"])


def test_a_variant_named_twice_measures_the_noise_floor(example, tmp_path):
    # on the CPU fp32 repeats exactly: the floor is 0, so --tol is the bound
    out = tmp_path / "rep"
    assert example.main(SMOKE[:3] + ["sdpa-math,sdpa,sdpa-math"] + SMOKE[4:] +
                        ["--interleave", "2", "--out", str(out)]) == 0
    results = json.loads((out / "gpt2.json").read_text())["results"]
    assert [r["variant"] for r in results] == ["sdpa-math", "sdpa", "sdpa-math#2"]
    assert results[2]["losses"] == results[0]["losses"]
    assert all(r["noise_floor"] == 0.0 and r["match_bound"] == 0.05 for r in results)
    assert "one implementation against itself: 0.0000" in (out / "gpt2.md").read_text()


def test_the_noise_floor_widens_the_bound_only_past_tol(example):
    base = [2.0 + 0.01 * i for i in range(30)]
    runs = [{"variant": "a", "ok": True, "losses": base, "ms_median": 1.0},
            {"variant": "b", "ok": True, "losses": [x + 0.08 for x in base], "ms_median": 1.0},
            {"variant": "a#2", "ok": True, "losses": [x + 0.1 for x in base], "ms_median": 1.0}]
    example.compare(runs, 0.05)
    assert abs(runs[0]["noise_floor"] - 0.1) < 1e-12 and runs[1]["matches"]
    runs[2]["losses"] = [x + 0.01 for x in base]
    example.compare(runs, 0.05)
    assert runs[0]["match_bound"] == 0.05 and not runs[1]["matches"]
