"""The kernel registry: one declaration per kernel, and the one place that knows their names.

Each `KernelSpec` says what a kernel is (the algorithms it follows, its sources per variant),
what it takes (dtypes, head dims, the GPUs it runs on), how it is laid out (tile tables), what it
is checked against (step-throughs, trace algorithms, tolerance) and who launches it. The API, the
command line's choices, the benchmark, the trace checks, the assignments, the tensor-core twin
and the tests read it; a new kernel is one more declaration here plus its launcher module, and
the tests parametrized over `names()` pick it up.

Nothing here imports CuPy, the launcher or the references (names are strings, resolved on use),
so every module may import the registry without a cycle.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field

# ----------------------------------------------------------------------------- tensor-core tiles
# kernels/tc.cu tile shapes per head dim (kernels/tc.cu comments say what each means):
#   forward:  BC keys per K/V tile (two stages in shared memory), taken BK keys per online-softmax
#             sub-step; NW warps of WM 16-row slabs each (Br = 16 * WM * NW)
#   backward: BR queries per step, BC keys per thread block, NW warps laid out per product as
#             grids of WS (S^T, dP^T), WKV (dK~, dV~) and WQ (dQ) warps along the first dimension;
#             QS stages of Q_i, dO_i in shared memory (2: double-buffered)
# docs/PERFORMANCE.md records how these were chosen.
# d = 96 and 256 (first tables, chosen from ptxas' register report, not yet tuned): every warp's
# columns of dK~, dV~ and dQ start on a multiple of 64 elements or at 0 (SwzAddr's bases), so at
# d = 96 a warp holds all 96 columns (4 warps); at 256 with 128 threads a row loads in two halves.
TC_FORWARD = {32: dict(BC=128, NW=4, WM=2, BK=64), 64: dict(BC=128, NW=4, WM=2, BK=64),
              96: dict(BC=64, NW=4, WM=2, BK=32), 128: dict(BC=64, NW=4, WM=2, BK=32),
              256: dict(BC=32, NW=4, WM=1, BK=32)}
TC_BACKWARD = {32: dict(BR=64, BC=128, NW=8, WS=4, WKV=4, WQ=4, QS=2),
               64: dict(BR=128, BC=128, NW=8, WS=2, WKV=4, WQ=4, QS=3),
               96: dict(BR=64, BC=64, NW=4, WS=2, WKV=4, WQ=4, QS=3),
               128: dict(BR=64, BC=128, NW=8, WS=4, WKV=4, WQ=2, QS=3),
               256: dict(BR=32, BC=64, NW=8, WS=4, WKV=4, WQ=2, QS=2)}
# kernels/tc.cu backward tiles for GPUs with less opt-in shared memory than the table's take (an
# A100's 163 KB, sm_86 / sm_89's 99 KB), tried in order (plans.tc_plan_fitting): fewer Q_i, dO_i
# stages, then smaller blocks. Registers from ptxas (sm_80): d = 64 255 and 218; d = 96 253;
# d = 128 255, then 128 with 4 bytes spilled. d = 256's backward (137 KB) has none for 99 KB.
TC_BACKWARD_SMALLER = {
    64: (dict(BR=128, BC=128, NW=8, WS=2, WKV=4, WQ=4, QS=2),     # 162 KB
         dict(BR=64, BC=128, NW=8, WS=4, WKV=4, WQ=4, QS=2)),     # 97 KB
    96: (dict(BR=64, BC=64, NW=4, WS=2, WKV=4, WQ=4, QS=2),),      # 89 KB
    128: (dict(BR=64, BC=128, NW=8, WS=4, WKV=4, WQ=2, QS=2),     # 161 KB
          dict(BR=32, BC=64, NW=8, WS=4, WKV=4, WQ=2, QS=2)),      # 72.5 KB
}
# kernels/tc.cu built for Turing (variant "turing": compute_75 PTX, float16; a T4 has 64 KB of
# shared memory a block). ptxas sm_75: forward 190 / 255 registers, backward 168 / 185.
TC75_FORWARD = {64: dict(BC=64, NW=4, WM=2, BK=64), 128: dict(BC=32, NW=4, WM=2, BK=32)}
TC75_BACKWARD = {64: dict(BR=32, BC=64, NW=4, WS=2, WKV=2, WQ=2, QS=2),
                 128: dict(BR=32, BC=32, NW=4, WS=2, WKV=2, WQ=2, QS=2)}
# =1: the turing variant runs first on any GPU of compute capability 7.5+ (the default on 7.5)
TURING_FORCE = "FLASHLAB_TC_TURING"
# kernels/tc90.cu (sm_90a, wgmma) tile shapes per head dim:
#   forward:  BC keys per K/V tile (two stages), NWG warpgroups of 64 query rows (Br = 64 NWG)
#   backward: BR queries per step, BC keys per thread block (BC / 64 warpgroups), QS stages of
#             Q_i, dO_i
#   both:     MINB thread blocks per multiprocessor the compiler must fit in registers
# Rungs of the Hopper ladder (issue 22): kernel sources measured beside kernel 'tc' and launched
# by their own module, not yet a variant 'tc' runs (file -> launcher)
LADDER = {"tc90_ws.cu": "flashlab.launch.tc_ws", "tc90_ws_bwd.cu": "flashlab.launch.tc_ws"}
TC90_FORWARD = {32: dict(BC=64, NWG=2, MINB=2), 64: dict(BC=64, NWG=2, MINB=2),
                128: dict(BC=64, NWG=1, MINB=2)}
TC90_BACKWARD = {32: dict(BR=128, BC=128, QS=2, MINB=1), 64: dict(BR=128, BC=128, QS=2, MINB=1),
                 128: dict(BR=64, BC=128, QS=2, MINB=1)}

# 16-bit unit roundoff (2^-11, 2^-8): kernel 'tc' is compared with its twin at TC_UNITS of it.
UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8}
TC_UNITS = 4


@dataclass(frozen=True)
class Variant:
    """One source of a kernel: the file in kernels/, and when it is the one that runs."""

    source: str  # file name in kernels/, e.g. "tc90.cu"
    min_cc: int  # lowest compute capability (x10) it runs on
    max_cc: int | None = None  # highest (x10), for arch-specific builds (sm_90a: exactly 90)
    # a compile target of its own: arch-specific ("sm_90a") or a virtual one whose PTX the driver
    # compiles for the GPU ("compute_75"); None: the device's own
    arch: str | None = None
    head_dims: tuple | None = None  # where it has fewer head dims than the kernel
    dtypes: tuple | None = None  # where it takes fewer input dtypes than the kernel
    # an environment variable that, set to "1", puts it before the others wherever min_cc
    # allows, past max_cc: a build for older GPUs run on a newer one (the H200 runs the Turing
    # build's compute_75 PTX through the driver's JIT this way, for its tests and timings)
    force: str | None = None
    tiles: dict = field(default_factory=dict)  # direction -> {head dim: config}
    # the __global__ functions its launcher looks up by name, per pass (forward, backward):
    # extern "C" names, or templates (by their plain names) whose instances it compiles
    kernels: tuple = ((), ())

    def forced(self) -> bool:
        """Its `force` variable is set: it runs first wherever min_cc allows."""
        return self.force is not None and os.environ.get(self.force) == "1"

    def fits(self, compute_capability: int) -> bool:
        """It runs on this compute capability (x10): min_cc .. max_cc, or past max_cc forced."""
        return self.min_cc <= compute_capability and (
            self.max_cc is None or compute_capability <= self.max_cc or self.forced())

    def takes(self, dtype: str, d: int | None) -> bool:
        """It has this input dtype and head dim (None: any)."""
        return (self.dtypes is None or dtype in self.dtypes) and (
            d is None or self.head_dims is None or d in self.head_dims)

    def required(self, direction: str | None = None) -> tuple:
        """The kernels this source must define for one pass ("forward", "backward") or both."""
        if direction is None:
            return tuple(dict.fromkeys(self.kernels[0] + self.kernels[1]))
        return self.kernels[_index(direction)]


@dataclass(frozen=True)
class Tolerance:
    """How a kernel's outputs are held against the float64 oracle, and its trace against its
    step-through. kind "rel": max |x - ref| / max(1, max |ref|) <= value (fp32 kernels);
    kind "fa_rule": FlashAttention's rule, error at most 2x that of standard attention in the
    same 16-bit dtype (flashlab.lowp.within_fa_rule). Traces: rtol / atol, or for 16-bit kernels
    `units` of the dtype's unit roundoff."""

    kind: str
    value: float = 0.0
    trace_rtol: float = 1e-3
    trace_atol: float = 1e-4
    units: float = 0.0  # trace tolerance in units of roundoff (16-bit kernels)

    def trace_tolerance(self, dtype: str = "float32") -> tuple[float, float]:
        if self.units:
            u = self.units * UNIT_ROUNDOFF[dtype]
            return u, u
        return self.trace_rtol, self.trace_atol


