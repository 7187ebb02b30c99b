"""The CPU compile backend: a module of a Source whose kernels run on NumPy arrays.

`CpuBackend.compile(source, options, name_expressions, arch)` is the launch.compiler seam's
second backend. Its module compiles lazily: get_function(name) builds (or loads from the disk
cache) a library with the source's extern "C" kernels and that one template instance, so a
source with 96 fa2 instances costs one instance's compile, not 96. A kernel is called as
CuPy's are, kernel(grid, block, args, shared_mem=bytes), with NumPy arrays and NumPy scalars;
a fault raises KernelFault (kind, message, the file and line where it could be found).

Settings (environment): FLASHLAB_CPU_WORKERS (OS threads running blocks; default the cores
this process may use, at most 8; the race check runs on one, so its two block orders are
exact), FLASHLAB_CPU_RACECHECK (0 turns the two-order race check off, and lets the workers
run), FLASHLAB_CPU_TIMEOUT (seconds, default 120), FLASHLAB_CPU_STACK_KB (per CUDA thread,
default 64).
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess

import numpy as np

from ..launch.errors import KernelLaunchError
from . import build

_CODES = {"float32": b"f", "float64": b"d", "int32": b"i", "uint32": b"u", "int64": b"l",
          "uint64": b"L", "int16": b"h", "uint16": b"H", "int8": b"b", "bool": b"b",
          "uint8": b"B"}
FAULTS = {1: "arguments", 2: "out-of-bounds", 3: "barrier-divergence", 4: "warp-divergence",
          5: "race", 6: "timeout", 7: "fault", 8: "assert", 9: "launch"}


class KernelFault(KernelLaunchError):
    """A kernel run on the CPU stopped at a fault: kind (FAULTS' values), where ("file:line"
    or None) and the message."""

    def __init__(self, message: str, kind: str, where: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.where = where


class _Arg(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("bytes", ctypes.c_uint64), ("name", ctypes.c_char_p),
                ("kind", ctypes.c_char), ("code", ctypes.c_char), ("pad", ctypes.c_char * 6)]


class _Desc(ctypes.Structure):
    _fields_ = [("kernel", ctypes.c_char_p), ("grid", ctypes.c_uint32 * 3),
                ("block", ctypes.c_uint32 * 3), ("smem", ctypes.c_uint64),
                ("nargs", ctypes.c_int32), ("workers", ctypes.c_int32),
                ("racecheck", ctypes.c_int32), ("stack_kb", ctypes.c_int32),
                ("timeout_s", ctypes.c_double), ("args", ctypes.POINTER(_Arg)),
                ("error", ctypes.c_char_p), ("error_size", ctypes.c_uint64),
                ("fault_pc", ctypes.c_uint64), ("fault_lib_offset", ctypes.c_uint64),
                ("fault_kind", ctypes.c_int32), ("pad", ctypes.c_int32)]


def settings() -> dict:
    """The CPU backend's run settings, from the environment (see the module docstring)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cores = os.cpu_count() or 1
    env = os.environ.get
    return {"workers": max(1, int(env("FLASHLAB_CPU_WORKERS", min(cores, 8)))),
            "racecheck": env("FLASHLAB_CPU_RACECHECK", "1") not in ("0", "false", "no", ""),
            "timeout": float(env("FLASHLAB_CPU_TIMEOUT", 120)),
            "stack_kb": int(env("FLASHLAB_CPU_STACK_KB", 64))}



def parameter_names(text: str, name: str) -> list[str]:
    """The parameter names of kernel `name` (a name expression's base) in source `text`, in
    order; [] when the definition cannot be found."""
    code = build._code_only(text)
    for m in re.finditer(rf"__global__[^;{{]*?\b{re.escape(name)}\s*\(", code):
        depth, i = 1, m.end()
        while i < len(code) and depth:
            depth += {"(": 1, ")": -1}.get(code[i], 0)
            i += 1
        params, depth, cur = [], 0, ""
        for ch in code[m.end():i - 1]:
            if ch in "(<[":
                depth += 1
            elif ch in ")>]":
                depth -= 1
            if ch == "," and depth == 0:
                params.append(cur)
                cur = ""
            else:
                cur += ch
        params.append(cur)
        names = [re.findall(r"[A-Za-z_]\w*", p.split("=")[0]) for p in params if p.strip()]
        return [n[-1] for n in names if n]
    return []


