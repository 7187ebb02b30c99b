"""`flashlab bench`'s default on a GPU, the ladder (flashlab.bench.ladder): the merge of the
float32 and bfloat16 reports into one table with speedups over standard attention in float32,
and the CLI's choice of it. No GPU needed: the reports are built by hand and gpu_bench is
replaced where the CLI would run it (the GPU run itself is scripts/gpu_check.sh bench)."""
import math

import pytest

from flashlab import bench
from flashlab.bench import ladder
from flashlab.bench.report import Report, Row
from flashlab.cli import main
from flashlab.launch import device


def _report(dtype, rows):
    r = Report({"device": "test GPU", "dtype": dtype, "baseline": "x"})
    for N, kernel, direction, ms in rows:
        row = Row(N, 1, 32, 64, kernel, direction, ms=ms, check="ok")
        row.speedup = 99.0  # a per-dtype speedup the merge must replace
        r.rows.append(row)
    return r


def _two():
    nan = float("nan")
    r32 = _report("float32", [(1024, "naive", "forward", 8.0), (1024, "fa2", "forward", 2.0),
                              (4096, "naive", "forward", nan), (4096, "fa2", "forward", 20.0),
                              (1024, "naive", "backward", 30.0), (1024, "fa2", "backward", 6.0)])
    r32.notes.append("fa1 is not run past N=4096")
    r16 = _report("bfloat16", [(1024, "tc", "forward", 0.5), (1024, "torch-flash", "forward", 0.4),
                               (4096, "tc", "forward", 4.0), (1024, "tc", "backward", 1.5)])
    return {"float32": r32, "bfloat16": r16}


def test_merge_names_each_rung_and_measures_against_standard_attention_in_float32():
    out = ladder.merge(_two())
    by = {(r.N, r.kernel, r.direction): r for r in out.rows}
    assert out.header["baseline"] == "naive fp32" and out.header["device"] == "test GPU"
    assert by[(1024, "fa2 fp32", "forward")].speedup == pytest.approx(4.0)
    assert by[(1024, "tc bf16", "forward")].speedup == pytest.approx(16.0)
    assert by[(1024, "torch-flash bf16", "forward")].speedup == pytest.approx(20.0)
    assert by[(1024, "tc bf16", "backward")].speedup == pytest.approx(20.0)  # its own pass's base
    assert by[(1024, "naive fp32", "forward")].speedup == pytest.approx(1.0)
    # naive did not run at 4096: no speedups there (not the 99 of the per-dtype reports), said so
    assert all(math.isnan(r.speedup) for r in out.rows if r.N == 4096)
    assert any("N=4096: naive fp32 did not run there" in n for n in out.notes)
    assert "fa1 is not run past N=4096" in out.notes


def test_merge_orders_rows_by_n_then_pass_then_rung():
    out = ladder.merge(_two())
    assert [(r.N, r.direction, r.kernel) for r in out.rows][:4] == [
        (1024, "forward", "naive fp32"), (1024, "forward", "fa2 fp32"),
        (1024, "forward", "tc bf16"), (1024, "forward", "torch-flash bf16")]
    assert [r.N for r in out.rows] == sorted(r.N for r in out.rows)


def _fake_gpu(monkeypatch):
    """A GPU as far as the CLI can tell, with gpu_bench recording its calls."""
    calls = []

    def fake_gpu_bench(seqs, kernels, *a, dtype="float32", compare=(), **kw):
        calls.append((dtype, list(kernels), list(compare)))
        return _two()[dtype]

    monkeypatch.setattr(device, "gpu_available", lambda: True)
    monkeypatch.setattr(ladder, "compute_capability", lambda: 90)
    monkeypatch.setattr(bench, "gpu_bench", fake_gpu_bench)
    monkeypatch.setattr("flashlab.bench.gpu.gpu_bench", fake_gpu_bench)
    return calls


def test_bench_with_no_arguments_on_a_gpu_runs_the_ladder(monkeypatch, capsys):
    calls = _fake_gpu(monkeypatch)
    assert main(["bench", "--seq", "1024,4096"]) == 0
    out = capsys.readouterr().out
    assert [c[0] for c in calls] == ["float32", "bfloat16"]
    assert "naive" in calls[0][1] and "fa2" in calls[0][1] and calls[1][1] == ["tc"]
    assert "The ladder" in out and "vs naive fp32" in out and "tc bf16" in out
    assert "16.00x" in out  # tc bf16 forward at N = 1024 over naive fp32


def test_a_named_dtype_or_kernel_list_runs_one_rung_set(monkeypatch, capsys):
    calls = _fake_gpu(monkeypatch)
    assert main(["bench", "--seq", "1024", "--dtype", "float32"]) == 0
    assert main(["bench", "--seq", "1024", "--kernels", "fa2"]) == 0
    assert [c[0] for c in calls] == ["float32", "float32"]
    assert "The ladder" not in capsys.readouterr().out


@pytest.mark.parametrize("cc,d,want", [(90, 64, "bfloat16"), (80, 128, "bfloat16"),
                                       (75, 64, "float16"), (75, 96, None), (70, 64, None)])
def test_the_16_bit_rung_is_the_dtype_this_gpu_runs(cc, d, want):
    # a T4 (7.5) runs tc's Turing build in float16 only; a V100 (7.0) has no 16-bit kernel
    assert ladder.lowp_dtype(d, cc) == want


def test_a_t4_gets_a_float16_rung_and_only_kernels_that_run(monkeypatch, capsys):
    calls = _fake_gpu(monkeypatch)
    monkeypatch.setattr(ladder, "compute_capability", lambda: 75)
    two = _two()
    monkeypatch.setattr("flashlab.bench.gpu.gpu_bench", lambda seqs, kernels, *a, dtype="float32",
                        **kw: calls.append((dtype, list(kernels))) or two.get(dtype, two["bfloat16"]))
    assert main(["bench", "--seq", "1024", "--head-dim", "256"]) == 0
    assert calls == [("float32", ["naive", "fa1"])]  # fa2 has no d = 256, tc none on a T4
    assert "no 16-bit kernel runs at head dim 256 on compute capability 7.5" in capsys.readouterr().out
    calls.clear()
    assert main(["bench", "--seq", "1024"]) == 0
    assert calls == [("float32", ["naive", "fa1", "fa2"]), ("float16", ["tc"])]