@dataclass(frozen=True)
class KernelSpec:
    name: str
    title: str  # one line: what it is
    algorithms: tuple  # (forward, backward) labels of docs/ALGORITHMS.md, e.g. ("A1", "B1")
    variants: dict  # variant name -> Variant; the first whose compute capability fits runs
    dtypes: tuple  # input dtypes (q, k, v, do); lse is always float32
    head_dims: tuple | None  # the head dims it takes, or None for any d <= max_head_dim
    max_head_dim: int | None
    launcher: str  # module with forward(...) / backward(...), e.g. "flashlab.launch.fa1"
    reference: tuple  # (forward, backward) "module:function" of the matching reference
    steps: tuple | None  # (forward, backward) "module:function" of the step-through generators
    tolerance: Tolerance
    traceable: bool = True  # compiled with -DFLASHLAB_TRACE it writes the trace buffers
    exercises: bool = False  # kernel exercises and planted bugs may live in its source
    baseline: bool = False  # the yardstick benchmarks time speedups against (standard attention)
    slow_past_n: int | None = None  # benchmarks skip it past this N (fa1: seconds a call there)
    # launch-plan entries its step-through takes as keywords (beyond Br, Bc), per pass: the
    # tile walk the kernel made (tc: warps and sub-steps Bk forward, warps and grid backward)
    step_plan_keys: tuple = ((), ())
    # "module:function" of its tile planner (flashlab.launch.plans; None: no tiles) and of the
    # template instantiations a variant's source needs compiled (None: extern "C" only)
    planner: str | None = None
    instances: str | None = None
    hardware: str = ""  # what it runs on, where that is special ("tensor cores"), for messages
    # the CPU backend (flashlab.cpu) runs its source: SIMT CUDA C; what stops it where not
    cpu: bool = True
    cpu_why: str = ""
    min_cc_why: str = ""  # what needs its lowest compute capability, for messages
    # it takes strided operands whose rows are contiguous (q, k, v, do, o: struct Rows, as
    # flashlab.launch.prepared packs them); the others take contiguous arrays only
    row_strides: bool = False
    # bytes the addresses of q, k, v, do must be a multiple of (fa2: float4 global loads); 0:
    # any float's. (row_strides kernels check their rows' alignment: launch.device.check_rows)
    align: int = 0
    # its forward and backward compile an attention variant in (flashlab.mods: window, mask_mod,
    # score_mod, GQA; kernels/fa2.cu's FL_MODS, kernels/tc_mods.cuh)
    mods: bool = False
    # its step-through (steps / reference) takes them too (flashlab/reference/fa2.py: forward
    # and backward: window, mask_mod, score_mod, GQA; reference/tc.py likewise)
    step_mods: bool = False
    # and its trace build with a variant is held to that step-through (kernel_check)
    trace_mods: bool = False

    # -- what it takes
    def takes_dtype(self, dtype: str) -> bool:
        return dtype in self.dtypes

    def takes_head_dim(self, d: int) -> bool:
        if self.head_dims is not None:
            return d in self.head_dims
        return self.max_head_dim is None or d <= self.max_head_dim

    def runs(self, dtype: str, d: int | None, compute_capability: int) -> bool:
        """Some variant takes `dtype` at head dim d on this compute capability (x10)."""
        return self.takes_dtype(dtype) and (d is None or self.takes_head_dim(d)) and any(
            v.fits(compute_capability) and v.takes(dtype, d) for v in self.variants.values())

    def why_not(self, dtype: str, d: int | None, compute_capability: int) -> str:
        """Why no variant runs `dtype` at head dim d on this compute capability (x10), in words
        for kernel='auto''s fallback warning; "" where one does."""
        if self.runs(dtype, d, compute_capability):
            return ""
        cc = _cc(compute_capability)
        if d is not None and not self.takes_head_dim(d):
            return (f"kernel {self.name!r} has no head dim {d} (it has "
                    f"{', '.join(map(str, self.head_dims))})")
        here = [v for v in self.variants.values() if v.fits(compute_capability)]
        if not here:
            return f"this GPU has compute capability {cc} ({self.name} needs {_cc(self.min_cc)}+)"
        takes = "; ".join(f"{', '.join(v.dtypes or self.dtypes)} at head dims "
                          f"{', '.join(map(str, v.head_dims or self.head_dims))}" for v in here)
        newer = [v.min_cc for v in self.variants.values() if v.min_cc > compute_capability]
        return (f"on compute capability {cc} kernel {self.name!r} takes {takes} only"
                + (f" (the others need {_cc(min(newer))}+)" if newer else ""))

    @property
    def min_cc(self) -> int:
        return min(v.min_cc for v in self.variants.values())

    def variant_for(self, compute_capability: int, d: int | None = None,
                    arch_specific: bool = True) -> str:
        """The variant that runs on this compute capability (x10) at head dim d; arch_specific
        False leaves out the variants built for one arch-specific target (sm_90a). A forced
        variant (Variant.force) comes first, wherever min_cc allows."""
        order = sorted(self.variants.items(), key=lambda item: not item[1].forced())
        for name, v in order:
            if not arch_specific and v.arch is not None and not v.arch.startswith("compute_"):
                continue
            if v.fits(compute_capability) and (d is None or v.head_dims is None
                                                 or d in v.head_dims):
                return name
        raise ValueError(f"kernel {self.name!r} has no source for compute capability "
                         f"{_cc(compute_capability)}"
                         + (f" at head dim {d}" if d is not None else ""))

    def portable_variant(self) -> str:
        """The variant that runs on the most GPUs (lowest compute capability, no arch-specific
        target): kernels/tc.cu for 'tc'. What `ours(kernel)` and a bare tile plan mean."""
        return min(self.variants, key=lambda n: (self.variants[n].arch is not None,
                                                 self.variants[n].min_cc))

    def reference_head_dims(self) -> tuple | None:
        """Head dims the reference takes with its default tiles: those of the tile tables where
        the kernel has them (the reference's defaults are the kernel's tiles), else None (any)."""
        dims = {d for v in self.variants.values() for t in v.tiles.values() for d in t}
        return tuple(sorted(dims)) if dims else None

    def check_traceable(self) -> None:
        if not self.traceable:
            self.steps_fn("forward")  # says why, and what to trace instead
            raise ValueError(f"kernel {self.name!r} has no trace mode; trace "
                             + " or ".join(repr(n) for n in traceable()))

    def describe(self) -> str:
        """'tc' (tensor cores), for messages."""
        return f"{self.name!r}" + (f" ({self.hardware})" if self.hardware else "")

    def sources(self) -> tuple:
        """Every kernels/ file this kernel compiles (variants may share one)."""
        return tuple(dict.fromkeys(v.source for v in self.variants.values()))

    # -- who runs it, and what checks it (resolved on use, so importing the registry is free)
    def launch_module(self):
        return importlib.import_module(self.launcher)

    def reference_fn(self, direction: str):
        return _resolve(self.reference[_index(direction)])

    def steps_fn(self, direction: str):
        if self.steps is None:
            raise ValueError(f"kernel {self.name!r} has no tile steps to trace "
                             f"({self.algorithms[0]} writes S and P whole); trace "
                             + " or ".join(repr(n) for n in traceable()))
        return _resolve(self.steps[_index(direction)])

    def algorithm(self, direction: str) -> str:
        return self.algorithms[_index(direction)]

    def step_plan(self, direction: str) -> tuple:
        """The launch-plan keys the step-through of `direction` takes as keywords."""
        return self.step_plan_keys[_index(direction)]