def _line_of(lib: str, offset: int) -> str | None:
    """file:line of code offset `offset` in library `lib` (addr2line, where binutils is)."""
    tool = shutil.which("addr2line")
    if not tool or not offset:
        return None
    try:
        r = subprocess.run([tool, "-e", lib, hex(offset)], capture_output=True, text=True,
                           timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = r.stdout.strip().splitlines()[:1]
    if not first or first[0].startswith("??"):
        return None
    file, _, line = first[0].partition(":")
    line = line.split()[0] if line else ""
    return f"{os.path.basename(file) if file.startswith('/') else file}:{line}" if line.isdigit() else None


class CpuKernel:
    """One kernel of a CPU library, called like a CuPy RawKernel."""

    on_cpu = True

    def __init__(self, lib_path, fn, name: str, params: list[str], text: str = ""):
        self.lib_path, self._fn, self.name, self.params = str(lib_path), fn, name, params
        self.text = text  # the source, for naming the algorithm lines a race lies between
        self.max_dynamic_shared_size_bytes = 48 * 1024

    def __call__(self, grid, block, args, shared_mem=0):
        grid, block = _dims(grid, "grid"), _dims(block, "block")
        n = len(args)
        cargs = (_Arg * max(n, 1))()
        keep = []
        for i, a in enumerate(args):
            name = self.params[i] if i < len(self.params) else f"argument {i}"
            cargs[i].name = name.encode()
            if isinstance(a, np.ndarray):
                if not a.flags.c_contiguous:
                    raise ValueError(f"kernel {self.name}: argument {i} ({name}) is not contiguous")
                code = _CODES.get(a.dtype.name, b"?")
                cargs[i].kind, cargs[i].code = b"p", code
                cargs[i].data, cargs[i].bytes = a.ctypes.data, a.nbytes
                continue
            if isinstance(a, np.generic):
                v = np.array(a)
                code = _CODES.get(v.dtype.name, b"?")
            elif isinstance(a, (bool, int, np.integer)):
                v, code = np.array(int(a), np.int64), b"I"
            elif isinstance(a, float):
                v, code = np.array(a, np.float64), b"F"
            else:
                raise TypeError(f"kernel {self.name}: argument {i} ({name}) is a "
                                f"{type(a).__name__}; pass NumPy arrays and NumPy scalars")
            keep.append(v)
            cargs[i].kind, cargs[i].code = b"s", code
            cargs[i].data, cargs[i].bytes = v.ctypes.data, v.itemsize
        err = ctypes.create_string_buffer(4096)
        s = settings()
        desc = _Desc(kernel=self.name.encode(), nargs=n, smem=int(shared_mem),
                     workers=s["workers"], racecheck=int(s["racecheck"]),
                     stack_kb=s["stack_kb"], timeout_s=s["timeout"], args=cargs,
                     error=ctypes.cast(err, ctypes.c_char_p), error_size=len(err))
        desc.grid[:], desc.block[:] = grid, block
        rc = self._fn(ctypes.byref(desc))
        if rc:
            msg = err.value.decode(errors="replace")
            m = re.search(r"at ([^\s:]+):(\d+) and the __syncthreads\(\) at \1:(\d+)", msg)
            if rc == 5 and m:  # a race between two barriers: what the lines between compute
                tags = build.tags_between(self.text, m[1], int(m[2]), int(m[3]))
                if tags:
                    msg += f" (lines {m[2]}-{m[3]} of {m[1]} compute {', '.join(tags)})"
            at = _line_of(self.lib_path, desc.fault_lib_offset)
            raise KernelFault(msg + (f" (at {at})" if at else ""), FAULTS.get(rc, "fault"), at)


def _dims(v, what) -> tuple:
    v = tuple(int(x) for x in (v if isinstance(v, (tuple, list)) else (v,)))
    if not 1 <= len(v) <= 3:
        raise ValueError(f"{what} must have 1 to 3 dimensions, got {v}")
    return v + (1,) * (3 - len(v))


class CpuModule:
    """A Source compiled for the CPU, one library per set of kernels asked for (cached)."""

    def __init__(self, source, options: tuple, name_expressions: tuple):
        from ..launch.sources import defined_kernels

        build.check_portable(source.text, source.name)
        self.source, self.trace = source, "-DFLASHLAB_TRACE" in options
        code = build._code_only(source.text)
        self.plain = tuple(sorted(n for n in defined_kernels(source.text)
                                  if re.search(rf'extern\s+"C"[^;{{]*?\b{n}\s*\(',
                                               source.text)
                                  and re.search(rf"\b{n}\s*\(", code)))
        self._libs: dict = {}

    def _library(self, entries: tuple):
        lib = self._libs.get(entries)
        if lib is None:
            path = build.build(build.translate(self.source.text, entries), self.trace,
                               f"{self.source.origin or self.source.name}")
            lib = self._libs[entries] = (path, ctypes.CDLL(str(path)))
        return lib

    def get_function(self, name: str) -> CpuKernel:
        built = [e for e in self._libs if name in e]  # an extern "C" kernel: any library has it
        entries = built[0] if built else self.plain if name in self.plain else self.plain + (name,)
        if name not in entries:
            raise KeyError(f"{name} is not a kernel of {self.source.name}")
        path, lib = self._library(entries)
        fn = getattr(lib, f"fl_entry_{entries.index(name)}")
        fn.argtypes, fn.restype = [ctypes.POINTER(_Desc)], ctypes.c_int
        return CpuKernel(path, fn, name, parameter_names(self.source.text, name.split("<")[0]),
                         self.source.text)


class CpuBackend:
    """launch.compiler's CPU backend (arch is ignored: the CPU has one)."""

    def compile(self, source, options: tuple, name_expressions: tuple, arch=None) -> CpuModule:
        return CpuModule(source, options, name_expressions)
