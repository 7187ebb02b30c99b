"""Compatibility alias for the old one-module launcher; new code imports the new homes:
flashlab.registry (kernels, head dims, tile tables) · flashlab.launch (forward, backward) ·
launch.sources (kernel_dir, expand_includes, Source, ours, user_file, required/missing_kernels,
compile_diagnostics) · launch.compiler (nvrtc_compile, get_module, Backend) · launch.device
(gpu_available, available_kernels, device_limits, checks) · launch.plans (plan, tc_plan,
tc_variant, tc_names, instantiations) · launch.errors · flashlab.course (BUGS, HUNT, patched) ·
flashlab.kernel_check. Here only, the old bug= (a bug's name) and source= (a path) become a
Source, and the pseudo-kernel "tc90" is kernel 'tc', variant "wgmma"."""
from . import launch as _launch, registry as _registry
from .course import BUGS, HUNT, patched as _patched  # noqa: F401
from .launch import compiler as _compiler, plans as _plans, sources as _sources
from .launch.device import available_kernels, check_device_inputs, device_limits, gpu_available  # noqa: F401
from .launch.errors import KernelCompileError, KernelLaunchError  # noqa: F401
from .launch.plans import (fa1_blocks, fa1_smem_floats, fa2_blocks, fa2_smem_floats, plan,  # noqa: F401
                           tc_head_group, tc_names, tc_plan, tc_variant)
from .launch.sources import compile_diagnostics, defined_kernels, expand_includes, kernel_dir, kernel_files  # noqa: F401
from .registry import (FA1_MAX_HEAD_DIM, FA2_HEAD_DIMS, TC90_BACKWARD, TC90_FORWARD,  # noqa: F401
                       TC90_HEAD_DIMS, TC_BACKWARD, TC_FORWARD, TC_HEAD_DIMS)

KERNELS, FP32_KERNELS = _registry.names(), _registry.for_dtype("float32")
TC_MIN_CC, TC90_CC = _registry.get("tc").min_cc, _registry.get("tc").variants["wgmma"].min_cc
ARCH_SPECIFIC = {v.source[:-3]: v.arch for s in _registry.KERNELS.values() for v in s.variants.values() if v.arch}
_kv = lambda kernel: (kernel, None) if kernel in KERNELS else (  # noqa: E731  "tc90" -> ("tc", "wgmma")
    lambda s, v: (s.name, v))(*_registry.by_source(f"{kernel}.cu"))


def _src(kernel, bug=None, source=None, ours=False):  # the Source the old arguments mean (None: ours)
    if isinstance(source, _sources.Source) or (bug is None and source is None and not ours):
        return source
    src = _sources.user_file(source, _kv(kernel)[0]) if source is not None else _sources.ours(*_kv(kernel))
    return _patched(bug, _kv(kernel)[0], src) if bug is not None else src


kernel_source = lambda kernel, bug=None, path=None: _src(kernel, bug, path, ours=True).text  # noqa: E731
required_kernels = lambda kernel, direction=None: _sources.required_kernels(_kv(kernel)[0], direction, _kv(kernel)[1])  # noqa: E731
missing_kernels = lambda kernel, source, direction=None: _sources.missing_kernels(_kv(kernel)[0], source, direction, _kv(kernel)[1])  # noqa: E731
instantiations = lambda kernel: _plans.instantiations(*_kv(kernel))  # noqa: E731
tc_launch_plan = lambda device, d, direction, config=None, source=None: _launch.launch_plan(  # noqa: E731
    "tc", device, d, direction, config, _src("tc", None, source))


def nvrtc_compile(kernel, arch, trace=False, bug=None, name_expressions=None, source=None):
    names = instantiations(kernel) if name_expressions is None else name_expressions  # by the name
    return _compiler.nvrtc_compile(_src(kernel, bug, source, True), arch, trace, names, kernel=kernel)


def get_module(kernel, trace=False, name_expressions=(), bug=None, source=None):
    src, name = _src(kernel, bug, source, ours=True), _kv(kernel)[0]
    return _compiler.get_module(src, trace, name_expressions, _registry.get(name).variants[src.variant].arch, kernel=name)


def forward(kernel, q, k, v, causal=False, softmax_scale=None, trace=False, bug=None, out=None, source=None, config=None):
    return _launch.forward(kernel, q, k, v, causal, softmax_scale, trace, out, _src(kernel, bug, source), config)


def backward(kernel, do, q, k, v, o, lse, causal=False, softmax_scale=None, trace=False, bug=None, out=None,
             source=None, config=None):
    return _launch.backward(kernel, do, q, k, v, o, lse, causal, softmax_scale, trace, out, _src(kernel, bug, source), config)
