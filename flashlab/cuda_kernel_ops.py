"""Compatibility alias for the old one-module launcher. New code imports the new homes (nothing
inside flashlab imports this module; tests/test_structure.py checks):

    flashlab.registry       the kernels, their head dims and tile tables
    flashlab.launch         forward, backward, launch_plan
    launch.sources          kernel_dir, expand_includes, Source, ours, user_file,
                            required_kernels, missing_kernels, compile_diagnostics
    launch.compiler         nvrtc_compile, get_module, Backend
    launch.device           gpu_available, available_kernels, device_limits, input checks
    launch.plans            plan, tc_plan, tc_variant, tc_names, instantiations
    launch.errors           KernelCompileError, KernelLaunchError
    flashlab.course         BUGS, HUNT, patched (a planted bug as patched source text)
    flashlab.kernel_check   a kernel against its step-through

Here only, the old arguments are converted: bug= (a planted bug's name) and source= (a path to
a .cu file) become a launch.sources.Source, and the pseudo-kernel "tc90" (kernels/tc90.cu) is
kernel "tc", variant "wgmma".
"""
from __future__ import annotations

from . import launch as _launch, registry as _registry
from .course import BUGS, HUNT, patched as _patched
from .launch import compiler as _compiler, plans as _plans, sources as _sources
from .launch.device import available_kernels, check_device_inputs, device_limits, gpu_available
from .launch.errors import KernelCompileError, KernelLaunchError
from .launch.plans import (fa1_blocks, fa1_smem_floats, fa2_blocks, fa2_smem_floats, plan,
                           tc_head_group, tc_names, tc_plan, tc_variant)
from .launch.sources import (compile_diagnostics, defined_kernels, expand_includes, kernel_dir,
                             kernel_files)
from .registry import (FA1_MAX_HEAD_DIM, FA2_HEAD_DIMS, TC90_BACKWARD, TC90_FORWARD,
                       TC90_HEAD_DIMS, TC_BACKWARD, TC_FORWARD, TC_HEAD_DIMS)

__all__ = [
    "ARCH_SPECIFIC", "BUGS", "FA1_MAX_HEAD_DIM", "FA2_HEAD_DIMS", "FP32_KERNELS", "HUNT",
    "KERNELS", "KernelCompileError", "KernelLaunchError", "TC90_BACKWARD", "TC90_CC",
    "TC90_FORWARD", "TC90_HEAD_DIMS", "TC_BACKWARD", "TC_FORWARD", "TC_HEAD_DIMS", "TC_MIN_CC",
    "available_kernels", "backward", "check_device_inputs", "compile_diagnostics",
    "defined_kernels", "device_limits", "expand_includes", "fa1_blocks", "fa1_smem_floats",
    "fa2_blocks", "fa2_smem_floats", "forward", "get_module", "gpu_available", "instantiations",
    "kernel_dir", "kernel_files", "kernel_source", "missing_kernels", "nvrtc_compile", "plan",
    "required_kernels", "tc_head_group", "tc_launch_plan", "tc_names", "tc_plan", "tc_variant",
]

KERNELS = _registry.names()
FP32_KERNELS = _registry.for_dtype("float32")
TC_MIN_CC = _registry.get("tc").min_cc
TC90_CC = _registry.get("tc").variants["wgmma"].min_cc
#: a source's stem -> the arch-specific target it compiles for ("tc90" -> "sm_90a")
ARCH_SPECIFIC = {v.source.removesuffix(".cu"): v.arch for s in _registry.KERNELS.values()
                 for v in s.variants.values() if v.arch}


def _kernel_variant(kernel: str) -> tuple:
    """(registry kernel, variant) an old kernel name means: a registry name is itself (variant
    None, its portable one); a source's stem ("tc90") is the kernel and variant that compile it."""
    if kernel in KERNELS:
        return kernel, None
    spec, variant = _registry.by_source(f"{kernel}.cu")
    return spec.name, variant


def _source(kernel: str, bug=None, source=None, ours: bool = False):
    """The Source the old arguments mean. source: a Source (taken as it is), a path (a user's
    file for `kernel`) or None (ours; with ours=False and no bug, None: the launcher's own).
    bug: a planted bug's name, planted in that source."""
    if isinstance(source, _sources.Source) or (bug is None and source is None and not ours):
        return source
    name, variant = _kernel_variant(kernel)
    if source is not None:
        src = _sources.user_file(source, name)
    else:
        src = _sources.ours(name, variant)
    return src if bug is None else _patched(bug, name, src)


def kernel_source(kernel: str, bug=None, path=None) -> str:
    """The text of `kernel`'s source (ours, or the file at `path`) with bug `bug` planted."""
    return _source(kernel, bug, path, ours=True).text


def required_kernels(kernel: str, direction=None) -> tuple:
    """launch.sources.required_kernels for an old kernel name ("tc90" too)."""
    name, variant = _kernel_variant(kernel)
    return _sources.required_kernels(name, direction, variant)


def missing_kernels(kernel: str, source: str, direction=None) -> tuple:
    """launch.sources.missing_kernels for an old kernel name; source: the text."""
    name, variant = _kernel_variant(kernel)
    return _sources.missing_kernels(name, source, direction, variant)


def instantiations(kernel: str) -> tuple:
    """launch.plans.instantiations for an old kernel name."""
    return _plans.instantiations(*_kernel_variant(kernel))


def tc_launch_plan(device: int, d: int, direction: str, config=None, source=None) -> dict:
    """flashlab.launch.launch_plan for kernel "tc"; source: a Source, a path or None."""
    return _launch.launch_plan("tc", device, d, direction, config, _source("tc", None, source))


def nvrtc_compile(kernel: str, arch: str, trace=False, bug=None, name_expressions=None,
                  source=None) -> str:
    """launch.compiler.nvrtc_compile of the old arguments' source; name_expressions None: the
    instantiations the launcher of `kernel` compiles."""
    names = instantiations(kernel) if name_expressions is None else name_expressions
    return _compiler.nvrtc_compile(_source(kernel, bug, source, ours=True), arch, trace, names,
                                   kernel=kernel)


def get_module(kernel: str, trace=False, name_expressions=(), bug=None, source=None):
    """launch.compiler.get_module of the old arguments' source, for its variant's target."""
    src, name = _source(kernel, bug, source, ours=True), _kernel_variant(kernel)[0]
    arch = _registry.get(name).variants[src.variant].arch
    return _compiler.get_module(src, trace, name_expressions, arch, kernel=name)


def forward(kernel: str, q, k, v, causal=False, softmax_scale=None, trace=False, bug=None,
            out=None, source=None, config=None):
    """flashlab.launch.forward with the old bug= and source= (a path) arguments."""
    return _launch.forward(kernel, q, k, v, causal, softmax_scale, trace, out,
                           _source(kernel, bug, source), config)


def backward(kernel: str, do, q, k, v, o, lse, causal=False, softmax_scale=None, trace=False,
             bug=None, out=None, source=None, config=None):
    """flashlab.launch.backward with the old bug= and source= (a path) arguments."""
    return _launch.backward(kernel, do, q, k, v, o, lse, causal, softmax_scale, trace, out,
                            _source(kernel, bug, source), config)
