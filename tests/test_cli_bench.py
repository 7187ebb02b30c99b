"""`flashlab bench` without a GPU, `--version`, a closed stdout, and the install hints.

Every CPU run here is tiny (N <= 64, --repeat 1) so that each test takes well under a few seconds
on two cores.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import flashlab
from flashlab import bench, install
from flashlab.cli import main
from flashlab.launch.device import gpu_available

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--seq", "32", "--repeat", "1"]

cpu_only = pytest.mark.skipif(gpu_available(), reason="this machine has a GPU: the CPU path is "
                                                      "not taken")


def _pyproject_version():
    return re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]


def _one_line_error(capsys):
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, captured.err
    assert "Traceback" not in captured.err + captured.out
    return err


# ----------------------------------------------------------------------------- --version


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"flashlab {flashlab.__version__}"


def test_version_agrees_with_pyproject():
    assert flashlab.__version__ == _pyproject_version()
    # the literal used when no distribution metadata is found (a never-installed checkout)
    init = (ROOT / "flashlab" / "__init__.py").read_text()
    assert re.search(r'__version__ = "([^"]+)"', init)[1] == _pyproject_version()


# ----------------------------------------------------------------------------- closed stdout


def _run_into_closed_pipe(args, unbuffered):
    """Run `python -m flashlab ARGS` with stdout a pipe whose reader has already gone."""
    r, w = os.pipe()
    os.close(r)
    env = dict(os.environ)
    env.pop("PYTHONUNBUFFERED", None)
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    try:
        proc = subprocess.run([sys.executable, "-m", "flashlab", *args], stdout=w,
                              stderr=subprocess.PIPE, text=True, env=env, timeout=60)
    finally:
        os.close(w)
    return proc


@pytest.mark.parametrize("args", [["bench", *TINY], ["io", "--seq", "1k"], ["info"],
                                  ["--version"], ["bench", "--help"]])
def test_a_closed_stdout_ends_quietly(args):
    for unbuffered in (False, True):
        proc = _run_into_closed_pipe(args, unbuffered)
        assert proc.stderr == "", proc.stderr
        if unbuffered and args[-1] in ("--help", "--version"):
            # argparse writes help and version itself and ignores a failed write (then exits 0)
            assert proc.returncode in (0, 141)
        else:
            assert proc.returncode == 141


def test_bench_piped_into_head_prints_no_error():
    # the user's case: the reader leaves after one line (exit 141 or 0, depending on whether
    # flashlab had written everything before head left); nothing on stderr either way
    proc = subprocess.Popen([sys.executable, "-m", "flashlab", "bench", *TINY],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    first = proc.stdout.readline()
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert first.startswith((b"No CUDA device found", b"gpu: "))  # CPU / GPU first line
    assert err == b"", err.decode()
    assert proc.returncode in (0, 141)


# ----------------------------------------------------------------------------- CPU bench flags


def _json_rows(tmp_path, capsys, *args):
    js = tmp_path / "b.json"
    assert main(["bench", *TINY, *args, "--json", str(js)]) == 0
    out = capsys.readouterr().out
    return json.loads(js.read_text()), out


@cpu_only
def test_cpu_kernels_choose_the_step_throughs(tmp_path, capsys):
    report, out = _json_rows(tmp_path, capsys, "--kernels", "fa2, naive", "--backward")
    assert [(r["kernel"], r["direction"]) for r in report["rows"]] == [
        ("fa2", "forward"), ("fa2", "backward"), ("naive", "forward"), ("naive", "backward")]
    fa2 = report["rows"][0]
    assert fa2["speedup"] > 0  # against naive, though naive came second
    assert out.count("ok (err") == 4


@cpu_only
def test_cpu_batch_heads_and_tokens_shape_the_inputs(tmp_path, capsys):
    report, _ = _json_rows(tmp_path, capsys, "--kernels", "naive", "--batch", "2", "--heads", "3")
    assert {(r["B"], r["H"]) for r in report["rows"]} == {(2, 3)}
    js = tmp_path / "t.json"
    assert main(["bench", "--seq", "16,32", "--repeat", "1", "--kernels", "fa1",
                 "--tokens", "64", "--json", str(js)]) == 0
    assert [(r["N"], r["B"], r["H"]) for r in json.loads(js.read_text())["rows"]] == [
        (16, 4, 1), (32, 2, 1)]


@cpu_only
def test_cpu_repeat_defaults_to_3_and_is_honoured(monkeypatch, capsys):
    seen = []
    real = bench.cpu_bench

    def spy(*a, **kw):
        seen.append(kw["repeat"])
        return real(*a, **{**kw, "repeat": 1})

    monkeypatch.setattr(bench, "cpu_bench", spy)
    assert main(["bench", "--seq", "16", "--kernels", "naive"]) == 0
    assert main(["bench", "--seq", "16", "--kernels", "naive", "--repeat", "7"]) == 0
    assert seen == [3, 7]


@cpu_only
def test_cpu_compare_torch_is_announced_as_gpu_only(capsys):
    assert main(["bench", *TINY, "--kernels", "naive", "--compare", "torch"]) == 0
    notes = [l for l in capsys.readouterr().out.splitlines() if "--compare" in l]
    assert notes == ["note: --compare torch applies only on a GPU (torch's CUDA attention "
                     "backends); nothing is compared here"]


@cpu_only
@pytest.mark.parametrize("dtype,name", [("bf16", "bfloat16"), ("float16", "float16")])
def test_cpu_16_bit_runs_the_tensor_core_step_through_in_that_dtype(tmp_path, capsys, dtype,
                                                                    name):
    report, out = _json_rows(tmp_path, capsys, "--dtype", dtype, "--backward", "--causal")
    assert report["header"]["dtype"] == name
    assert [(r["kernel"], r["direction"]) for r in report["rows"]] == [
        ("naive", "forward"), ("naive", "backward"), ("tc", "forward"), ("tc", "backward")]
    assert all(r["check"].startswith("ok (") and r["check"].endswith("of bound)")
               for r in report["rows"])
    assert "float64" not in out  # the old, untrue "the step-throughs below run in float64"
    assert f"d = 64, causal, {name}" in out
    assert f"tc is the tensor-core step-through (flashlab.reference.tc_forward) on {name}" in out


@cpu_only
def test_cpu_float32_says_what_runs(capsys):
    assert main(["bench", *TINY, "--kernels", "fa1"]) == 0
    out = capsys.readouterr().out
    assert "d = 64, non-causal, float32" in out
    assert "the step-throughs run in float32 NumPy" in out


@cpu_only
def test_cpu_kernels_of_the_other_dtype_are_noted_or_refused(capsys):
    assert main(["bench", *TINY, "--dtype", "bf16", "--kernels", "tc,fa1"]) == 0
    out = capsys.readouterr().out
    assert "note: fa1 is not run: on the CPU it takes float32 (--dtype float32)" in out
    assert main(["bench", *TINY, "--kernels", "tc"]) == 2  # nothing left to run
    assert "tc takes --dtype bfloat16" in _one_line_error(capsys)


@pytest.mark.parametrize("flag", ["--repeat", "--batch", "--heads", "--tokens"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_counts_must_be_positive(capsys, flag, value):
    assert main(["bench", flag, value]) == 2
    assert f"{flag} must be >= 1, got {value}" in _one_line_error(capsys)


def test_output_files_are_checked_before_timing(monkeypatch, tmp_path, capsys):
    def no_timing(*a, **kw):
        raise AssertionError("timed before checking the outputs")

    monkeypatch.setattr(bench, "cpu_bench", no_timing)
    monkeypatch.setattr(bench, "gpu_bench", no_timing)
    assert main(["bench", *TINY, "--json", str(tmp_path / "missing" / "b.json")]) == 2
    assert "no such directory" in _one_line_error(capsys)
    assert main(["bench", *TINY, "--csv", str(tmp_path)]) == 2
    assert "is a directory" in _one_line_error(capsys)

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setattr(install, "from_source_checkout", lambda: False)
    assert main(["bench", *TINY, "--plot", str(tmp_path / "b.png")]) == 1
    err = _one_line_error(capsys)
    assert "'plot' extra" in err and "pip install 'flashlab[plot]'" in err


@cpu_only
def test_files_are_written_and_named(tmp_path, capsys):
    js, csv = tmp_path / "b.json", tmp_path / "b.csv"
    assert main(["bench", *TINY, "--kernels", "naive", "--json", str(js), "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    assert f"JSON written to {js}" in out and f"CSV written to {csv}" in out
    assert len(csv.read_text().splitlines()) == 2


# ----------------------------------------------------------------------------- install hints


def test_install_hint_from_a_checkout(monkeypatch):
    monkeypatch.setattr(install, "from_source_checkout", lambda: True)
    monkeypatch.setattr(install, "checkout_root", lambda: Path.cwd().resolve())
    assert install.install_hint("cuda13") == "pip install -e '.[cuda13]'"


def test_install_hint_from_a_checkout_elsewhere_names_its_path(monkeypatch, tmp_path):
    root = tmp_path / "my checkout"
    root.mkdir()
    monkeypatch.setattr(install, "from_source_checkout", lambda: True)
    monkeypatch.setattr(install, "checkout_root", lambda: root.resolve())
    monkeypatch.chdir(tmp_path)
    assert install.install_hint("plot") == f"pip install -e '{root.resolve()}[plot]'"


def test_install_hint_from_a_wheel(monkeypatch):
    monkeypatch.setattr(install, "from_source_checkout", lambda: False)
    assert install.install_hint("cuda13") == "pip install 'flashlab[cuda13]'"
    assert install.install_hint("plot") == "pip install 'flashlab[plot]'"


def test_checkout_detection_looks_for_flashlabs_pyproject(monkeypatch, tmp_path):
    here = Path(flashlab.__file__).resolve().parent.parent
    assert install.from_source_checkout() == (here / "pyproject.toml").is_file()
    fake = tmp_path / "site-packages" / "flashlab"
    fake.mkdir(parents=True)
    monkeypatch.setattr(install, "__file__", str(fake / "install.py"))
    assert install.checkout_root() is None  # a wheel: no pyproject.toml beside the package
    (tmp_path / "site-packages" / "pyproject.toml").write_text('[project]\nname = "other"\n')
    assert install.checkout_root() is None  # somebody else's project
    (tmp_path / "site-packages" / "pyproject.toml").write_text('[project]\nname = "flashlab"\n')
    assert install.checkout_root() == (tmp_path / "site-packages").resolve()


def test_no_hard_coded_install_hints_remain():
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "flashlab").rglob("*.py")
            if p.name != "install.py"
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(r"pip install (-e )?'?(\.|flashlab)\[", line)]
    assert hits == []


@cpu_only
@pytest.mark.parametrize("checkout,want", [(True, "pip install -e '.[cuda13]'"),
                                           (False, "pip install 'flashlab[cuda13]'")])
def test_the_cli_prints_the_hint_for_where_it_runs(monkeypatch, capsys, checkout, want):
    monkeypatch.setattr(install, "from_source_checkout", lambda: checkout)
    monkeypatch.setattr(install, "checkout_root", lambda: Path.cwd().resolve())
    assert main(["train", "--device", "gpu", "--steps", "1"]) == 1
    assert want in _one_line_error(capsys)
    assert main(["bench", *TINY, "--kernels", "naive"]) == 0
    assert want in capsys.readouterr().out.splitlines()[0]


def test_the_plot_error_names_the_extra(monkeypatch):
    from flashlab import viz

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(install, "from_source_checkout", lambda: False)
    with pytest.raises(RuntimeError, match=re.escape("pip install 'flashlab[plot]'")):
        viz._pyplot()
