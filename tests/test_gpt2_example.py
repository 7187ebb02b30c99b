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
