"""`flashlab bench --variant ... --compare flex` (flashlab.bench.variants): the names it takes,
the errors it gives, what it says without a GPU, its table; and on a GPU, a small run that
checks every row before timing it."""
import json

import pytest

from flashlab.bench import variants
from flashlab.cli import main
from flashlab.launch.device import gpu_available


def test_variant_names_values_and_all():
    assert variants.parse("window=512, alibi,softcap=20") == [
        ("window", 512.0), ("alibi", None), ("softcap", 20.0)]
    assert variants.parse("gqa") == [("gqa", 4)]
    assert [n for n, _ in variants.parse("all")] == list(variants.NAMES)
    assert variants.label("window", 512.0) == "window=512"


@pytest.mark.parametrize("spec,match", [
    ("windw", "windw: unknown; choose causal"),
    ("alibi=3", "alibi takes no value"),
    ("window=ten", "'ten' is not a number"),
    ("window=0", "whole number >= 1"),
    ("gqa=1.5", "whole number >= 1"),
    ("softcap=-1", "the cap must be > 0"),
    (" , ", "name at least one"),
])
def test_bad_variants_are_named(spec, match):
    with pytest.raises(ValueError, match=match):
        variants.parse(spec)


@pytest.mark.parametrize("args,match", [
    (["--variant", "windw"], "--variant windw: unknown"),
    (["--compare", "flexx"], "--compare flexx: choose torch"),
    (["--variant", "alibi", "--compare", "torch"], "compares with --compare flex"),
    (["--variant", "alibi", "--causal"], "leave out --dtype, --backward and --causal"),
    (["--variant", "alibi", "--dtype", "fp16"], "leave out --dtype"),
    (["--variant", "alibi", "--csv", "x.csv"], "writes --json only"),
    (["--variant", "alibi", "--batch", "0"], "--batch must be >= 1"),
])
def test_the_cli_refuses_what_the_variant_bench_cannot_do(args, match, capsys):
    assert main(["bench", *args]) == 2
    assert match in capsys.readouterr().err


@pytest.mark.skipif(gpu_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_what_it_needs(capsys):
    assert main(["bench", "--compare", "flex"]) == 1
    out = capsys.readouterr().out
    assert "needs a CUDA GPU with CuPy and PyTorch" in out and "tutorial 8" in out


def test_the_table_gives_ratios_and_marks_a_wrong_row():
    rows = [{"variant": "alibi", "d": 64, "check": 0.5, "flashlab_fwd": 0.5,
             "flashlab_fwdbwd": 2.0, "flex_fwd": 0.6, "flex_fwdbwd": 2.4},
            {"variant": "window=1024", "d": 64, "check": 3.0, "flashlab_fwd": None,
             "flashlab_fwdbwd": None}]
    headers, table = variants.table(rows)
    assert headers[3:6] == ["flashlab fwd", "flex fwd", "flex/flashlab"]
    assert table[0] == [64, "alibi", "ok (0.50)", "0.500", "0.600", "1.20x", "1.500", "1.800",
                        "1.20x"]
    assert table[1][2] == "WRONG (3)" and table[1][3] == "not timed"


@pytest.mark.gpu
def test_a_small_variant_bench_checks_and_times_every_row(tmp_path, capsys):
    pytest.importorskip("torch")
    js = tmp_path / "v.json"
    assert main(["bench", "--variant", "causal-mask,window=100,document,alibi,softcap,gqa=2",
                 "--compare", "flex", "--seq", "512", "--batch", "1", "--heads", "4",
                 "--head-dim", "64", "--repeat", "2", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "flex/flashlab" in out and "WRONG" not in out
    rows = json.loads(js.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["causal-mask", "window=100", "document", "alibi",
                                            "softcap=30", "gqa=2"]
    for r in rows:
        assert 0 <= r["check"] <= 1.0 and r["flashlab_fwd"] > 0, r
        # every time measured; no order between them asserted: at this size, with 2 repeats,
        # a forward alone has timed slower than forward + backward (noise, not a defect)
        assert r["flashlab_fwdbwd"] > 0 and r.get("flex_fwd", 0) > 0, r
