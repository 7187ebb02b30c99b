"""What the kernel tests share, on the GPU (test_kernels_gpu.py) and on the CPU backend
(test_cpu_kernels.py): the shapes, the planted bugs and where each must show, the inputs."""
import numpy as np

from flashlab import registry

FP32_KERNELS = registry.for_dtype("float32")  # naive, fa1, fa2; tc: tests/test_tc_gpu.py

# (B, H, Nq, Nk, d, causal): odd N, Nq != Nk both ways, N = 1, every supported d
SHAPES = [
    (1, 2, 1, 1, 16, False), (1, 1, 1, 5, 32, True), (2, 3, 127, 127, 64, False),
    (1, 2, 200, 77, 32, True), (1, 1, 77, 200, 128, True), (2, 2, 257, 129, 16, False),
    (1, 2, 300, 300, 64, True), (1, 1, 65, 65, 128, False), (1, 2, 130, 70, 96, True),
]
FA1_ONLY = [(1, 2, 50, 61, 40, True), (1, 1, 33, 17, 1, False), (1, 1, 40, 40, 200, True)]

# bug -> (direction, causal, first step (i, j), the quantities allowed to show it first, line)
PLANTED = {
    "no-rescale": ("forward", False, (0, 1), {"O_i"}, "A1:L12"),
    "causal-off-by-one": ("forward", True, (0, 0), {"m_i", "l_i"}, "A1:L11"),
    "fa2-no-rescale": ("forward", False, (0, 1), {"O~"}, "F2:L7"),
    "fa2-causal-off-by-one": ("forward", True, (0, 0), {"m_i", "l_i"}, "F2:L6"),
    "dk-no-scale": ("backward", False, (0, 0), {"dK~_j"}, "B1:L13"),
    "wrong-l-update": ("forward", False, (0, 1), {"l_i"}, "A1:L11"),
}


def cases(shapes=SHAPES, fa1_only=FA1_ONLY):
    """(kernel, B, H, Nq, Nk, d, causal) for every fp32 kernel: the kernels with any head dim
    take fa1_only's shapes too."""
    for kernel in FP32_KERNELS:
        any_d = registry.get(kernel).head_dims is None  # naive, fa1: any d (up to fa1's 256)
        for s in list(shapes) + (list(fa1_only) if any_d else []):
            yield kernel, *s


def case_id(kernel, B, H, Nq, Nk, d, causal) -> str:
    return f"{kernel}-{B}x{H}x{Nq}x{Nk}x{d}-{'causal' if causal else 'full'}"


def inputs(rng, B, H, Nq, Nk, d):
    shapes = [(B, H, Nq, d), (B, H, Nk, d), (B, H, Nk, d), (B, H, Nq, d)]
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def rel(x, ref):
    """max |x - ref| / max(1, max |ref|): outputs and gradients here are O(1)."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(x - ref)) / max(1.0, float(np.max(np.abs(ref)))))
