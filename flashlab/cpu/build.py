"""CUDA C to a CPU shared library: the translation unit, the C++ compiler, the disk cache.

A kernel source (a launch.sources.Source: includes inlined, #line kept) becomes one C++
translation unit: `#include "cuda_cpu.h"` (flashlab/cpu/runtime/), the source with two
line-for-line rewrites (`extern __shared__ T x[];` -> a pointer to the block's dynamic shared
memory; a static `__shared__` array also registers itself for the race check), and one
`extern "C"` entry point per kernel it launches (fl_entry_N -> fl::run(desc, &kernel)).
Compiler messages keep naming the source's own file and line.

The compiler: $CXX if set, else g++, clang++ or c++ on PATH, else the `ziglang` package's
clang (`pip install "flashlab[cpu]"`). Libraries are cached on disk under
$FLASHLAB_CACHE_DIR (default ~/.cache/flashlab) / cpu, keyed by the unit's text, every runtime
header, the compiler's version and the flags.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

from ..launch.errors import KernelCompileError

RUNTIME = Path(__file__).with_name("runtime")
FLAGS = ("-std=c++17", "-O2", "-g1", "-fPIC", "-shared", "-pthread", "-fno-strict-aliasing",
         "-ffp-contract=off", "-U_FORTIFY_SOURCE", "-Wno-unknown-pragmas", "-Wno-attributes")


# kernel libraries leave the runtime's symbols to the process (the runtime is loaded global)
_UNDEFINED = ("-Wl,-undefined,dynamic_lookup",) if sys.platform == "darwin" else ()


class CpuUnsupported(KernelCompileError):
    """A source uses what only a GPU runs (inline PTX, half types, tensor-core headers)."""


_GPU_ONLY = [
    (re.compile(r"\basm\s*(?:volatile\s*)?\("), "inline PTX (asm)"),
    (re.compile(r"#\s*include\s*<(cuda_fp16|cuda_bf16|mma|cuda_pipeline|cuda/|cooperative_groups)"),
     "a GPU-only header"),
    (re.compile(r"\b(__half|__nv_bfloat16|wmma::)\w*"), "half / bfloat16 or tensor-core types"),
]
_PRAGMA_ONCE = re.compile(r"^[ \t]*#[ \t]*pragma[ \t]+once\b[^\n]*", re.M)
_LINE = re.compile(r'^\s*#\s*line\s+(\d+)(?:\s+"([^"]*)")?')
_EXTERN_SHARED = re.compile(
    r"\bextern\s+__shared__\s+(?:(?:__align__|alignas)\s*\(\s*\d+\s*\)\s+)?"
    r"(?P<type>[A-Za-z_][\w:\s]*?[\w>])\s*(?P<name>[A-Za-z_]\w*)\s*\[\s*\]\s*;")
_STATIC_SHARED = re.compile(r"\b__shared__\s+(?:(?:__align__|alignas)\s*\(\s*\d+\s*\)\s+)?"
                            r"[A-Za-z_][\w:<>\s]*?\s(?P<name>[A-Za-z_]\w*)\s*(?:\[[^\];]+\])+\s*;")


def _numbered(text: str):
    """(offset, file, line, text) of each line of a Source's text, as its #line directives
    number them (the directives themselves left out)."""
    file, line, offset = "<source>", 1, 0
    for raw in text.split("\n"):
        m = _LINE.match(raw)
        if m:
            line, file = int(m[1]), m[2] or file
        else:
            yield offset, file, line, raw
            line += 1
        offset += len(raw) + 1


def where(text: str, index: int) -> tuple[str, int]:
    """(file, line) of character `index` of a Source's text, following its #line directives."""
    found = ("<source>", 1)
    for offset, file, line, _ in _numbered(text):
        if offset > index:
            break
        found = (file, line)
    return found


