"""CPU-only checks of kernels/: every source compiles with NVRTC for sm_75, sm_80 and sm_90 (no GPU
or driver needed), tiles fit the devices' shared memory, and the compile cache sees headers."""
import re

import pytest

from flashlab import course, registry
from flashlab.algorithms import LINES
from flashlab.launch import compiler, plans, sources
from flashlab.launch.errors import KernelCompileError

SOURCES = [p.stem for p in sources.kernel_files()]
VARIANTS = [(s.name, name, v) for s in registry.KERNELS.values() for name, v in s.variants.items()]


def test_every_kernel_is_registered():
    # tc90.cu is kernel 'tc' on compute capability 9.0 (variant "wgmma"), built for sm_90a; the
    # Hopper ladder's rungs (registry.LADDER) have launchers of their own
    assert sorted(p.name for p in sources.kernel_files()) == \
        sorted([f for s in registry.KERNELS.values() for f in s.sources()] + list(registry.LADDER))


def test_the_ladders_rungs_compile_for_sm90a():
    from flashlab.launch import tc_ws

    assert registry.LADDER["tc90_ws.cu"] == tc_ws.__name__
    ablation = (tc_ws.instance(True, 64, dict(PP=0)), tc_ws.instance(False, 128, dict(ST=3)),
                tc_ws.instance(True, 64, dict(NC=3, PP=0)))
    log = compiler.nvrtc_compile(tc_ws.source(), "sm_90a",
                                 name_expressions=tc_ws.instances() + ablation, kernel="tc")
    assert "warning" not in log, log
    assert registry.LADDER["tc90_ws_bwd.cu"] == tc_ws.__name__
    three = (tc_ws.backward_names(True, 128, dict(ST=3))[0],)
    log = compiler.nvrtc_compile(tc_ws.source(tc_ws.BACKWARD_FILE), "sm_90a",
                                 name_expressions=tc_ws.backward_instances() + three, kernel="tc")
    assert "warning" not in log, log
    with pytest.raises(KernelCompileError, match="needs sm_90a"):
        compiler.nvrtc_compile(tc_ws.source(), "sm_90", name_expressions=tc_ws.instances(),
                               kernel="tc")


# kernels/tc.cu runs on sm_80+ (bf16 mma.sync, cp.async); on sm_75 its float16 build as
# compute_75 PTX (variant "turing"; FLASHLAB_TC_TURING=1 runs it on newer GPUs too).
# kernels/tc90.cu (wgmma) needs the arch-specific target sm_90a: each variant compiles for the
# targets its compute capabilities allow.
TARGETS = [(k, name, a) for k, name, v in VARIANTS
           for a in ((v.arch,) if v.arch else ("sm_75", "sm_80", "sm_90"))
           if v.arch or int(a[3:]) >= v.min_cc]


@pytest.mark.parametrize("trace", [False, True], ids=["normal", "trace"])
@pytest.mark.parametrize("kernel,variant,arch", TARGETS,
                         ids=[f"{registry.get(k).variants[n].source}-{a}" for k, n, a in TARGETS])
def test_kernel_compiles_with_nvrtc(kernel, variant, arch, trace):
    log = compiler.nvrtc_compile(sources.ours(kernel, variant), arch, trace, kernel=kernel)
    assert "warning" not in log, log


@pytest.mark.parametrize("bug", sorted(course.BUGS))
def test_planted_bugs_still_apply_and_compile(bug):
    b = course.BUGS[bug]
    src = course.patched(bug, b.kernel)
    assert b.new in src.text and b.old not in src.text and src.name == f"{b.kernel}.cu"
    assert b.line in LINES
    compiler.nvrtc_compile(src, "sm_80", trace=True, kernel=b.kernel,
                           name_expressions=plans.instantiations(b.kernel)[:1])


def test_a_bug_names_its_kernel():
    with pytest.raises(ValueError, match="bug 'no-rescale' is planted in kernel 'fa1', not 'fa2'"):
        course.patched("no-rescale", "fa2")
    with pytest.raises(ValueError, match="bug must be one of"):
        course.patched("no-such-bug", "fa1")
    assert course.patched("mystery-1", "fa1").text == course.patched("no-rescale", "fa1").text