def _cc(compute_capability: int) -> str:
    """75 -> "7.5"."""
    return f"{compute_capability // 10}.{compute_capability % 10}"


def _index(direction: str) -> int:
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    return 0 if direction == "forward" else 1


def _resolve(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


FP32 = ("float32",)
LOWP = ("float16", "bfloat16")
FA2_HEAD_DIMS = (16, 32, 64, 96, 128)  # D must be a multiple of 16 (16 x 16 thread grid)
FA1_MAX_HEAD_DIM = 256
TC_HEAD_DIMS = (32, 64, 96, 128, 256)  # the row widths kernels/tc.cu swizzles (swz)
TC90_HEAD_DIMS = (32, 64, 128)  # 32: one panel in the 64-byte swizzle

KERNELS: dict[str, KernelSpec] = {s.name: s for s in [
    KernelSpec(
        name="naive", title="standard attention: S and P written to HBM (A0)",
        algorithms=("A0", "A0"), variants={"default": Variant("naive.cu", min_cc=0, kernels=(
            ("naive_matmul", "naive_softmax"), ("naive_matmul", "naive_softmax", "naive_dsoftmax")))},
        dtypes=FP32, head_dims=None, max_head_dim=None, launcher="flashlab.launch.naive",
        reference=("flashlab.reference:naive_attention", "flashlab.reference.naive:naive_backward"),
        steps=None, tolerance=Tolerance("rel", 1e-4), traceable=False, baseline=True),
    KernelSpec(
        name="fa1", title="FlashAttention as the paper's Algorithm 1 (A1, B1)",
        algorithms=("A1", "B1"), variants={"default": Variant("fa1.cu", min_cc=0,
                                     kernels=(("fa1_forward",), ("fa1_backward",)))},
        dtypes=FP32, head_dims=None, max_head_dim=FA1_MAX_HEAD_DIM,
        launcher="flashlab.launch.fa1",
        reference=("flashlab.reference:fa1_forward", "flashlab.reference:fa1_backward"),
        steps=("flashlab.reference:fa1_forward_steps", "flashlab.reference:fa1_backward_steps"),
        tolerance=Tolerance("rel", 1e-4), exercises=True, slow_past_n=4096,
        planner="flashlab.launch.plans:fa1_plan"),
    KernelSpec(
        name="fa2", title="FlashAttention-2's loop order, register tiles, fp32 (F2, G2)",
        algorithms=("F2", "G2"), variants={"default": Variant("fa2.cu", min_cc=0, kernels=(
            ("fa2_forward",), ("fa2_backward", "fa2_backward_dot")))},
        dtypes=FP32, head_dims=FA2_HEAD_DIMS, max_head_dim=max(FA2_HEAD_DIMS),
        launcher="flashlab.launch.fa2",
        reference=("flashlab.reference:fa2_forward", "flashlab.reference:fa2_backward"),
        steps=("flashlab.reference:fa2_forward_steps", "flashlab.reference:fa2_backward_steps"),
        tolerance=Tolerance("rel", 1e-4), exercises=True, mods=True, step_mods=True,
        trace_mods=True, align=16,
        planner="flashlab.launch.plans:fa2_plan", instances="flashlab.launch.plans:fa2_instances"),
    KernelSpec(
        name="tc", title="F2 and G2 on tensor cores, fp16 / bf16 (mma.sync; wgmma on sm_90a)",
        algorithms=("F2", "G2"),
        variants={
            "wgmma": Variant("tc90.cu", min_cc=90, max_cc=90, arch="sm_90a",
                             head_dims=TC90_HEAD_DIMS,
                             tiles={"forward": TC90_FORWARD, "backward": TC90_BACKWARD},
                             kernels=(("tc90_forward",), ("tc90_backward", "tc_backward_dot",
                                                          "tc_backward_dq"))),
            "mma": Variant("tc.cu", min_cc=80,
                           tiles={"forward": TC_FORWARD, "backward": TC_BACKWARD},
                           kernels=(("tc_forward",), ("tc_backward", "tc_backward_dot",
                                                      "tc_backward_dq"))),
            # compute capability 7.5 (T4); newer GPUs run it with FLASHLAB_TC_TURING=1
            "turing": Variant("tc.cu", min_cc=75, max_cc=75, arch="compute_75",
                              head_dims=(64, 128), dtypes=("float16",), force=TURING_FORCE,
                              tiles={"forward": TC75_FORWARD, "backward": TC75_BACKWARD},
                              kernels=(("tc_forward",), ("tc_backward", "tc_backward_dot",
                                                         "tc_backward_dq"))),
        },
        dtypes=LOWP, head_dims=TC_HEAD_DIMS, max_head_dim=max(TC_HEAD_DIMS),
        launcher="flashlab.launch.tc",
        reference=("flashlab.reference:tc_forward", "flashlab.reference:tc_backward"),
        steps=("flashlab.reference:tc_forward_steps", "flashlab.reference:tc_backward_steps"),
        tolerance=Tolerance("fa_rule", units=TC_UNITS),
        step_plan_keys=(("warps", "Bk"), ("warps", "grid")),
        planner="flashlab.launch.plans:tc_plan_for", instances="flashlab.launch.plans:tc_instances",
        hardware="tensor cores", min_cc_why="mma.sync m16n8k8, ldmatrix", cpu=False, row_strides=True,
        mods=True, step_mods=True,
        cpu_why="inline PTX (mma.sync, ldmatrix, cp.async, wgmma) and 16-bit types"),
]}


def names() -> tuple:
    """Every kernel's name, in the order of the ladder (naive, fa1, fa2, tc)."""
    return tuple(KERNELS)


def get(name: str) -> KernelSpec:
    """The declaration of kernel `name`; a clear error naming the known ones otherwise."""
    spec = KERNELS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)} (or 'auto'), got {name!r}")
    return spec


