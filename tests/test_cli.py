"""The command line: `flashlab io` prints the traffic table; usage errors are one line, exit 2."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flashlab.cli import main


def test_io_prints_the_traffic_table(capsys):
    assert main(["io", "--seq", "512,2k", "--head-dim", "64", "--sram", "12288"]) == 0
    out = capsys.readouterr().out
    assert "A0 MB" in out and "F2 MB" in out and "N^2d^2/M MB" in out
    lines = [l for l in out.splitlines() if l.strip().startswith(("512", "2048"))]
    assert len(lines) == 2
    assert "48 x 48" in out  # A1:L1 at d = 64, M = 12288


def test_usage_errors_are_one_line(capsys):
    assert main(["io", "--seq", "abc"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert main(["io", "--head-dim", "0"]) == 2
    assert "--head-dim must be >= 1" in capsys.readouterr().err
    assert main(["nonsense"]) == 2


def test_console_script_runs(tmp_path):
    # from another directory, with this checkout on the path (it need not be installed)
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [root] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    out = subprocess.run([sys.executable, "-m", "flashlab", "io", "--seq", "1k"],
                         capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert "1024" in out.stdout


def test_help_shows_an_example(capsys):
    try:
        main(["io", "--help"])
    except SystemExit as e:
        assert e.code == 0
    assert "example" in capsys.readouterr().out


def test_bench_without_a_gpu_says_so_and_times_the_references(tmp_path, capsys):
    from flashlab.launch.device import gpu_available

    if gpu_available():
        import pytest
        pytest.skip("this machine has a GPU: the CPU path is not taken")
    png, js, csv = tmp_path / "b.png", tmp_path / "b.json", tmp_path / "b.csv"
    code = main(["bench", "--seq", "32,64", "--backward", "--causal", "--plot", str(png),
                 "--json", str(js), "--csv", str(csv)])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("No CUDA device found")
    assert "A0 MB" in out  # the traffic table
    assert out.count("ok (err") == 12  # 2 N x 3 kernels x 2 passes, each checked
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    import json
    rows = json.loads(js.read_text())["rows"]
    assert {r["kernel"] for r in rows} == {"naive", "fa1", "fa2"}
    assert len(csv.read_text().splitlines()) == 13


def test_bench_usage_errors(capsys):
    assert main(["bench", "--dtype", "int8"]) == 2
    assert "choose float32 (naive, fa1, fa2) or float16 / bfloat16 (tc" in capsys.readouterr().err
    assert main(["bench", "--kernels", "fa9"]) == 2
    assert "choose from naive,fa1,fa2,tc" in capsys.readouterr().err
    assert main(["bench", "--compare", "jax"]) == 2


def test_info_runs_everywhere(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "kernel sources:" in out and "CPU backend:" in out
    assert "kernels that run here:" in out or "kernels that run on a GPU here:" in out


def test_check_compiles_a_user_file_on_cpu_and_reports_errors(tmp_path, capsys):
    from flashlab.launch.device import gpu_available
    from flashlab.launch.sources import kernel_dir

    if gpu_available():
        import pytest
        pytest.skip("this machine has a GPU: check runs the tile comparison instead")
    good = tmp_path / "mine.cu"
    good.write_text((kernel_dir() / "fa1.cu").read_text())  # includes "common.cuh": inlined for it
    assert main(["check", str(good), "--algorithm", "fa1"]) == 0
    assert "compiles with NVRTC" in capsys.readouterr().out
    bad = tmp_path / "bad.cu"
    bad.write_text('#include "common.cuh"\nextern "C" __global__ void fa1_forward() { oops; }\n')
    assert main(["check", str(bad), "--algorithm", "fa1"]) == 1
    err = capsys.readouterr().err
    assert "failed to compile" in err and "oops" in err
    assert main(["check", str(tmp_path / "missing.cu"), "--algorithm", "fa1"]) == 2


@pytest.mark.cpu_kernel
def test_trace_without_a_gpu_runs_on_the_cpu_backend_and_says_so(capsys, monkeypatch):
    from flashlab.launch import device

    monkeypatch.setattr(device, "gpu_available", lambda: False)
    assert main(["trace", "--kernel", "fa1", "--seq", "120"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fa1 forward, on the CPU backend (") and "no GPU used" in out
    assert out.rstrip().endswith("all steps match")
    # the bug hunt without a GPU: the planted bug shows, its name does not
    assert main(["trace", "--kernel", "fa1", "--seq", "120", "--inject-bug", "mystery-1"]) == 1
    out = capsys.readouterr().out
    assert "bug hunt mystery-1" in out and "diverges at step" in out and "no-rescale" not in out
    # tc is the GPU's: said in one line
    assert main(["trace", "--kernel", "tc"]) == 1
    err = capsys.readouterr().err
    assert "uses inline PTX" in err and "no CUDA device was found" in err and err.count("\n") == 1
    assert main(["trace", "--kernel", "fa1", "--backend", "gpu"]) == 1
    assert "--backend gpu: no CUDA device" in capsys.readouterr().err
