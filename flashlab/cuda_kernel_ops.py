"""The one place that builds cupy.RawModule objects and launches flashlab's CUDA kernels.

* Sources: kernels/*.cu. `#include "x.cuh"` lines are inlined (with #line markers, so compiler
  messages still name the header and line) before compiling, so CuPy's compile cache, which keys
  on the source text and options, also sees every change in an included header.
* Tile sizes and dynamic shared memory come from the device's opt-in limit per block.
* Inputs are validated here (CuPy validates nothing): type, device, contiguity, dtype, shapes,
  head dim; every scalar is cast explicitly (np.int32 / np.float32) before a launch.
* A failed compile or launch becomes KernelCompileError / KernelLaunchError naming the kernel and
  its arguments.
* Trace mode compiles the same source with -DFLASHLAB_TRACE and returns flashlab.trace.Trace
  objects in the reference's format.

Importing this module does not need CuPy; using a kernel does.
"""
from __future__ import annotations

import hashlib
import math
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import trace as trace_mod
from .checks import Dims, check_backward, check_qkv

FA2_HEAD_DIMS = (16, 32, 64, 96, 128)  # D must be a multiple of 16 (16 x 16 thread grid)
FA1_MAX_HEAD_DIM = 256
TC_HEAD_DIMS = (32, 64, 128)  # rows of 64 or 128 bytes...: the swizzle in kernels/tc.cu
TC_MIN_CC = 80  # mma.sync with bf16, ldmatrix and cp.async need sm_80
TC90_CC = 90  # kernels/tc90.cu (wgmma) is built for sm_90a: compute capability 9.0 exactly
TC90_HEAD_DIMS = (64, 128)
KERNELS = ("naive", "fa1", "fa2", "tc")
FP32_KERNELS = ("naive", "fa1", "fa2")  # float32 in and out; "tc" takes float16 / bfloat16

# kernels/tc.cu tile shapes per head dim (kernels/tc.cu comments say what each means):
#   forward:  BC keys per K/V tile (two stages in shared memory), taken BK keys per online-softmax
#             sub-step; NW warps of WM 16-row slabs each (Br = 16 * WM * NW)
#   backward: BR queries per step, BC keys per thread block, NW warps laid out per product as
#             grids of WS (S^T, dP^T), WKV (dK~, dV~) and WQ (dQ) warps along the first dimension;
#             QS stages of Q_i, dO_i in shared memory (2: double-buffered)
# docs/PERFORMANCE.md records how these were chosen.
TC_FORWARD = {32: dict(BC=128, NW=4, WM=2, BK=64), 64: dict(BC=128, NW=4, WM=2, BK=64),
              128: dict(BC=64, NW=4, WM=2, BK=32)}
TC_BACKWARD = {32: dict(BR=64, BC=128, NW=8, WS=4, WKV=4, WQ=4, QS=2),
               64: dict(BR=128, BC=128, NW=8, WS=2, WKV=4, WQ=4, QS=3),
               128: dict(BR=64, BC=128, NW=8, WS=4, WKV=4, WQ=2, QS=3)}