def test_tcs_turing_build_is_float16_only_and_its_tiles_fit_a_t4():
    # kernels/tc.cu as compute_75 PTX (variant "turing", compute capability 7.5): its
    # float16 instances compile in the targets test above; bfloat16 is refused there, naming why
    with pytest.raises(KernelCompileError, match=r"bfloat16 mma.sync needs sm_80: the sm_75 "
                                                 r"build is float16 only"):
        compiler.nvrtc_compile(sources.ours("tc", "turing"), "compute_75", kernel="tc",
                               name_expressions=plans.tc_names(True, 64, variant="turing"))
    for d in registry.get("tc").variants["turing"].head_dims:  # 64 KB of shared memory a block
        for direction in ("forward", "backward"):
            assert plans.tc_plan(d, direction, variant="turing")["smem"] <= 64 * 1024


def test_wgmma_kernels_refuse_plain_sm90():
    with pytest.raises(KernelCompileError,
                       match=r"kernel 'tc' failed to compile for sm_90 \(trace=False, tc90.cu\)"):
        compiler.nvrtc_compile(sources.ours("tc", "wgmma"), "sm_90", kernel="tc",
                               name_expressions=plans.tc_names(True, 64, variant="wgmma"))


def test_a_compile_error_names_the_kernel_and_carries_the_log():
    with pytest.raises(KernelCompileError, match=r"kernel 'fa1' failed to compile for sm_80"):
        compiler.nvrtc_compile(sources.ours("fa1"), "sm_80", kernel="fa1",
                               name_expressions=("no_such_kernel<1>",))


def test_the_old_module_still_takes_the_old_arguments():
    # flashlab.cuda_kernel_ops is an alias: bug names, paths and "tc90" are converted there only
    from flashlab import cuda_kernel_ops as ops

    assert ops.kernel_source("fa1", "no-rescale") == course.patched("no-rescale", "fa1").text
    assert ops.kernel_source("tc90") == sources.ours("tc", "wgmma").text
    assert ops.required_kernels("tc90", "forward") == ("tc90_forward",)
    assert ops.instantiations("tc90") == plans.instantiations("tc", "wgmma")
    assert ops.instantiations("fa1") == () and len(ops.instantiations("fa2")) == 30
    with pytest.raises(KernelCompileError, match=r"kernel 'tc90' failed to compile for sm_90"):
        ops.nvrtc_compile("tc90", "sm_90", name_expressions=ops.tc_names(True, 64, variant="wgmma"))


def test_header_changes_change_the_compiled_source(tmp_path):
    (tmp_path / "h.cuh").write_text("#define X 1\n")
    (tmp_path / "k.cu").write_text('#include "h.cuh"\nint y = X;\n')
    before = sources.expand_includes(tmp_path / "k.cu")
    assert "#define X 1" in before and '#line 2 "k.cu"' in before
    (tmp_path / "h.cuh").write_text("#define X 2\n")
    assert sources.expand_includes(tmp_path / "k.cu") != before


def test_cached_source_follows_an_edited_header(tmp_path, monkeypatch):
    import os

    monkeypatch.setattr(sources, "SOURCE_RECHECK_S", 0.0)  # no grace period: stat on every call

    (tmp_path / "common.cuh").write_text("#define X 1\n")
    (tmp_path / "mine.cu").write_text('#include "common.cuh"\nint y = X;\n')
    first = sources.user_file(tmp_path / "mine.cu", "fa1")
    assert "#define X 1" in first.text and sources.user_file(tmp_path / "mine.cu", "fa1") is first
    (tmp_path / "common.cuh").write_text("#define X 2\n")
    os.utime(tmp_path / "common.cuh", ns=(1, 10**18))  # a later mtime even on coarse clocks
    again = sources.user_file(tmp_path / "mine.cu", "fa1")
    assert "#define X 2" in again.text and again.digest != first.digest


def test_cached_source_is_rechecked_after_the_grace_period(tmp_path, monkeypatch):
    import os

    (tmp_path / "mine.cu").write_text("#define X 1\n")
    monkeypatch.setattr(sources, "SOURCE_RECHECK_S", 3600.0)
    first = sources.user_file(tmp_path / "mine.cu", "fa1")
    (tmp_path / "mine.cu").write_text("#define X 2\n")
    os.utime(tmp_path / "mine.cu", ns=(1, 10**18))
    assert sources.user_file(tmp_path / "mine.cu", "fa1") is first  # within the grace period
    monkeypatch.setattr(sources, "SOURCE_RECHECK_S", 0.0)
    assert "#define X 2" in sources.user_file(tmp_path / "mine.cu", "fa1").text