def _code_only(text: str) -> str:
    """text with comments and string literals blanked (same length, same lines)."""
    def blank(m):
        return re.sub(r"[^\n]", " ", m[0])
    return re.sub(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"', blank, text, flags=re.S)


def check_portable(text: str, name: str) -> None:
    """Raise CpuUnsupported naming the first line that only a GPU can run."""
    code = _code_only(text)
    for pattern, what in _GPU_ONLY:
        m = pattern.search(code)
        if m:
            file, line = where(text, m.start())
            raise CpuUnsupported(
                f"{file}:{line}: {name} uses {what} ({m[0].strip()!r}), which only an NVIDIA GPU "
                "runs; the CPU backend runs SIMT CUDA C (the fp32 kernels naive, fa1, fa2 and "
                "yours). Run this kernel on a GPU, or the step-through (backend='reference')")


def translate(text: str, entries: tuple) -> str:
    """The C++ translation unit of a kernel source and the kernels to export (name
    expressions: 'fa1_forward', 'fa2_forward<64, 64, 64>')."""
    code = _code_only(text)
    out, last, depth = [], 0, 0
    edits = []
    for m in _EXTERN_SHARED.finditer(code):
        edits.append((m.start(), m.end(),
                      f"{m['type'].strip()}* {m['name']} = "
                      f"({m['type'].strip()}*)fl_dynamic_smem();"))
    for m in _STATIC_SHARED.finditer(code):
        if "extern" in code[max(0, m.start() - 12):m.start()]:
            continue
        depth = code[:m.start()].count("{") - code[:m.start()].count("}")
        if depth > 0:  # inside a function: register it with the race check
            n = m["name"]
            edits.append((m.end(), m.end(),
                          f" static thread_local ::fl::SharedRegistration fl_shared_{n}"
                          f"{{\"{n}\", &{n}, sizeof({n})}};"))
    for start, end, new in sorted(edits):
        out.append(text[last:start])
        out.append(new)
        last = end
    out.append(text[last:])
    body = _PRAGMA_ONCE.sub("", "".join(out))  # headers are inlined: once is the only way
    stubs = "".join(f"extern \"C\" int fl_entry_{i}(fl_desc* d) {{ return ::fl::run(d, &{e}, "
                    f"(const void*)&fl_entry_{i}); }}\n" for i, e in enumerate(entries))
    return f'#include "cuda_cpu.h"\n{body}\n#line 1 "<flashlab entry points>"\n{stubs}'


@lru_cache(maxsize=None)
def compiler() -> tuple:
    """The C++ compiler command (a tuple) and its version line; RuntimeError naming the fix
    when there is none."""
    candidates = []
    if os.environ.get("CXX"):
        candidates.append(tuple(shlex.split(os.environ["CXX"])))
    candidates += [(c,) for c in ("g++", "clang++", "c++") if shutil.which(c)]
    try:
        import ziglang  # noqa: F401

        candidates.append((sys.executable, "-m", "ziglang", "c++"))
    except ImportError:
        pass
    for cmd in candidates:
        version = _version(cmd)
        if version is not None:
            return cmd, version
    from ..install import install_hint

    raise RuntimeError("the CPU backend compiles kernels with a C++ compiler and found none "
                       "(g++, clang++, or $CXX): install one (Debian/Ubuntu: apt-get install "
                       f"g++; macOS: xcode-select --install), or {install_hint('cpu')}")


def _version(cmd: tuple) -> str | None:
    """The first line of `cmd --version`, or None where it does not run. Remembered on disk per
    executable (path, size, mtime): asking costs a process start, 10-30 ms, on every run."""
    exe = shutil.which(cmd[0])
    stamp = None
    if exe:
        st = os.stat(exe)
        stamp = f"{' '.join(cmd)}|{os.path.realpath(exe)}|{st.st_size}|{st.st_mtime_ns}"
    memo = cache_dir() / "compilers.txt"
    if stamp:
        try:
            for row in memo.read_text().splitlines():
                key, _, version = row.rpartition("\t")
                if key == stamp:
                    return version
        except OSError:
            pass
    try:
        r = subprocess.run(cmd + ("--version",), capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    version = (r.stdout.strip().splitlines() or ["?"])[0]
    if stamp:
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            with open(memo, "a") as f:
                f.write(f"{stamp}\t{version}\n")
        except OSError:
            pass
    return version


def compiler_name() -> str:
    """The compiler in a few words: "g++ 12.2.0"."""
    cmd, version = compiler()
    number = re.findall(r"\b\d+\.\d+(?:\.\d+)?\b", version)
    return f"{Path(cmd[-1]).name}{' ' + number[-1] if number else ''}"


def lines_of(text: str) -> dict:
    """(file, line) -> that line's text, for a Source's text with #line directives."""
    return {(file, line): raw for _, file, line, raw in _numbered(text)}


_TAG = re.compile(r"\b([A-Z]\d?:L\d+)(?:-L?(\d+))?")


def tags_between(text: str, file: str, lo: int, hi: int) -> list:
    """The algorithm-line tags (A1:L10, ...) on lines lo..hi of `file` in a Source's text."""
    rows = lines_of(text)
    tags = []
    for n in range(lo, hi + 1):
        for m in _TAG.finditer(rows.get((file, n), "")):
            tag = m[0] if not m[2] else f"{m[1]}-L{m[2]}"
            if tag not in tags:
                tags.append(tag)
    return tags


def cache_dir() -> Path:
    base = os.environ.get("FLASHLAB_CACHE_DIR") or Path.home() / ".cache" / "flashlab"
    return Path(base) / "cpu"


@lru_cache(maxsize=1)
def _runtime_digest() -> str:
    h = hashlib.sha256()
    for p in sorted(RUNTIME.glob("*.[hc]*")):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _platform_ok() -> None:
    if sys.platform.startswith("win"):
        raise RuntimeError("the CPU backend runs kernels as fibers with POSIX signals: it needs "
                           "Linux or macOS (on Windows, use WSL)")


def _compile(cmd: tuple, args: tuple, out: Path, label: str, trace: bool, text: str) -> None:
    """Compile `text` (C++) with `args` into library `out` (written whole, then renamed)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="flashlab-cpu-") as tmp:
        src = Path(tmp) / "unit.cpp"
        src.write_text(text)
        lib = Path(tmp) / "unit.so"
        r = subprocess.run(cmd + args + ("-I", str(RUNTIME), "-o", str(lib), str(src)),
                           capture_output=True, text=True)
        if r.returncode != 0:
            log = r.stderr.replace(str(src), "<unit>")
            error = KernelCompileError(f"{label} failed to compile for the CPU ({' '.join(cmd)}, "
                                       f"trace={trace}):\n{_trim(log)}")
            error.log = log
            raise error
        tmp_out = out.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(lib, tmp_out)
        os.replace(tmp_out, out)


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


_loaded: dict = {}


def runtime_library():
    """The runtime (fl_rt.cpp: scheduler, launch, signals), compiled once per machine and
    loaded into the process with its symbols global, for the kernel libraries to use."""
    cmd, version = compiler()
    out = cache_dir() / f"flashlab_rt_{_key(_runtime_digest(), version, ' '.join(cmd), ' '.join(FLAGS))}.so"
    if out not in _loaded:
        if not out.exists():
            _compile(cmd, FLAGS, out, "the CPU runtime (flashlab/cpu/runtime/fl_rt.cpp)", False,
                     (RUNTIME / "fl_rt.cpp").read_text())
        _loaded[out] = ctypes.CDLL(str(out), mode=ctypes.RTLD_GLOBAL)
    return out


def build(unit: str, trace: bool, label: str) -> Path:
    """The shared library of translation unit `unit` (cached on disk); KernelCompileError
    with the compiler's messages when it does not compile. Loads the runtime first."""
    _platform_ok()
    runtime_library()
    cmd, version = compiler()
    flags = FLAGS + (("-DFLASHLAB_TRACE",) if trace else ()) + _UNDEFINED
    out = cache_dir() / f"{_key(unit, _runtime_digest(), version, ' '.join(cmd), ' '.join(flags))}.so"
    if not out.exists():
        _compile(cmd, flags, out, label, trace, unit)
    return out


def _trim(log: str, lines: int = 60) -> str:
    """The compiler's first errors: g++ can print hundreds of lines for one template mistake."""
    rows = [r for r in log.splitlines() if "In file included from" not in r]
    return "\n".join(rows[:lines]) + (f"\n... ({len(rows) - lines} more lines)" if len(rows) > lines else "")