# kernels/tc90.cu (sm_90a, wgmma) tile shapes per head dim:
#   forward:  BC keys per K/V tile (two stages), NWG warpgroups of 64 query rows (Br = 64 NWG)
#   backward: BR queries per step, BC keys per thread block (BC / 64 warpgroups), QS stages of
#             Q_i, dO_i
#   both:     MINB thread blocks per multiprocessor the compiler must fit in registers
TC90_FORWARD = {64: dict(BC=64, NWG=2, MINB=2), 128: dict(BC=64, NWG=1, MINB=2)}
TC90_BACKWARD = {64: dict(BR=128, BC=128, QS=2, MINB=1), 128: dict(BR=64, BC=128, QS=2, MINB=1)}
# A local include on a line of its own (a trailing // comment allowed). Only spaces and tabs
# around it: \s would match newlines too, and inlining would then shift the lines that follow.
_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"\n]+)"[ \t]*(?://[^\n]*)?$', re.M)


class KernelCompileError(RuntimeError):
    """NVRTC refused a kernel source; the message carries the compiler log."""


class KernelLaunchError(RuntimeError):
    """A kernel launch or run failed; the message names the kernel and its arguments."""


# ----------------------------------------------------------------------------- sources

def kernel_dir() -> Path:
    """kernels/ at the top of a checkout, or the flashlab.kernels data package when installed."""
    here = Path(__file__).resolve().parent
    top = here.parent / "kernels"
    if top.is_dir():
        return top
    return installed_kernel_dir()


def installed_kernel_dir() -> Path:
    """Where an installed (non-editable) flashlab keeps kernels/: the data package
    flashlab.kernels, a namespace package (no __init__.py), found through its import spec."""
    import importlib.util

    spec = importlib.util.find_spec("flashlab.kernels")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("flashlab's kernels/ is missing from this installation; reinstall flashlab")
    return Path(list(spec.submodule_search_locations)[0])


def kernel_files() -> list[Path]:
    return sorted(kernel_dir().glob("*.cu"))


def expand_includes(path: Path, _seen=None, fallback: Path | None = None, _name=None) -> str:
    """The source of `path` with each local #include "x.cuh" replaced by x.cuh's own text.

    Each inlined header is preceded by `#line 1 "x.cuh"` and followed by `#line N "file"`, and
    the whole text starts with `#line 1 "file"`, so compiler messages name the file and line
    they come from, whatever the compiler calls the program. No line of `path` is dropped or
    added (the #include line itself becomes the `#line N` line). A header that is not beside
    the file including it is looked for in `fallback` (a user's lone file gets kernels/'s
    common.cuh) and is then named by its full path. A header seen before is left out
    (#pragma once)."""
    top = _seen is None
    _seen = set() if top else _seen
    text = path.read_text()
    name = _name or path.name

    def quoted(n):
        return '"' + str(n).replace("\\", "\\\\").replace('"', '\\"') + '"'

    def inline(match):
        header, header_name = path.parent / match.group(1), match.group(1)
        if not header.is_file() and fallback is not None and (fallback / match.group(1)).is_file():
            header = fallback / match.group(1)
            header_name = str(header)
        if not header.is_file():
            return match.group(0)  # a system header: NVRTC finds it or says so
        seen = header.resolve()
        if seen in _seen:
            return ""  # #pragma once; the line stays, empty
        _seen.add(seen)
        after = text.count("\n", 0, match.start()) + 2  # the line after the #include
        body = expand_includes(header, _seen, fallback, header_name)
        end = "" if body.endswith("\n") else "\n"
        return f"#line 1 {quoted(header_name)}\n{body}{end}#line {after} {quoted(name)}"

    out = _INCLUDE.sub(inline, text)
    return f"#line 1 {quoted(name)}\n{out}" if top else out


# ----------------------------------------------------------------------------- planted bugs

@dataclass(frozen=True)
class Bug:
    """A planted bug: one exact text replacement in a kernel source, and the line it breaks."""

    name: str
    kernel: str
    direction: str  # "forward" or "backward"
    old: str
    new: str
    line: str
    question: str  # what the planted bug teaches (shown with --inject-bug NAME)
    hunt: str = ""  # the neutral name it goes by in the bug hunt (mystery-N)
    race: bool = False  # a data race: the trace may miss it; compute-sanitizer racecheck will not


BUGS = {b.name: b for b in [
    Bug("no-rescale", "fa1", "forward",
        "(keep[r] * O_i[r * p + x] + add[r] * pv) / l_new[r]",
        "(l_i[r] * O_i[r * p + x] + pv) / l_new[r]", "A1:L12",
        "O_i is updated without the factors e^(m_i - m_new) and e^(m~_ij - m_new). "
        "At which step does the output first go wrong, and why not at j = 0?"),
    Bug("causal-off-by-one", "fa1", "forward",
        "S_ij[r * Bc + c] = masked(causal, i * Br + r, j * Bc + c)",
        "S_ij[r * Bc + c] = masked(causal, i * Br + r + 1, j * Bc + c)",
        "A1:L9",
        "The mask lets query r see key r + 1. Which step and which row show it first?"),
    Bug("fa2-no-rescale", "fa2", "forward",
        "for (int xb = 0; xb < XN; ++xb) o[a][xb] *= alpha;      // F2:L7",
        "// (rescale of O~ left out)", "F2:L7",
        "O~ is not multiplied by e^(m - m_new) when the row max grows. Where does it show?"),
    Bug("fa2-causal-off-by-one", "fa2", "forward",
        "s[a][b] = (c >= Nk || masked(causal, r, c))",
        "s[a][b] = (c >= Nk || masked(causal, r + 1, c))", "F2:L5",
        "The mask lets query r see key r + 1. Which step shows it first?"),
    Bug("dk-no-scale", "fa1", "backward",
        "dK_j[c * p + x] += tau * acc;", "dK_j[c * p + x] += acc;", "B1:L13",
        "dK~_j accumulates dS^T Q_i without the softmax scale tau. Which quantity diverges?"),
    Bug("wrong-l-update", "fa1", "forward",
        "l_new[r] = alpha * l_i[r] + beta * lt;", "l_new[r] = l_i[r] + beta * lt;", "A1:L11",
        "l_new keeps the old sum l_i without the factor e^(m_i - m_new). Why is step j = 0 right?"),
    Bug("missing-sync", "fa1", "forward",
        "__syncthreads();  // S_ij is complete before the row statistics read it",
        "/* barrier removed */", "A1:L10",
        "The barrier between A1:L9 and A1:L10 is gone: a row's statistics may read scores another "
        "warp has not written yet. Does the first divergence stay at one step from run to run?",
        race=True),
]}
# The bug hunt hands these out under neutral names, so the name gives nothing away.
for _n, _name in enumerate(["no-rescale", "wrong-l-update", "causal-off-by-one", "missing-sync",
                            "fa2-no-rescale", "dk-no-scale"], start=1):
    BUGS[_name] = Bug(**{**BUGS[_name].__dict__, "hunt": f"mystery-{_n}"})
HUNT = {b.hunt: b for b in BUGS.values() if b.hunt}


_sources: dict = {}


SOURCE_RECHECK_S = 0.5  # how stale a cached source may be: an edited .cu is seen within this


def kernel_source(kernel: str, bug: str | None = None, path: Path | None = None) -> str:
    """The source to compile for `kernel`: ours, a planted-bug variant, or a user's file at `path`
    (flashlab check), which must define the same kernels with the same signatures as ours."""
    return _source_entry(kernel, bug, path)[1]


def _source_entry(kernel, bug, path):
    """(stamp, source, sha256, checked_at), cached per process while no .cu/.cuh file it may
    include has changed. The files are stat-ed at most every SOURCE_RECHECK_S seconds, so a
    launch costs microseconds, not a directory scan and a hash (small-N timings see that)."""
    key = (kernel, bug, str(path))
    hit = _sources.get(key)
    now = time.monotonic()
    if hit is not None and now - hit[3] < SOURCE_RECHECK_S:
        return hit
    dirs = {kernel_dir()} | ({Path(path).parent} if path is not None else set())
    stamp = tuple(sorted((str(f), f.stat().st_mtime_ns) for dd in dirs for f in dd.iterdir()
                         if f.suffix in (".cu", ".cuh")))
    if hit is None or hit[0] != stamp:
        src = _read_source(kernel, bug, path)
        hit = (stamp, src, hashlib.sha256(src.encode()).hexdigest(), now)
    else:
        hit = hit[:3] + (now,)
    _sources[key] = hit
    return hit


def _read_source(kernel: str, bug: str | None, path) -> str:
    user = path is not None
    path = Path(path) if user else kernel_dir() / f"{kernel}.cu"
    if user and not path.is_file():
        raise ValueError(f"kernel source {path} does not exist")
    # a user's file next to nothing gets our headers (common.cuh) for its #include lines
    src = expand_includes(path, fallback=kernel_dir() if user else None)
    if bug is not None:
        b = BUGS.get(bug) or HUNT.get(bug)
        if b is None:
            raise ValueError(f"bug must be one of {sorted(BUGS)}, got {bug!r}")
        if b.kernel != kernel:
            raise ValueError(f"bug {bug!r} is planted in kernel {b.kernel!r}, not {kernel!r}")
        if src.count(b.old) != 1:
            raise RuntimeError(f"bug {bug!r}: the text it replaces is no longer in {path.name} "
                               "exactly once; update flashlab/cuda_kernel_ops.py BUGS")
        src = src.replace(b.old, b.new)
    return src


def compile_options(trace: bool = False) -> tuple:
    opts = ["-std=c++17"]
    if trace:
        opts.append("-DFLASHLAB_TRACE")
    return tuple(opts)


def tc_names(bf16: bool, d: int, fwd: dict | None = None, bwd: dict | None = None,
             variant: str = "mma") -> tuple:
    """The C++ names of the tensor-core template instances for one dtype and head dim:
    kernels/tc.cu's (variant "mma") or kernels/tc90.cu's (variant "wgmma")."""
    flag = "true" if bf16 else "false"
    if variant == "wgmma":
        f = fwd or TC90_FORWARD[d]
        b = bwd or TC90_BACKWARD[d]
        return (f"tc90_forward<{flag}, {d}, {f['BC']}, {f['NWG']}, {f['MINB']}>",
                f"tc90_backward<{flag}, {d}, {b['BR']}, {b['BC']}, {b['QS']}, {b['MINB']}>",
                f"tc_backward_dot<{flag}>", f"tc_backward_dq<{flag}>")
    f = fwd or TC_FORWARD[d]
    b = bwd or TC_BACKWARD[d]
    return (f"tc_forward<{flag}, {d}, {f['BC']}, {f['NW']}, {f['WM']}, {f['BK']}>",
            f"tc_backward<{flag}, {d}, {b['BR']}, {b['BC']}, {b['NW']}, {b['WS']}, {b['WKV']}, "
            f"{b['WQ']}, {b['QS']}>",
            f"tc_backward_dot<{flag}>", f"tc_backward_dq<{flag}>")


def instantiations(kernel: str) -> tuple:
    """Template instantiations a source needs compiled (the C++ name expressions)."""
    if kernel == "tc":
        return tuple(n for bf16 in (False, True) for d in TC_HEAD_DIMS for n in tc_names(bf16, d))
    if kernel == "tc90":
        return tuple(n for bf16 in (False, True) for d in TC90_HEAD_DIMS
                     for n in tc_names(bf16, d, variant="wgmma"))
    if kernel != "fa2":
        return ()
    return tuple(f"fa2_{direction}<{D}, {B}, {B}>" for direction in ("forward", "backward")
                 for D in FA2_HEAD_DIMS for B in (16, 32, 64))


def required_kernels(kernel: str, direction: str | None = None) -> tuple:
    """The kernels the launcher of `kernel` looks up by name, for one pass ("forward",
    "backward") or both (None): extern "C" names, and the templates whose instantiations()
    it compiles (by their plain names). A user's source for `kernel` must define them."""
    launched = {"naive": (("naive_matmul", "naive_softmax"),
                          ("naive_matmul", "naive_softmax", "naive_dsoftmax")),
                "fa1": (("fa1_forward",), ("fa1_backward",)),
                "fa2": (("fa2_forward",), ("fa2_backward", "fa2_backward_dot")),
                "tc": (("tc_forward",), ("tc_backward", "tc_backward_dot", "tc_backward_dq")),
                "tc90": (("tc90_forward",), ("tc90_backward", "tc_backward_dot",
                                             "tc_backward_dq"))}
    if kernel not in launched:
        raise ValueError(f"kernel must be one of {', '.join(launched)}, got {kernel!r}")
    fwd, bwd = launched[kernel]
    if direction is None:
        return tuple(dict.fromkeys(fwd + bwd))
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    return fwd if direction == "forward" else bwd


_GLOBAL = re.compile(r"\b__global__\s+(?:__launch_bounds__\s*\((?:[^()]|\([^()]*\))*\)\s*|\w+\s+)*"
                     r"(\w+)\s*\(")
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)