@pytest.mark.parametrize("kernel,variant,v", VARIANTS, ids=[f"{k}-{n}" for k, n, _ in VARIANTS])
def test_a_users_copy_is_the_variant_whose_kernels_it_defines(tmp_path, monkeypatch, kernel,
                                                             variant, v):
    # decided from what the registry says each variant launches, not by searching for one name;
    # tc.cu is two variants (mma, and turing: compute_75 PTX, a build for older GPUs that a
    # copy is taken for only where forced); the launcher runs such a copy as the device's
    (tmp_path / f"my_{v.source}").write_text(sources.ours(kernel, variant).text)
    mine = sources.user_file(tmp_path / f"my_{v.source}", kernel)
    same = [n for n, w in registry.get(kernel).variants.items() if w.source == v.source]
    assert mine.variant in same and mine.name == f"my_{v.source}"
    assert not sources.missing_kernels(kernel, mine.text, variant=variant)
    (tmp_path / "empty.cu").write_text("// nothing yet\n")  # defines none: the portable one
    assert sources.user_file(tmp_path / "empty.cu", kernel).variant == \
        registry.get(kernel).portable_variant()


T4, A100, H100 = 64 * 1024, 163 * 1024, 227 * 1024


@pytest.mark.parametrize("smem", [48 * 1024, T4, A100, H100], ids=["48K", "T4", "A100", "H100"])
@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("d", [16, 32, 64, 128])
@pytest.mark.parametrize("kernel", ["fa1", "fa2"])
def test_tiles_fit_the_device(kernel, d, direction, smem):
    p = plans.plan(kernel, d, direction, smem)
    assert p["smem"] <= smem and p["Br"] >= 1 and p["Bc"] >= 1


def test_fa1_tiles_follow_A1_L1_when_they_fit():
    # H100, d = 64: M = 58112 floats, Bc = ceil(M / 4d) = 227 does not fit with S_ij; it shrinks
    Br, Bc = plans.fa1_blocks(64, H100, "forward")
    assert Br == 64 and Bc <= 227
    assert plans.fa1_smem_floats(Br, Bc, 64, "forward") * 4 <= H100


def test_unsupported_head_dims_say_what_to_do():
    with pytest.raises(ValueError, match=r"head_dim 40 is not supported by kernel 'fa2' "
                                         r"\(supported: 16, 32, 64, 96, 128\); use kernel='fa1'"):
        plans.plan("fa2", 40, "forward", H100)
    with pytest.raises(ValueError, match="head_dim 300 is not supported by kernel 'fa1'"):
        plans.plan("fa1", 300, "forward", H100)


@pytest.mark.parametrize("kernel", SOURCES)
def test_kernel_files_open_with_the_header_and_cite_lines(kernel):
    text = (sources.kernel_dir() / f"{kernel}.cu").read_text()
    head = text.split("*/")[0]
    for word in ("Reference:", "Launch:", "Layout:"):
        assert word in head, f"{kernel}.cu header lacks {word}"
    tags = set(re.findall(r"\b([ABFG][0-2]:L\d+)\b", text))
    assert tags and tags <= set(LINES), tags - set(LINES)
    for barrier in re.finditer(r"__syncthreads\(\);(.*)", text):
        assert barrier.group(1).strip().startswith("//"), f"unexplained barrier in {kernel}.cu"


def test_an_installed_flashlab_finds_its_kernels(tmp_path):
    # the layout a wheel installs (pyproject maps kernels/ to the data package flashlab.kernels):
    # site/flashlab/... with site/flashlab/kernels/*.cu and no kernels/ beside the package
    import os
    import shutil
    import subprocess
    import sys

    site = tmp_path / "site"
    shutil.copytree(sources.kernel_dir().parent / "flashlab", site / "flashlab",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(sources.kernel_dir(), site / "flashlab" / "kernels")
    code = ("from flashlab.launch import sources as o; print(o.kernel_dir()); "
            "print(sorted(p.name for p in o.kernel_files())); print(len(o.ours('fa2').text))")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, env=env)
    assert out.returncode == 0, out.stderr
    where, names, size = out.stdout.split("\n")[:3]
    assert where == str(site / "flashlab" / "kernels")
    assert names == str(sorted(p.name for p in sources.kernel_files())) and int(size) > 10_000


