"""Compiling a Source into a module, behind one seam, and the per-process module and function caches.

The seam is `Backend`: compile(source, options, name_expressions, arch) -> a module whose
get_function(name) gives a launchable kernel. `CupyBackend` is the GPU one (cupy.RawModule, and
`_ArchModule` for arch-specific targets such as sm_90a, which RawModule cannot build). A second
backend (a CPU C++ build of the same sources, another issue) is one more class with that
method, registered in BACKENDS; get_module(..., backend="name") picks it, and nothing above this
module changes. `nvrtc_compile` is apart from the seam: it compiles offline with NVRTC to check
a source without a GPU (returns the compiler log, no module).

Caches, per process: modules keyed on (backend, source digest, options, instantiations, arch)
(CuPy also keeps its compiled binaries on disk); functions per (module, name), so that a
kernel's dynamic shared-memory opt-in (a driver call) is made once per function and device.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol

from .device import _cupy
from .errors import KernelCompileError, KernelLaunchError
from .plans import instantiations
from .sources import Source


def compile_options(trace: bool = False) -> tuple:
    opts = ["-std=c++17"]
    if trace:
        opts.append("-DFLASHLAB_TRACE")
    return tuple(opts)


class Module(Protocol):
    def get_function(self, name: str): ...


class Backend(Protocol):
    """What turns a Source into launchable kernels. arch: an arch-specific target the source
    needs ("sm_90a"), or None for the current device's own."""

    def compile(self, source: Source, options: tuple, name_expressions: tuple,
                arch: str | None) -> Module: ...


class CupyBackend:
    """cupy.RawModule (NVRTC through CuPy, cached on disk by CuPy); arch-specific targets
    through _ArchModule."""

    def compile(self, source: Source, options: tuple, name_expressions: tuple, arch=None):
        if arch is not None:
            return _ArchModule(source.text, options, name_expressions, arch, source.name)
        cp = _cupy()
        mod = cp.RawModule(code=source.text, options=options,
                           name_expressions=list(name_expressions) or None)
        mod.compile()
        return mod


class _ArchModule:
    """A RawModule compiled for a target of its own: an arch-specific one (sm_90a: a cubin) or
    a virtual one (compute_75: PTX, which the driver compiles for the GPU at load, so a Turing
    build runs on any newer GPU); get_function takes the C++ name expression (as RawModule does
    with name_expressions). Cubins and PTX are cached on disk next to CuPy's, keyed by source,
    options, target and NVRTC version. (CuPy's RawModule always compiles for the plain target of
    the current device, so these are compiled with NVRTC here and loaded with
    RawModule(path=...).)"""

    def __init__(self, src: str, options: tuple, names: tuple, arch: str, program="tc90.cu"):
        cp = _cupy()
        from cupy.cuda import nvrtc

        version = nvrtc.getVersion()
        opts = tuple(options) + (f"--gpu-architecture={arch}",)
        key = hashlib.sha256(repr((src, opts, names, version)).encode()).hexdigest()[:32]
        cache = Path(os.environ.get("CUPY_CACHE_DIR", Path.home() / ".cupy" / "kernel_cache"))
        ptx = arch.startswith("compute_")
        cubin_path = cache / f"flashlab_{key}.{'ptx' if ptx else 'cubin'}"
        names_path = cache / f"flashlab_{key}.names"
        if cubin_path.exists() and names_path.exists():
            lowered = names_path.read_text().split("\n")
        else:
            prog = nvrtc.createProgram(src, program, (), ())
            try:
                for n in names:
                    nvrtc.addNameExpression(prog, n)
                try:
                    nvrtc.compileProgram(prog, opts)
                except Exception as e:
                    raise RuntimeError(f"{e}\n{nvrtc.getProgramLog(prog)}") from e
                cubin = nvrtc.getPTX(prog).rstrip(b"\0") if ptx else nvrtc.getCUBIN(prog)
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


BACKENDS: dict = {"cupy": CupyBackend()}  # "cpu" joins on first use (flashlab.cpu.kernels)


def _backend(name: str):
    if name == "cpu" and name not in BACKENDS:
        from ..cpu.kernels import CpuBackend

        BACKENDS["cpu"] = CpuBackend()
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of cupy, cpu, got {name!r}")
    return BACKENDS[name]
_modules: dict = {}  # (backend, digest, options, names, arch) -> module


def get_module(source: Source, trace: bool = False, name_expressions: tuple = (),
               arch: str | None = None, kernel: str = "", backend: str = "cupy"):
    """The compiled module of `source` (cached per process; CuPy also caches on disk), built
    with -DFLASHLAB_TRACE when `trace`. kernel: its registry name, for messages."""
    options = compile_options(trace)
    key = (backend, source.digest, options, tuple(name_expressions), arch)
    mod = _modules.get(key)
    if mod is None:
        impl = _backend(backend)
        try:
            mod = impl.compile(source, options, tuple(name_expressions), arch)
        except Exception as e:  # CompileException, or NVRTC missing
            raise KernelCompileError(
                f"kernel {kernel or source.name!r} failed to compile "
                f"({source.origin or source.name}, trace={trace}, "
                f"options {options}, instantiations {list(name_expressions)}):\n{e}") from e
        _modules[key] = mod
    return mod