def defined_kernels(source: str) -> set:
    """The names of the __global__ functions (extern "C" or templates) a source defines or
    declares, comments left out."""
    names = set(_GLOBAL.findall(_COMMENT.sub(" ", source)))
    names.discard("__launch_bounds__")
    return names


def missing_kernels(kernel: str, source: str, direction: str | None = None) -> tuple:
    """required_kernels(kernel, direction) that `source` does not define. Lenient: a name
    the source uses as `name(` or `name<` outside comments counts as defined (a macro may
    define it), so the compiler, not this, has the last word."""
    code = _COMMENT.sub(" ", source)
    defined = defined_kernels(source)
    return tuple(n for n in required_kernels(kernel, direction) if n not in defined
                 and not re.search(rf"\b{n}\s*[(<]", code))


_DIAGNOSTIC = re.compile(r"^(?P<file>[^\n]+?)\((?P<line>\d+)\): (?P<kind>catastrophic error|error|"
                         r"warning)(?: #[\w-]+)?: (?P<message>[^\n]*)$", re.M)


def compile_diagnostics(log: str) -> list:
    """NVRTC's (or CuPy's) compiler log as a list of dicts: file, line, kind ("error",
    "warning", "catastrophic error"), message and context (the source line and caret that
    follow it, as the compiler printed them)."""
    found = list(_DIAGNOSTIC.finditer(log))
    out = []
    for n, m in enumerate(found):
        end = found[n + 1].start() if n + 1 < len(found) else len(log)
        context = []
        for text in log[m.end():end].split("\n")[1:]:
            if not text.strip() or re.match(r"\d+ errors? detected|Remark:", text.strip()):
                break
            context.append(text.rstrip())
        out.append({"file": m["file"], "line": int(m["line"]), "kind": m["kind"],
                    "message": m["message"].strip(), "context": context})
    return out


