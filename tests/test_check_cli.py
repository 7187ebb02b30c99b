"""`flashlab check FILE.cu --algorithm A`: compiler messages name the user's file and line, a
file checked against the wrong algorithm says so in one line, compile errors are trimmed, without
a GPU the file runs on the CPU backend tile by tile, and a missing NVRTC, file or argument is one
clear line (no traceback). The compiling tests use NVRTC
offline (the nvrtc extra) and are skipped where it is not installed."""
import re
import shutil
import sys

import pytest

from flashlab.cli import main
from flashlab.launch import compiler, device, sources
from flashlab.launch.errors import KernelCompileError

PLANTED = "flashlab_planted_error"


@pytest.fixture
def cpu_only(monkeypatch):
    """Take check's no-GPU path (compile with NVRTC) on any machine: flashlab check asks
    flashlab.launch.device, as the launcher does."""
    monkeypatch.setattr(device, "gpu_available", lambda: False)
    monkeypatch.setattr(sources, "SOURCE_RECHECK_S", 0.0)  # files are edited within a test


@pytest.fixture
def nvrtc(cpu_only):
    pytest.importorskip("cuda.bindings.nvrtc", reason="NVRTC (the nvrtc extra) is not installed")


def plant(text: str, after: str, what: str = f"    {PLANTED};") -> tuple[str, int]:
    """`text` with the line `what` inserted after the first line containing `after`; returns the
    new text and the 1-based number of the inserted line."""
    lines = text.split("\n")
    at = next(n for n, line in enumerate(lines) if after in line) + 1
    lines.insert(at, what)
    return "\n".join(lines), at + 1


def fa1_with_error(tmp_path, name="my_fa1.cu"):
    text, line = plant((sources.kernel_dir() / "fa1.cu").read_text(), "const int p = d + 1;")
    (tmp_path / name).write_text(text)
    return tmp_path / name, line


def error_lines(err: str) -> list[str]:
    return [l for l in err.splitlines() if re.match(r"\S+:\d+: (catastrophic )?error:", l)]


# ----------------------------------------------------------------------------- file and line

def test_a_lone_file_reports_its_own_name_and_line(tmp_path, capsys, nvrtc):
    # no common.cuh beside it: flashlab's header is inlined, and must not shift the lines
    path, line = fa1_with_error(tmp_path)
    assert not (tmp_path / "common.cuh").exists()
    assert main(["check", str(path), "--algorithm", "fa1"]) == 1
    err = capsys.readouterr().err
    assert f"my_fa1.cu:{line}: error:" in err and PLANTED in err, err
    assert "fa1.cu(" not in err and "Traceback" not in err
    assert error_lines(err) == [f'my_fa1.cu:{line}: error: identifier "{PLANTED}" is undefined']

    # the compiler's own log (what CuPy shows on a GPU, too) names the file and line
    with pytest.raises(KernelCompileError) as e:
        compiler.nvrtc_compile(sources.user_file(path, "fa1"), "sm_80", kernel="fa1")
    assert f"my_fa1.cu({line}): error" in e.value.log
    assert re.findall(r"^(\S+?)\(\d+\): error", e.value.log, re.M) == ["my_fa1.cu"]


def test_a_file_with_common_cuh_beside_it_reports_exact_lines(tmp_path, capsys, nvrtc):
    path, line = fa1_with_error(tmp_path)
    # a header of another length than ours, so a miscount cannot pass by luck
    header = "/* my own copy */\n\n" + (sources.kernel_dir() / "common.cuh").read_text()
    (tmp_path / "common.cuh").write_text(header)
    assert main(["check", str(path), "--algorithm", "fa1"]) == 1
    err = capsys.readouterr().err
    assert error_lines(err) == [f'my_fa1.cu:{line}: error: identifier "{PLANTED}" is undefined']

    # an error in the header beside it names the header and its line
    broken, hline = plant(header, "#pragma once", "__device__ int common_error = ;")
    (tmp_path / "common.cuh").write_text(broken)
    (tmp_path / "my_fa1.cu").write_text((sources.kernel_dir() / "fa1.cu").read_text())
    assert main(["check", str(path), "--algorithm", "fa1"]) == 1
    err = capsys.readouterr().err
    assert [l.split(": error:")[0] for l in error_lines(err)] == [f"common.cuh:{hline}"], err