_functions: dict = {}  # (id(module), name) -> (module, RawKernel), for modules in _modules
_known: dict = {}  # id(RawKernel) -> RawKernel: the ones function() handed out (kept alive)
_smem_allowed: dict = {}  # (id(RawKernel), device) -> dynamic shared memory allowed there so far


def function(mod, name: str):
    """mod.get_function(name), once per process. CuPy builds a new RawKernel object on every
    get_function; reusing one lets launch() make the shared-memory opt-in (a driver call) once
    per kernel and device instead of on every launch."""
    hit = _functions.get((id(mod), name))
    if hit is None or hit[0] is not mod:
        hit = (mod, mod.get_function(name))
        _functions[(id(mod), name)] = hit
        _known[id(hit[1])] = hit[1]
    return hit[1]


def set_smem(func, smem: int) -> None:
    """Opt RawKernel `func` in to `smem` bytes of dynamic shared memory on the current device
    where that is more than the default 48 KB (a driver call: made once per kernel and device
    for the functions function() handed out)."""
    if smem <= 48 * 1024:
        return
    if _known.get(id(func)) is func:
        key = (id(func), _cupy().cuda.runtime.getDevice())
        if _smem_allowed.get(key, 0) < smem:
            func.max_dynamic_shared_size_bytes = smem
            _smem_allowed[key] = smem
    else:
        func.max_dynamic_shared_size_bytes = smem


def launch(kernel: str, func, grid, block, args, smem: int, describe: str):
    """func(grid, block, args, shared_mem=smem), opting in to more than 48 KB of dynamic shared
    memory first; a failure becomes KernelLaunchError naming the kernel and its arguments."""
    if getattr(func, "on_cpu", False):  # the CPU backend: no opt-in; its faults say enough
        return func(grid, block, args, shared_mem=smem)
    try:
        set_smem(func, smem)
        func(grid, block, args, shared_mem=smem)
    except Exception as e:
        raise KernelLaunchError(
            f"kernel {kernel!r} failed to launch: grid {grid}, block {block}, "
            f"{smem} bytes of shared memory, {describe}: {e}") from e


def nvrtc_compile(source: Source, arch: str, trace: bool = False,
                  name_expressions: tuple | None = None, kernel: str | None = None) -> str:
    """Compile `source` to PTX with NVRTC for `arch` (e.g. "sm_75"); no GPU needed.

    Uses the cuda-bindings package (flashlab's nvrtc extra). name_expressions None: the
    instantiations the launcher of `kernel` compiles for the source's variant. Returns the
    compiler log; raises KernelCompileError with that log (also as its .log) when NVRTC refuses
    the source, and ImportError (a ModuleNotFoundError without cuda-bindings) with the install
    command when NVRTC is missing. The program (and the log) takes the source's name.
    """
    try:
        from cuda.bindings import nvrtc
    except ImportError as e:
        from ..install import install_hint

        raise ModuleNotFoundError(
            "NVRTC is not installed (compiling a kernel without a GPU needs flashlab's nvrtc "
            f"extra: cuda-bindings and nvidia-cuda-nvrtc): {install_hint('nvrtc')}",
            name=e.name) from e
    if name_expressions is None:
        name_expressions = instantiations(kernel, source.variant) if kernel else ()
    label = kernel or source.name
    target = arch if arch.startswith("compute_") else f"compute_{arch.removeprefix('sm_')}"
    try:
        err, prog = nvrtc.nvrtcCreateProgram(source.text.encode(), source.name.encode(), 0, [], [])
    except Exception as e:  # cuda-bindings without the library: DynamicLibNotFoundError
        if "nvrtc" not in f"{type(e).__name__} {e}".lower():
            raise
        from ..install import install_hint

        raise ImportError("NVRTC's library was not found (cuda-bindings is installed, "
                          f"nvidia-cuda-nvrtc is not): {install_hint('nvrtc')}; {e}") from e
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise KernelCompileError(f"nvrtcCreateProgram({source.name}) failed: {err}")
    try:
        for name in name_expressions:
            nvrtc.nvrtcAddNameExpression(prog, name.encode())
        opts = [o.encode() for o in compile_options(trace)]
        opts.append(f"--gpu-architecture={target}".encode())
        (res,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        log = log.decode(errors="replace").rstrip("\x00 \n")
        if res != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            error = KernelCompileError(f"kernel {label!r} failed to compile for {arch} "
                                       f"(trace={trace}, {source.origin or source.name}):\n{log}")
            error.log = log  # the compiler's log alone (compile_diagnostics reads it)
            raise error
        return log
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