def nvrtc_compile(kernel: str, arch: str, trace: bool = False, bug: str | None = None,
                  name_expressions: tuple | None = None, source=None) -> str:
    """Compile kernels/<kernel>.cu to PTX with NVRTC for `arch` (e.g. "sm_75"); no GPU needed.

    Uses the cuda-bindings package (flashlab's nvrtc extra). Returns the compiler log;
    raises KernelCompileError with that log (also as its .log) when NVRTC refuses the source,
    and ImportError (a ModuleNotFoundError without cuda-bindings) with the install command when
    NVRTC is missing. source: a user's file, whose name the program (and the log) takes.
    """
    try:
        from cuda.bindings import nvrtc
    except ImportError as e:
        from .install import install_hint

        raise ModuleNotFoundError(
            "NVRTC is not installed (compiling a kernel without a GPU needs flashlab's nvrtc "
            f"extra: cuda-bindings and nvidia-cuda-nvrtc): {install_hint('nvrtc')}",
            name=e.name) from e

    src = kernel_source(kernel, bug, source).encode()
    names = instantiations(kernel) if name_expressions is None else name_expressions
    program = Path(source).name if source is not None else f"{kernel}.cu"  # as #line names it
    try:
        err, prog = nvrtc.nvrtcCreateProgram(src, program.encode(), 0, [], [])
    except Exception as e:  # cuda-bindings without the library: DynamicLibNotFoundError
        if "nvrtc" not in f"{type(e).__name__} {e}".lower():
            raise
        from .install import install_hint

        raise ImportError("NVRTC's library was not found (cuda-bindings is installed, "
                          f"nvidia-cuda-nvrtc is not): {install_hint('nvrtc')}; {e}") from e
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise KernelCompileError(f"nvrtcCreateProgram({program}) failed: {err}")
    try:
        for name in names:
            nvrtc.nvrtcAddNameExpression(prog, name.encode())
        opts = [o.encode() for o in compile_options(trace)]
        opts.append(f"--gpu-architecture=compute_{arch.removeprefix('sm_')}".encode())
        (res,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        log = log.decode(errors="replace").rstrip("\x00 \n")
        if res != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            error = KernelCompileError(f"kernel {kernel!r} failed to compile for {arch} "
                                       f"(trace={trace}, bug={bug}):\n{log}")
            error.log = log  # the compiler's log alone (compile_diagnostics reads it)
            raise error
        return log
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


# ----------------------------------------------------------------------------- CuPy side

def _cupy():
    try:
        import cupy
    except ImportError as e:  # pragma: no cover - depends on the machine
        from .install import install_hint
        raise RuntimeError(
            f"the CUDA kernels need CuPy: {install_hint('cuda13')} (or the cuda12 extra); "
            "NumPy inputs run the references without it") from e
    return cupy


def gpu_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def available_kernels() -> list[str]:
    """Names of the kernels that run on CuPy arrays on this machine ([] without a GPU); 'tc'
    only where the current GPU has compute capability 8.0 or newer."""
    if not gpu_available():
        return []
    cp = _cupy()
    cc = int(device_limits(cp.cuda.Device().id)["compute_capability"])
    return [k for k in KERNELS if k != "tc" or cc >= TC_MIN_CC]


@lru_cache(maxsize=None)
def device_limits(device_id: int) -> dict:
    cp = _cupy()
    with cp.cuda.Device(device_id) as dev:
        attrs = dev.attributes
        cc = dev.compute_capability
    return {
        "smem_optin": int(attrs.get("MaxSharedMemoryPerBlockOptin", 48 * 1024)),
        "smem_default": 48 * 1024,
        "sm_count": int(attrs.get("MultiProcessorCount", 1)),
        "l2_bytes": int(attrs.get("L2CacheSize", 0)),
        "compute_capability": cc,
    }


_modules: dict = {}


def get_module(kernel: str, trace: bool = False, name_expressions: tuple = (), bug=None,
               source=None):
    """The compiled cupy.RawModule for kernels/<kernel>.cu (cached per process and on disk).

    source: a path to compile instead of ours (flashlab check); cached by its text.
    """
    _, src, digest, _ = _source_entry(kernel, bug, source)
    key = (kernel, trace, name_expressions, bug, digest)
    mod = _modules.get(key)
    if mod is None:
        cp = _cupy()
        try:
            if kernel in ARCH_SPECIFIC:
                mod = _ArchModule(src, compile_options(trace), name_expressions,
                                  ARCH_SPECIFIC[kernel])
            else:
                mod = cp.RawModule(code=src, options=compile_options(trace),
                                   name_expressions=list(name_expressions) or None)
                mod.compile()
        except Exception as e:  # CompileException, or NVRTC missing
            raise KernelCompileError(
                f"kernel {kernel!r} failed to compile ({source or 'flashlab source'}, "
                f"trace={trace}, bug={bug}, "
                f"options {compile_options(trace)}, instantiations {list(name_expressions)}):\n{e}"
            ) from e
        _modules[key] = mod
    return mod


# Kernels built for an arch-specific target (wgmma needs sm_90a, whose code runs on compute
# capability 9.0 only). CuPy's RawModule always compiles for the plain target of the current
# device, so these are compiled with NVRTC here and the cubin loaded with RawModule(path=...).
ARCH_SPECIFIC = {"tc90": "sm_90a"}


class _ArchModule:
    """A RawModule compiled for an arch-specific target; get_function takes the C++ name
    expression (as RawModule does with name_expressions). Cubins are cached on disk next to
    CuPy's, keyed by source, options, target and NVRTC version."""

    def __init__(self, src: str, options: tuple, names: tuple, arch: str):
        import os

        cp = _cupy()
        from cupy.cuda import nvrtc

        version = nvrtc.getVersion()
        opts = tuple(options) + (f"--gpu-architecture={arch}",)
        key = hashlib.sha256(repr((src, opts, names, version)).encode()).hexdigest()[:32]
        cache = Path(os.environ.get("CUPY_CACHE_DIR", Path.home() / ".cupy" / "kernel_cache"))
        cubin_path = cache / f"flashlab_{key}.cubin"
        names_path = cache / f"flashlab_{key}.names"
        if cubin_path.exists() and names_path.exists():
            lowered = names_path.read_text().split("\n")
        else:
            prog = nvrtc.createProgram(src, "tc90.cu", (), ())
            try:
                for n in names:
                    nvrtc.addNameExpression(prog, n)
                try:
                    nvrtc.compileProgram(prog, opts)
                except Exception as e:
                    raise RuntimeError(f"{e}\n{nvrtc.getProgramLog(prog)}") from e
                cubin = nvrtc.getCUBIN(prog)
                lowered = [nvrtc.getLoweredName(prog, n) for n in names]
            finally:
                nvrtc.destroyProgram(prog)
            cache.mkdir(parents=True, exist_ok=True)
            tmp = cubin_path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(cubin)
            os.replace(tmp, cubin_path)
            names_path.write_text("\n".join(lowered))
        self._lowered = dict(zip(names, lowered))
        self._mod = cp.RawModule(path=str(cubin_path))

    def get_function(self, name: str):
        if name not in self._lowered:
            raise KeyError(f"{name} was not among this module's instantiations")
        return self._mod.get_function(self._lowered[name])


_functions: dict = {}  # (id(module), name) -> (module, RawKernel), for modules in _modules
_known: dict = {}  # id(RawKernel) -> RawKernel: the ones _function handed out (kept alive)
_smem_allowed: dict = {}  # (id(RawKernel), device) -> dynamic shared memory allowed there so far


def _function(mod, name: str):
    """mod.get_function(name), once per process. CuPy builds a new RawKernel object on every
    get_function; reusing one lets _launch make the shared-memory opt-in (a driver call) once per
    kernel and device instead of on every launch."""
    hit = _functions.get((id(mod), name))
    if hit is None or hit[0] is not mod:
        hit = (mod, mod.get_function(name))
        _functions[(id(mod), name)] = hit
        _known[id(hit[1])] = hit[1]
    return hit[1]


def _launch(kernel: str, func, grid, block, args, smem: int, describe: str):
    try:
        if smem > 48 * 1024:
            if _known.get(id(func)) is func:
                key = (id(func), _cupy().cuda.runtime.getDevice())
                if _smem_allowed.get(key, 0) < smem:
                    func.max_dynamic_shared_size_bytes = smem
                    _smem_allowed[key] = smem
            else:
                func.max_dynamic_shared_size_bytes = smem
        func(grid, block, args, shared_mem=smem)
    except Exception as e:
        raise KernelLaunchError(
            f"kernel {kernel!r} failed to launch: grid {grid}, block {block}, "
            f"{smem} bytes of shared memory, {describe}: {e}") from e


_dtype_names: dict = {}


def _dtype_name(dtype) -> str:
    """np.dtype(dtype).name, remembered per dtype object (a launch asks 5-8 times; NumPy's name
    lookup is microseconds each)."""
    name = _dtype_names.get(dtype)
    if name is None:
        name = _dtype_names[dtype] = np.dtype(dtype).name
    return name


def check_device_inputs(kernel: str, names_arrays: dict, dtypes=None) -> int:
    """Every array is a contiguous CuPy array on one device, of the dtype the kernel takes
    (float32; for 'tc' float16 or bfloat16, one for all, lse float32); returns the device id."""
    cp = _cupy()
    first_name, device = None, None
    dtypes = dtypes or {}
    for name, x in names_arrays.items():
        if not isinstance(x, cp.ndarray):
            raise TypeError(
                f"{name} is a {type(x).__module__}.{type(x).__name__}, but the other inputs are "
                f"CuPy arrays: pass all inputs as CuPy arrays (cupy.asarray({name})) or all as NumPy")
        if device is None:
            first_name, device = name, x.device.id
        elif x.device.id != device:
            raise ValueError(f"{name} is on GPU {x.device.id} but {first_name} is on GPU {device}: "
                             f"move them to one device ({name} = cupy.asarray({name}) "
                             f"inside `with cupy.cuda.Device({device}):`)")
        want = dtypes.get(name, ("float32",))
        if _dtype_name(x.dtype) not in want:
            if kernel == "tc" and name != "lse":
                raise TypeError(
                    f"{name} has dtype {x.dtype}; kernel 'tc' (tensor cores) takes float16 or "
                    f"bfloat16 with one dtype for every input: pass {name}.astype(cupy.bfloat16), "
                    "or use kernel='fa2' for float32")
            raise TypeError(f"{name} has dtype {x.dtype}; kernel {kernel!r} takes "
                            f"{' or '.join(want)}: pass {name}.astype(cupy.{want[0]})")
        if not x.flags.c_contiguous:
            raise ValueError(f"{name} is not contiguous (shape {x.shape}, strides {x.strides}); "
                             f"pass cupy.ascontiguousarray({name})")
    return device


def _check_sizes(kernel: str, dims: Dims):
    if dims.B * dims.H > 65535:
        raise ValueError(f"B*H = {dims.B * dims.H} heads exceed the 65535 thread-block rows of "
                         f"kernel {kernel!r}; split the batch")
    if max(dims.Nq, dims.Nk) * dims.d >= 2**31:
        raise ValueError(f"N*d = {max(dims.Nq, dims.Nk) * dims.d} per head passes 2^31; "
                         f"kernel {kernel!r} indexes a head with 32-bit ints")


def _check_head_dim(kernel: str, d: int):
    if kernel == "tc" and d not in TC_HEAD_DIMS:
        raise ValueError(f"head_dim {d} is not supported by kernel 'tc' (supported: "
                         f"{', '.join(map(str, TC_HEAD_DIMS))}); pad the head dim to one of "
                         f"those, or use kernel='auto' (runs fa2 or fa1 on float32 copies), or "
                         f"kernel='fa1' on float32 inputs (any d up to {FA1_MAX_HEAD_DIM})")
    if kernel == "fa2" and d not in FA2_HEAD_DIMS:
        raise ValueError(f"head_dim {d} is not supported by kernel 'fa2' (supported: "
                         f"{', '.join(map(str, FA2_HEAD_DIMS))}); use kernel='fa1' "
                         f"(any d up to {FA1_MAX_HEAD_DIM}) or pad the head dim")
    if kernel == "fa1" and d > FA1_MAX_HEAD_DIM:
        raise ValueError(f"head_dim {d} is not supported by kernel 'fa1' (d <= "
                         f"{FA1_MAX_HEAD_DIM}); split the head")


# ----------------------------------------------------------------------------- tile choice

def fa1_smem_floats(Br: int, Bc: int, d: int, direction: str) -> int:
    if direction == "forward":
        return (2 * Bc + 2 * Br) * (d + 1) + Br * Bc + 6 * Br
    return (4 * Bc + 4 * Br) * (d + 1) + 2 * Br * Bc + 2 * Br


def fa1_blocks(d: int, smem_bytes: int, direction: str) -> tuple[int, int]:
    """A1:L1 with M = the device's shared memory in floats, then shrunk until the tiles fit."""
    M = smem_bytes // 4
    Bc = math.ceil(M / (4 * d))
    Br = min(Bc, d)
    while fa1_smem_floats(Br, Bc, d, direction) * 4 > smem_bytes:
        if Bc > Br:
            Bc -= max(1, Bc // 16)
        else:
            Br -= 1
            Bc = Br
        if Br < 1:
            raise ValueError(f"head_dim {d}: no fa1 tile fits in {smem_bytes} bytes of shared memory")
    return Br, Bc


def fa2_smem_floats(BR: int, BC: int, D: int, direction: str) -> int:
    PP = BC + 16 // (BR // 16)
    if direction == "forward":
        return BR * (D + 4) + BC * (D + 4) + BC * D + BR * PP
    return 2 * BC * (D + 4) + 2 * BR * (D + 4) + 2 * BR * PP + 2 * BR


def fa2_blocks(d: int, smem_bytes: int, direction: str) -> tuple[int, int]:
    for B in (64, 32, 16):
        if fa2_smem_floats(B, B, d, direction) * 4 <= smem_bytes:
            return B, B
    raise ValueError(f"head_dim {d}: no fa2 tile fits in {smem_bytes} bytes of shared memory")


def tc_variant(compute_capability: int, d: int) -> str:
    """Which tensor-core source runs: "wgmma" (kernels/tc90.cu) on compute capability 9.0 at its
    head dims, else "mma" (kernels/tc.cu). FLASHLAB_TC_WGMMA=0 forces "mma" (for comparisons)."""
    import os

    if (int(compute_capability) == TC90_CC and d in TC90_HEAD_DIMS
            and os.environ.get("FLASHLAB_TC_WGMMA", "1") != "0"):
        return "wgmma"
    return "mma"


def tc_head_group(l2_bytes: int, N: int, d: int, BH: int, itemsize: int = 2) -> int:
    """Heads per group of the causal block order (kernels/tc_common.cuh block_order,
    reference.tc_block_order): as many heads as have the operands every block of a head streams
    through (forward: K and V, N = Nk; backward: Q and dO, N = Nq; 2 N d itemsize bytes) within a
    third of L2, at least 1 and at most BH. Resident thread blocks then share few heads' operands
    while the longest blocks of all those heads start first."""
    per_head = 2 * N * d * itemsize
    return max(1, min(BH, (l2_bytes // 3) // max(1, per_head)))


def _config_variant(config: dict | None, variant: str) -> str:
    """A tuning config names its variant by its keys (NWG / MINB: kernels/tc90.cu)."""
    if config is None:
        return variant
    return "wgmma" if ("NWG" in config or "MINB" in config) else "mma"


def tc_plan(d: int, direction: str, config: dict | None = None, variant: str = "mma") -> dict:
    """Tile shape, threads and shared memory of a tensor-core launch (no GPU needed): kernels/tc.cu
    (variant "mma") or kernels/tc90.cu (variant "wgmma"; a config with NWG or MINB is one)."""
    _check_head_dim("tc", d)
    variant = _config_variant(config, variant)
    if variant == "wgmma":
        if d not in TC90_HEAD_DIMS:
            raise ValueError(f"kernels/tc90.cu has no head dim {d} (it has {TC90_HEAD_DIMS})")
        if direction == "forward":
            c = dict(config or TC90_FORWARD[d])
            Br, Bc = 64 * c["NWG"], c["BC"]
            return {"Br": Br, "Bc": Bc, "smem": (Br + 4 * Bc) * d * 2, "threads": 128 * c["NWG"],
                    "config": c, "variant": variant, "warps": 4 * c["NWG"], "Bk": Bc}
        c = dict(config or TC90_BACKWARD[d])
        Br, Bc = c["BR"], c["BC"]
        # K_j, V_j, dS^T, QS stages of (Q_i, dO_i) and of (L_i, D_i)
        smem = (2 * Bc + 2 * c["QS"] * Br) * d * 2 + Bc * Br * 2 + 2 * c["QS"] * Br * 4
        warps = Bc // 16
        return {"Br": Br, "Bc": Bc, "smem": smem, "threads": 2 * Bc, "config": c,
                "variant": variant, "warps": warps,
                "grid": (warps, warps, 4 if Br == 64 else warps)}  # kernels/tc90.cu's header
    if direction == "forward":
        c = dict(config or TC_FORWARD[d])
        Br, Bc = 16 * c["WM"] * c["NW"], c["BC"]
        smem = (Br + 4 * Bc) * d * 2  # Q_i, two stages of K_j and V_j
    else:
        c = dict(config or TC_BACKWARD[d])
        Br, Bc = c["BR"], c["BC"]
        # K_j, V_j, P^T, dS^T, QS stages of (Q_i, dO_i) and of (L_i, D_i)
        smem = (2 * Bc + 2 * c["QS"] * Br) * d * 2 + 2 * Bc * Br * 2 + 2 * c["QS"] * Br * 4
        return {"Br": Br, "Bc": Bc, "smem": smem, "threads": 32 * c["NW"], "config": c,
                "variant": variant, "warps": c["NW"], "grid": (c["WS"], c["WKV"], c["WQ"])}
    return {"Br": Br, "Bc": Bc, "smem": smem, "threads": 32 * c["NW"], "config": c,
            "variant": variant, "warps": c["NW"], "Bk": c["BK"]}


def plan(kernel: str, d: int, direction: str, smem_bytes: int, variant: str = "mma") -> dict:
    """Tile sizes and shared memory a launch of `kernel` will use (no GPU needed); for 'tc',
    `variant` picks kernels/tc.cu ("mma") or kernels/tc90.cu ("wgmma"), see tc_variant."""
    _check_head_dim(kernel, d)
    if kernel == "tc":
        p = tc_plan(d, direction, variant=variant)
        if p["smem"] > smem_bytes:
            raise ValueError(f"kernel 'tc' at head_dim {d} needs {p['smem']} bytes of shared "
                             f"memory per block; this GPU allows {smem_bytes}: use kernel='fa2' "
                             f"or 'fa1' on float32 inputs (x.astype(cupy.float32))")
        return p
    if kernel == "fa1":
        Br, Bc = fa1_blocks(d, smem_bytes, direction)
        return {"Br": Br, "Bc": Bc, "smem": fa1_smem_floats(Br, Bc, d, direction) * 4}
    if kernel == "fa2":
        Br, Bc = fa2_blocks(d, smem_bytes, direction)
        return {"Br": Br, "Bc": Bc, "smem": fa2_smem_floats(Br, Bc, d, direction) * 4}
    return {"Br": 0, "Bc": 0, "smem": 0}


# ----------------------------------------------------------------------------- launches

def _setup(kernel: str, dims: Dims, arrays: dict, trace: bool):
    """Checks shared by every launch; returns (cupy, device, limits, tau, causal, description)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)} or 'auto', got {kernel!r}")
    dtypes = None
    if kernel == "tc":
        first = _dtype_name(next(iter(arrays.values())).dtype)
        one = (first,) if first in ("float16", "bfloat16") else ("float16", "bfloat16")
        dtypes = {name: ("float32",) if name == "lse" else one for name in arrays}
    device = check_device_inputs(kernel, arrays, dtypes)
    _check_head_dim(kernel, dims.d)
    if kernel == "tc":
        cc = int(device_limits(device)["compute_capability"])
        if cc < TC_MIN_CC:
            raise RuntimeError(f"kernel 'tc' needs a GPU of compute capability 8.0 or newer "
                               f"(mma.sync bf16, cp.async); this one is {cc // 10}.{cc % 10}: "
                               f"use kernel='auto' (falls back to fa2 in float32)")
    _check_sizes(kernel, dims)
    if trace and kernel == "naive":
        raise ValueError("kernel 'naive' has no tile steps to trace (A0 writes S and P whole); "
                         "trace 'fa1' or 'fa2'")
    desc = (f"q {(dims.B, dims.H, dims.Nq, dims.d)}, k {(dims.B, dims.H, dims.Nk, dims.d)}, "
            f"causal={dims.causal}, scale={dims.scale:.4g}")
    return (_cupy(), device, device_limits(device), np.float32(dims.scale),
            np.int32(dims.causal), desc)


def _n_by_n(cp, BH, Nq, Nk, desc):
    """The two (B*H, Nq, Nk) matrices standard attention keeps in HBM (S and P, or P and dP)."""
    try:
        return cp.empty((BH, Nq, Nk), cp.float32), cp.empty((BH, Nq, Nk), cp.float32)
    except cp.cuda.memory.OutOfMemoryError as e:
        raise MemoryError(f"kernel 'naive' needs {2 * BH * Nq * Nk * 4 / 1e9:.1f} GB for two N x N "
                          f"matrices ({desc}); use kernel='fa2'") from e


def _trace_buffers(cp, algorithm, dims: Dims, Br, Bc):
    empty = trace_mod.Trace.empty(algorithm, "", dims.B, dims.H, dims.Nq, dims.Nk, dims.d, Br, Bc)
    bufs = {name: cp.full((dims.B * dims.H,) + v.shape[2:], cp.nan, dtype=cp.float32)
            for name, v in empty.values.items()}
    seq = cp.full((dims.B * dims.H,) + empty.seq.shape[2:], -1, dtype=cp.int64)
    return empty, bufs, seq


def _finish_trace(empty, bufs, seq, label):
    tr = empty
    tr.label = label
    for name, buf in bufs.items():
        tr.values[name] = buf.get().astype(np.float64).reshape(tr.values[name].shape)
    tr.seq = seq.get().reshape(tr.seq.shape)
    return tr


def _outputs(cp, out, shapes, names, dtypes=None):
    """Output buffers: fresh, or the caller's (tests pass NaN-poisoned ones) after a check."""
    dtypes = dtypes or [np.float32] * len(shapes)
    if out is None:
        return [cp.empty(s, dt) for s, dt in zip(shapes, dtypes)]
    if len(out) != len(shapes):
        raise ValueError(f"out must hold {len(shapes)} arrays ({', '.join(names)})")
    for name, buf, shape, dt in zip(names, out, shapes, dtypes):
        if buf.shape != shape or buf.dtype != np.dtype(dt) or not buf.flags.c_contiguous:
            raise ValueError(f"out {name} must be a contiguous {np.dtype(dt).name} array of "
                             f"shape {shape}")
    return list(out)


def forward(kernel: str, q, k, v, causal=False, softmax_scale=None, trace=False, bug=None,
            out=None, source=None, config=None):
    """Run kernel `kernel` forward. Returns (o, lse) or, with trace=True, (o, lse, Trace).

    out: optional (o, lse) buffers to write into. config: kernel 'tc' only, a tile shape other
    than the default, for tuning: kernels/tc.cu's (dict(BC=, NW=, WM=, BK=)) or kernels/tc90.cu's
    (dict(BC=, NWG=, MINB=); compute capability 9.0 only).
    """
    dims = check_qkv(q, k, v, causal, softmax_scale)
    cp, device, limits, tau, causal_i, desc = _setup(kernel, dims, {"q": q, "k": k, "v": v}, trace)
    B, H, Nq, Nk, d = dims.B, dims.H, dims.Nq, dims.Nk, dims.d
    BH = B * H
    with cp.cuda.Device(device):
        o, lse = _outputs(cp, out, [(B, H, Nq, d), (B, H, Nq)], ("o", "lse"),
                          [q.dtype, np.float32])
        if kernel == "tc":
            return _tc_forward(cp, q, k, v, o, lse, dims, tau, causal_i, desc, trace, bug,
                               source, config)
        if kernel == "naive":
            mod = get_module("naive", bug=bug, source=source)
            S, P = _n_by_n(cp, BH, Nq, Nk, desc)
            mm = _function(mod, "naive_matmul")
            _launch("naive", mm, (math.ceil(Nk / 64), math.ceil(Nq / 64), BH), (256,),
                    (q, k, S, np.int32(Nq), np.int32(Nk), np.int32(d), np.int32(0), np.int32(1),
                     tau, causal_i), 0, desc)                                      # A0:L1
            _launch("naive", _function(mod, "naive_softmax"), (BH * Nq,), (256,),
                    (S, P, lse, np.int32(Nk)), 0, desc)                            # A0:L2
            _launch("naive", mm, (math.ceil(d / 64), math.ceil(Nq / 64), BH), (256,),
                    (P, v, o, np.int32(Nq), np.int32(d), np.int32(Nk), np.int32(0), np.int32(0),
                     np.float32(1.0), np.int32(0)), 0, desc)                       # A0:L3
            return o, lse
        direction = "forward"
        p = plan(kernel, d, direction, limits["smem_optin"])
        Br, Bc = p["Br"], p["Bc"]
        algorithm = "A1" if kernel == "fa1" else "F2"
        if trace:
            empty, bufs, seq = _trace_buffers(cp, algorithm, dims, Br, Bc)
            targs = (bufs["m_i"], bufs["l_i"], bufs["O_i" if kernel == "fa1" else "O~_i"], seq)
        else:
            dummy = cp.empty(1, cp.float32)
            targs = (dummy, dummy, dummy, cp.empty(1, cp.int64))
        if kernel == "fa1":
            mod = get_module("fa1", trace, bug=bug, source=source)
            l = cp.empty((BH, Nq), cp.float32)
            m = cp.empty((BH, Nq), cp.float32)
            _launch("fa1", _function(mod, "fa1_forward"), (BH,), (128,),
                    (q, k, v, o, l, m, lse, np.int32(Nq), np.int32(Nk), np.int32(d),
                     np.int32(Br), np.int32(Bc), tau, causal_i) + targs, p["smem"], desc)
        else:
            name = f"fa2_forward<{d}, {Br}, {Bc}>"
            mod = get_module("fa2", trace, (name,), bug=bug, source=source)
            _launch("fa2", _function(mod, name), (math.ceil(Nq / Br), BH), (256,),
                    (q, k, v, o, lse, np.int32(Nq), np.int32(Nk), tau, causal_i) + targs,
                    p["smem"], desc)
        if trace:
            return o, lse, _finish_trace(empty, bufs, seq, f"{kernel} forward")
        return o, lse


def backward(kernel: str, do, q, k, v, o, lse, causal=False, softmax_scale=None, trace=False,
             bug=None, out=None, source=None, config=None):
    """Run kernel `kernel` backward. Returns (dq, dk, dv) or, with trace=True, (dq, dk, dv, Trace).

    out: optional (dq, dk, dv) buffers to write into. config: kernel 'tc' only, a tile shape
    other than the default, for tuning: kernels/tc.cu's (dict(BR=, BC=, NW=, WS=, WKV=, WQ=, QS=))
    or kernels/tc90.cu's (dict(BR=, BC=, QS=, MINB=)).
    """
    dims = check_backward(do, q, k, v, o, lse, causal, softmax_scale)
    cp, device, limits, tau, causal_i, desc = _setup(
        kernel, dims, {"do": do, "q": q, "k": k, "v": v, "o": o, "lse": lse}, trace)
    B, H, Nq, Nk, d = dims.B, dims.H, dims.Nq, dims.Nk, dims.d
    BH = B * H
    with cp.cuda.Device(device):
        dq, dk, dv = _outputs(cp, out, [(B, H, Nq, d), (B, H, Nk, d), (B, H, Nk, d)],
                              ("dq", "dk", "dv"), [q.dtype] * 3)
        if kernel == "tc":
            return _tc_backward(cp, do, q, k, v, o, lse, dq, dk, dv, dims, tau, causal_i, desc,
                                trace, bug, source, config)
        if kernel == "naive":
            mod = get_module("naive", bug=bug, source=source)
            mm = _function(mod, "naive_matmul")
            S, P = _n_by_n(cp, BH, Nq, Nk, desc)
            scratch_lse = cp.empty((BH, Nq), cp.float32)

            def gemm(A, Bm, C, M, N, K, ta, tb, alpha, causal_flag=0):
                _launch("naive", mm, (math.ceil(N / 64), math.ceil(M / 64), BH), (256,),
                        (A, Bm, C, np.int32(M), np.int32(N), np.int32(K), np.int32(ta),
                         np.int32(tb), np.float32(alpha), np.int32(causal_flag)), 0, desc)

            gemm(q, k, S, Nq, Nk, d, 0, 1, tau, dims.causal)     # S = tau Q K^T (recomputed)
            _launch("naive", _function(mod, "naive_softmax"), (BH * Nq,), (256,),
                    (S, P, scratch_lse, np.int32(Nk)), 0, desc)  # P = softmax(S)
            gemm(P, do, dv, Nk, d, Nq, 1, 0, 1.0)                # dV = P^T dO
            gemm(do, v, S, Nq, Nk, d, 0, 1, 1.0)                 # dP = dO V^T (into S)
            _launch("naive", _function(mod, "naive_dsoftmax"), (BH * Nq,), (256,),
                    (P, S, np.int32(Nk)), 0, desc)               # dS = P * (dP - D)
            gemm(S, k, dq, Nq, d, Nk, 0, 0, tau)                 # dQ = tau dS K
            gemm(S, q, dk, Nk, d, Nq, 1, 0, tau)                 # dK = tau dS^T Q
            return dq, dk, dv
        p = plan(kernel, d, "backward", limits["smem_optin"])
        Br, Bc = p["Br"], p["Bc"]
        algorithm = "B1" if kernel == "fa1" else "G2"
        if trace:
            empty, bufs, seq = _trace_buffers(cp, algorithm, dims, Br, Bc)
            dq_name = "dQ_i" if kernel == "fa1" else "dQ_ij"
            targs = (bufs[dq_name], bufs["dK~_j"], bufs["dV~_j"], seq)
        else:
            dummy = cp.empty(1, cp.float32)
            targs = (dummy, dummy, dummy, cp.empty(1, cp.int64))
        lse32 = lse.astype(cp.float32, copy=False)
        if kernel == "fa1":
            mod = get_module("fa1", trace, bug=bug, source=source)
            _launch("fa1", _function(mod, "fa1_backward"), (BH,), (128,),
                    (q, k, v, o, do, lse32, dq, dk, dv, np.int32(Nq), np.int32(Nk), np.int32(d),
                     np.int32(Br), np.int32(Bc), tau, causal_i) + targs, p["smem"], desc)
        else:
            name = f"fa2_backward<{d}, {Br}, {Bc}>"
            mod = get_module("fa2", trace, (name,), bug=bug, source=source)
            Dvec = cp.empty((BH, Nq), cp.float32)
            rows = BH * Nq
            _launch("fa2", _function(mod, "fa2_backward_dot"), (math.ceil(rows / 8),), (256,),
                    (do, o, Dvec, np.int64(rows), np.int32(d)), 0, desc)          # G2:L0
            dq.fill(0)  # G2:L7 accumulates into dQ with atomic adds
            _launch("fa2", _function(mod, name), (math.ceil(Nk / Bc), BH), (256,),
                    (q, k, v, do, lse32, Dvec, dq, dk, dv, np.int32(Nq), np.int32(Nk), tau,
                     causal_i) + targs, p["smem"], desc)
        if trace:
            return dq, dk, dv, _finish_trace(empty, bufs, seq, f"{kernel} backward")
        return dq, dk, dv


# ----------------------------------------------------------------------------- tensor cores

def _tc_module(bf16: bool, d: int, trace: bool, bug, source, fwd=None, bwd=None, variant="mma"):
    names = tc_names(bf16, d, fwd, bwd, variant)
    return get_module("tc90" if variant == "wgmma" else "tc", trace, names, bug=bug,
                      source=source), names


def tc_launch_plan(device: int, d: int, direction: str, config: dict | None = None,
                   source=None) -> dict:
    """tc_plan for the variant that runs: the one `config` names, else the one a user's
    `source` is a copy of (it defines tc90_forward: kernels/tc90.cu), else tc_variant's for
    `device`."""
    cc = int(device_limits(device)["compute_capability"])
    variant = tc_variant(cc, d)
    if source is not None and config is None:
        variant = "wgmma" if "tc90_forward" in kernel_source("tc", path=source) else "mma"
    return tc_plan(d, direction, config, variant)


_tc_dummies: dict = {}


def _tc_trace_args(cp, trace, algorithm, dims, Br, Bc, names):
    if trace:
        empty, bufs, seq = _trace_buffers(cp, algorithm, dims, Br, Bc)
        return (empty, bufs, seq), tuple(bufs[n] for n in names) + (seq,)
    dev = cp.cuda.Device().id
    if dev not in _tc_dummies:  # the untraced build never touches these; one pair per GPU
        _tc_dummies[dev] = (cp.empty(1, cp.float32), cp.empty(1, cp.int64))
    f, i = _tc_dummies[dev]
    return None, (f, f, f, i)


def _tc_forward(cp, q, k, v, o, lse, dims: Dims, tau, causal_i, desc, trace, bug, source, config):
    """F2 on tensor cores (kernels/tc.cu tc_forward)."""
    B, H, Nq, Nk, d = dims.B, dims.H, dims.Nq, dims.Nk, dims.d
    bf16 = _dtype_name(q.dtype) == "bfloat16"
    p = tc_launch_plan(q.device.id, d, "forward", config, source)
    mod, names = _tc_module(bf16, d, trace, bug, source, fwd=p["config"], variant=p["variant"])
    tr, targs = _tc_trace_args(cp, trace, "F2", dims, p["Br"], p["Bc"], ("m_i", "l_i", "O~_i"))
    group = tc_head_group(device_limits(q.device.id)["l2_bytes"], Nk, d, B * H) if causal_i else 1
    _launch("tc", _function(mod, names[0]), (math.ceil(Nq / p["Br"]), B * H), (p["threads"],),
            (q, k, v, o, lse, np.int32(Nq), np.int32(Nk), tau, causal_i, np.int32(group)) + targs,
            p["smem"], desc)
    if trace:
        return o, lse, _finish_trace(*tr, "tc forward")
    return o, lse


def _tc_backward(cp, do, q, k, v, o, lse, dq, dk, dv, dims: Dims, tau, causal_i, desc, trace,
                 bug, source, config):
    """G2 on tensor cores: the D pre-pass (which also zeroes the fp32 dQ accumulator), the
    per-K/V-block kernel (atomic adds into dQ), and dQ's rounding to the input dtype."""
    B, H, Nq, Nk, d = dims.B, dims.H, dims.Nq, dims.Nk, dims.d
    BH = B * H
    bf16 = _dtype_name(q.dtype) == "bfloat16"
    p = tc_launch_plan(q.device.id, d, "backward", config, source)
    mod, names = _tc_module(bf16, d, trace, bug, source, bwd=p["config"], variant=p["variant"])
    tr, targs = _tc_trace_args(cp, trace, "G2", dims, p["Br"], p["Bc"], ("dQ_ij", "dK~_j", "dV~_j"))
    rows = BH * Nq
    dq_acc = cp.empty((BH, Nq, d), cp.float32)
    Dvec = cp.empty((BH, Nq), cp.float32)
    _launch("tc", _function(mod, names[2]), (math.ceil(rows / 8),), (256,),
            (do, o, Dvec, dq_acc, np.int64(rows), np.int32(d)), 0, desc)          # G2:L0
    group = tc_head_group(device_limits(q.device.id)["l2_bytes"], Nq, d, BH) if causal_i else 1
    _launch("tc", _function(mod, names[1]), (math.ceil(Nk / p["Bc"]), BH), (p["threads"],),
            (q, k, v, do, lse, Dvec, dq_acc, dk, dv, np.int32(Nq), np.int32(Nk), tau, causal_i,
             np.int32(group)) + targs, p["smem"], desc)
    n = rows * d
    _launch("tc", _function(mod, names[3]), (math.ceil(n / 256),), (256,),
            (dq_acc, dq, np.int64(n), tau), 0, desc)
    if trace:
        return dq, dk, dv, _finish_trace(*tr, "tc backward")
    return dq, dk, dv