def test_inlined_headers_keep_every_line_where_it_was(tmp_path):
    """Replay the #line directives of the expanded text: each of the file's lines, and each
    header's, must land on its own file and line (blank lines around an include included)."""
    (tmp_path / "inner.cuh").write_text("// inner 1\n#define INNER 2\n")
    (tmp_path / "h.cuh").write_text('#pragma once\n#include "inner.cuh"\n\n#define X 4')
    text = ('// k 1\n\n\n#include "h.cuh"\n\n#include "h.cuh"  // again: left out\n'
            '  #  include "inner.cuh"\nint y = X;\n#include <cstdio>\nint z;\n')
    (tmp_path / "k.cu").write_text(text)
    where, file, line = {}, None, None
    for out in sources.expand_includes(tmp_path / "k.cu").split("\n"):
        m = re.fullmatch(r'#line (\d+) "([^"]+)"', out)
        if m:
            line, file = int(m[1]), m[2]
            continue
        where.setdefault((file, line), out)
        line += 1
    for name, body in (("k.cu", text), ("h.cuh", None), ("inner.cuh", None)):
        body = body or (tmp_path / name).read_text()
        for n, src in enumerate(body.split("\n"), start=1):
            if src.strip() and "include" not in src:
                assert where.get((name, n)) == src, (name, n, src)
    assert where[("k.cu", 9)] == "#include <cstdio>"  # a system header is NVRTC's business


# ----------------------------------------------------------------------------- wrong algorithm