def for_dtype(dtype: str) -> tuple:
    """Names of the kernels that take inputs of `dtype` ("float32", "float16", "bfloat16")."""
    return tuple(n for n, s in KERNELS.items() if s.takes_dtype(dtype))


def traceable() -> tuple:
    """Names of the kernels with a trace mode and a step-through to compare it with."""
    return tuple(n for n, s in KERNELS.items() if s.traceable)


def for_auto(dtype: str, d: int | None = None, compute_capability: int | None = None) -> tuple:
    """Names of the kernels kernel="auto" may run for `dtype` inputs (at head dim d, on a GPU
    of this compute capability), fastest first: the ladder read backwards, the baseline left out."""
    return tuple(n for n, s in reversed(KERNELS.items())
                 if not s.baseline and s.takes_dtype(dtype) and (d is None or s.takes_head_dim(d))
                 and (compute_capability is None or s.runs(dtype, d, compute_capability)))


def for_cpu() -> tuple:
    """Names of the kernels whose CUDA C the CPU backend (flashlab.cpu) runs: naive, fa1, fa2."""
    return tuple(n for n, s in KERNELS.items() if s.cpu)


def with_exercises() -> tuple:
    """Names of the kernels whose sources carry exercises and planted bugs (fa1, fa2)."""
    return tuple(n for n, s in KERNELS.items() if s.exercises)


def by_source(file_name: str) -> tuple[KernelSpec, str]:
    """(kernel, variant) that compiles kernels/<file_name>."""
    for spec in KERNELS.values():
        for vname, v in spec.variants.items():
            if v.source == file_name:
                return spec, vname
    raise ValueError(f"no kernel compiles {file_name!r}")