def test_wgmma_header_is_what_its_generator_writes():
    # kernels/wgmma.cuh is generated by scripts/gen_wgmma.py: the committed text must match it
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("gen_wgmma", root / "scripts" / "gen_wgmma.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.render() == (root / "kernels" / "wgmma.cuh").read_text()


def test_tc_variant_picks_wgmma_on_hopper_only(monkeypatch):
    monkeypatch.delenv("FLASHLAB_TC_WGMMA", raising=False)
    assert plans.tc_variant(90, 128) == "wgmma" and plans.tc_variant(90, 64) == "wgmma"
    assert plans.tc_variant(90, 32) == "wgmma"  # tc90.cu has d = 32, 64 and 128
    assert plans.tc_variant(90, 96) == "mma" and plans.tc_variant(90, 256) == "mma"
    assert plans.tc_variant(80, 128) == "mma" and plans.tc_variant(89, 64) == "mma"
    assert plans.tc_variant(100, 64) == "mma"  # sm_90a code does not run on other majors
    monkeypatch.setenv("FLASHLAB_TC_WGMMA", "0")
    assert plans.tc_variant(90, 128) == "mma"
    p = plans.tc_plan(128, "forward", variant="wgmma")
    assert p["Br"] == 64 * p["config"]["NWG"] and p["Bk"] == p["Bc"] and p["variant"] == "wgmma"
    b = plans.tc_plan(64, "backward", variant="wgmma")
    assert b["grid"] == (8, 8, 8 if b["Br"] == 128 else 4)
    assert plans.tc_plan(64, "forward", dict(BC=64, NWG=1, MINB=4))["variant"] == "wgmma"
    with pytest.raises(ValueError, match="tc90.cu has no head dim 96"):
        plans.tc_plan(96, "forward", variant="wgmma")
    b32 = plans.tc_plan(32, "backward", variant="wgmma")  # dQ split by rows: 128 queries a step
    assert b32["Br"] == 128 and b32["grid"] == (8, 8, 8)


# ----------------------------------------------------------------------------- shared kernel code

def _code_lines(text: str) -> list:
    """(line number, normalised text) of a kernel source's code lines: comments dropped, white
    space folded, blank lines and lines of lone punctuation left out. Kernel parameter lists
    (from `__global__` to the body's `{`) are blanked too: they are the launch contract, the same
    by design in every source that implements a kernel's variants."""
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    lines = [re.sub(r"//.*", "", line) for line in text.split("\n")]
    k = 0
    while k < len(lines):
        if "__global__" in lines[k]:
            end = k
            while not re.search(r"\)\s*\{", lines[end]):
                end += 1
            lines[k:end + 1] = [""] * (end + 1 - k)
            k = end
        k += 1
    return [(n, " ".join(line.split())) for n, line in enumerate(lines, 1)
            if line.strip() and not re.fullmatch(r"[\s{}();,]*", line)]


def _shared_runs(a: str, b: str, run: int = 6) -> list:
    """The first lines (in a, in b) of every run of `run` code lines that a and b share."""
    la, lb = _code_lines(a), _code_lines(b)
    starts = {}
    for x in range(len(lb) - run + 1):
        starts.setdefault(tuple(t for _, t in lb[x:x + run]), lb[x][0])
    return [(la[x][0], starts[key]) for x in range(len(la) - run + 1)
            if (key := tuple(t for _, t in la[x:x + run])) in starts]


def test_shared_runs_finds_a_copied_block():
    block = "".join(f"    x{k} = y * {k};  // step {k}\n" for k in range(6))
    a = "int f() {\n" + block + "}\n"
    b = "/* another file */\nvoid g() {\n\n" + block.replace("  // step", "  /* again */ //") + "}\n"
    assert _shared_runs(a, b) == [(2, 4)]
    assert _shared_runs(a, b.replace("y * 3", "y * 4")) == []


@pytest.mark.parametrize("a,b", [("tc.cu", "tc90.cu"), ("tc.cu", "tc_common.cuh"),
                                 ("tc90.cu", "tc_common.cuh"), ("fa2.cu", "tc_common.cuh")])
def test_kernel_sources_share_code_through_headers(a, b):
    # what tc.cu (mma.sync) and tc90.cu (wgmma) both need lives in tc_common.cuh, the D pre-pass of
    # fa2.cu and the tensor-core kernels in backward_dot.cuh: no 6 code lines stand in both files
    d = sources.kernel_dir()
    runs = _shared_runs((d / a).read_text(), (d / b).read_text())
    assert not runs, f"{a} and {b} share runs of 6 lines starting at (line in {a}, in {b}): {runs}"


def _kernel_parameter_lines(text: str):
    """(kernel, line) for each line of every __global__ kernel's parameter list, comments kept."""
    code = re.sub(r"//[^\n]*|/\*.*?\*/", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text,
                  flags=re.S)  # comments blanked in place: offsets stay those of `text`
    for g in re.finditer(r"__global__\s+void\s+", code):
        at = g.end()
        bounds = re.match(r"__launch_bounds__\s*\(", code[at:])
        if bounds:  # skip its (balanced) arguments
            depth, at = 1, at + bounds.end()
            while depth:
                depth += {"(": 1, ")": -1}.get(code[at], 0)
                at += 1
        name = re.match(r"\s*(\w+)\s*\(", code[at:])
        start = at + name.end()
        end = start + re.search(r"\)\s*\{", code[start:]).end()
        end = text.find("\n", end) % (len(text) + 1)  # to the end of the line the body opens on
        for line in text[start:end].split("\n"):
            yield name.group(1), line


@pytest.mark.parametrize("name", sorted(p.name for p in sources.kernel_dir().glob("*.cu*")))
def test_every_kernel_pointer_parameter_has_a_shape_comment(name):
    # one pointer parameter per line, and on it `// (B, H, Nq, d)`-style: the shape it points at
    text = (sources.kernel_dir() / name).read_text()
    checked = 0
    for kernel, line in _kernel_parameter_lines(text):
        code, _, comment = line.partition("//")
        pointers = re.findall(r"\*\s*(?:__restrict__\s+)?\w+", code)
        assert len(pointers) <= 1, f"{name}: {kernel} has several pointers on one line: {line!r}"
        if pointers:
            assert re.search(r"\([^)]*\w[^)]*\)", comment), \
                f"{name}: {kernel}'s {pointers[0]} has no shape comment: {line!r}"
            checked += 1
    assert checked or "__global__" not in text


def test_tc90_tags_sit_where_the_steps_run():
    # an algorithm tag (F2:L5) marks the statement that runs the step, not a lambda's definition:
    # grep F2:L5 in tc90.cu lands on the calls in the key loop
    lines = (sources.kernel_dir() / "tc90.cu").read_text().split("\n")
    tag = re.compile(r"\b[FG]2:L\d+\b")
    for k, line in enumerate(lines):
        if not re.search(r"=\s*\[[^\]]*\]\s*\(", line):
            continue
        assert not tag.search(line), f"tc90.cu:{k + 1} tags a lambda definition: {line.strip()}"
        above = k - 1
        while above >= 0 and lines[above].strip().startswith(("//", "#")):
            assert not tag.search(lines[above]), \
                f"tc90.cu:{above + 1} tags the lambda defined on line {k + 1}: {lines[above].strip()}"
            above -= 1


def test_fa2_tags_the_causal_mask_with_F2_L5():
    # a student who greps F2:L5 lands on the dot products and on the mask
    text = (sources.kernel_dir() / "fa2.cu").read_text()
    tagged = [k for k, line in enumerate(text.split("\n")) if "F2:L5" in line]
    lines = text.split("\n")
    mask = next(k for k, line in enumerate(lines) if "s[a][b] = (c >= Nk || masked(" in line)
    assert any(0 <= mask - k <= 1 for k in tagged), "the mask line of fa2_forward has no F2:L5 tag"
    assert any("S = Q_i K_j^T" in lines[k] for k in tagged)


def test_no_generic_lambda_in_device_code():
    # the H200's NVRTC (CUDA 13.0) takes a generic lambda (`[&](auto x)`) in device code for a
    # host function and refuses the kernel, while the pip NVRTC the CPU compile tests use
    # accepts it: a device run found it, this finds it first (a plain lambda with a bool works)
    found = [f"{p.name}:{n}: {line.strip()}"
             for p in sorted(sources.kernel_dir().glob("*.cu*"))
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"\]\s*\([^)]*\bauto\b", line)]
    assert not found, "generic lambdas in kernels/ (write the parameter's type):\n" + "\n".join(found)