@pytest.mark.parametrize("ours,given", [("fa2", "fa1"), ("fa1", "fa2")])
def test_the_wrong_algorithm_is_one_line_that_names_the_right_one(tmp_path, capsys, cpu_only,
                                                                  ours, given):
    # detected before compiling: no NVRTC needed
    path = tmp_path / f"my_{ours}.cu"
    path.write_text((sources.kernel_dir() / f"{ours}.cu").read_text())
    shutil.copy(sources.kernel_dir() / "common.cuh", tmp_path / "common.cuh")
    assert main(["check", str(path), "--algorithm", given]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: my_{ours}.cu defines none of {given}'s kernels ({given}_forward")
    assert f"it looks like {ours} (defines {ours}_forward" in err
    assert err.strip().endswith(f"try --algorithm {ours}")


def test_a_pass_the_file_lacks_is_named(tmp_path, capsys, cpu_only):
    src = (sources.kernel_dir() / "fa1.cu").read_text()
    (tmp_path / "fwd.cu").write_text(src[:src.index("fa1_backward(")] + "\n")
    assert main(["check", str(tmp_path / "fwd.cu"), "--algorithm", "fa1", "--backward"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "fwd.cu does not define fa1_backward, which the fa1 backward pass launches" in err


def test_compile_errors_are_trimmed(tmp_path, capsys, nvrtc):
    text = (sources.kernel_dir() / "fa1.cu").read_text()
    lines = []
    for k in range(7):
        text, line = plant(text, "const int p = d + 1;", f"    {PLANTED}_{k};")
        lines = [line] + [n + 1 for n in lines]  # each lands above the ones before
    (tmp_path / "many.cu").write_text(text)
    assert main(["check", str(tmp_path / "many.cu"), "--algorithm", "fa1"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "error: many.cu failed to compile with NVRTC for sm_80: 7 errors"
    assert [l.split(": error:")[0] for l in error_lines(err)] == [f"many.cu:{n}" for n in lines[:3]]
    assert re.search(r"^\.\.\. 4 more errors", err, re.M), err
    assert len(err.splitlines()) <= 12


def test_template_parameters_that_do_not_match_are_said_once(tmp_path, capsys, nvrtc):
    text = (sources.kernel_dir() / "fa2.cu").read_text()
    head, tail = text.split("fa2_forward(", 1)
    head = head[::-1].replace("template <int D, int BR, int BC>"[::-1],
                              "template <int D, int BR>"[::-1], 1)[::-1]
    (tmp_path / "tmpl.cu").write_text(head + "fa2_forward(" + tail)
    assert main(["check", str(tmp_path / "tmpl.cu"), "--algorithm", "fa2"]) == 1
    err = capsys.readouterr().err
    assert "fa2_forward cannot be instantiated as the fa2 launcher does" in err, err
    assert "<int D, int BR, int BC>" in err and len(err.splitlines()) <= 6


# ----------------------------------------------------------------------------- without a GPU

@pytest.mark.cpu_kernel
def test_without_a_gpu_the_file_runs_on_the_cpu_backend_tile_by_tile(tmp_path, capsys, nvrtc):
    shutil.copy(sources.kernel_dir() / "fa1.cu", tmp_path / "mine.cu")
    assert main(["check", str(tmp_path / "mine.cu"), "--algorithm", "fa1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mine.cu compiles with NVRTC for sm_80 (fa1_forward, fa1_backward)")
    assert "mine.cu (fa1 forward), on the CPU backend (" in out
    assert out.rstrip().endswith("all steps match")


@pytest.mark.cpu_kernel
@pytest.mark.parametrize("old,new,says", [
    ("(keep[r] * O_i[r * p + x] + add[r] * pv) / l_new[r]", "(l_i[r] * O_i[r * p + x] + pv) / l_new[r]",
     "diverges at step (i=0, j=1), A1:L12"),
    ("__syncthreads();  // S_ij is complete before the row statistics read it", "",
     "shared-memory race in kernel fa1_forward"),
])
def test_without_a_gpu_a_broken_copy_exits_1_and_says_where(tmp_path, capsys, cpu_only, old, new,
                                                            says):
    text = (sources.kernel_dir() / "fa1.cu").read_text()
    assert text.count(old) == 1
    (tmp_path / "broken.cu").write_text(text.replace(old, new))
    assert main(["check", str(tmp_path / "broken.cu"), "--algorithm", "fa1", "--seq", "130"]) == 1
    out, err = capsys.readouterr()
    assert says in out + err, out + err
    assert "Traceback" not in out + err


def test_missing_nvrtc_is_one_note_with_the_install_hint(tmp_path, capsys, cpu_only, monkeypatch):
    import builtins

    from flashlab.install import install_hint

    for name in [m for m in sys.modules if m == "cuda" or m.startswith("cuda.")]:
        monkeypatch.delitem(sys.modules, name)
    for name in ("cuda", "cuda.bindings", "cuda.bindings.nvrtc"):
        monkeypatch.setitem(sys.modules, name, None)  # import -> ModuleNotFoundError
    real_import = builtins.__import__

    def no_cuda(name, *args, **kwargs):
        if name == "cuda" or name.startswith("cuda."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cuda)
    shutil.copy(sources.kernel_dir() / "fa1.cu", tmp_path / "mine.cu")
    # the CPU backend still runs it; the missing GPU compile is one note with the fix
    monkeypatch.setattr("flashlab.cli.check._run_trace", lambda *a, **kw: 0)
    assert main(["check", str(tmp_path / "mine.cu"), "--algorithm", "fa1"]) == 0
    out, err = capsys.readouterr()
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and err == "", out + err
    assert "was not compiled for a GPU" in notes[0] and "NVRTC is not installed" in notes[0]
    assert install_hint("nvrtc") in notes[0]
    assert "Traceback" not in out and "No module named" not in out


# ----------------------------------------------------------------------------- bad arguments

@pytest.mark.parametrize("case", ["missing", "directory", "not-cu"])
def test_bad_file_arguments_are_one_line_naming_them(tmp_path, capsys, case):
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.cu").write_text("")
    (tmp_path / "notes.txt").write_text("hello")
    arg, says = {"missing": (tmp_path / "nope.cu", "no such file"),
                 "directory": (tmp_path / "dir", "is a directory; give one .cu file in it (a.cu)"),
                 "not-cu": (tmp_path / "notes.txt", "is not a .cu file")}[case]
    assert main(["check", str(arg), "--algorithm", "fa1"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(arg) in err and says in err, err
