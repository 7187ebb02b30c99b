"""Probe for issue 22 (the Hopper ladder), step 1: can a CuPy launch take a TMA tensor map?

FlashAttention-3's producer warp loads K_j and V_j with the Tensor Memory Accelerator
(`cp.async.bulk.tensor`), which reads a 128-byte CUtensorMap describing the global tensor.
This script makes one with cuda-bindings' cuTensorMapEncodeTiled (64 x 64 16-bit tiles, the
128-byte swizzle that kernels/tc90.cu's panels use), passes it to a CuPy RawKernel as a
`const __grid_constant__ CUtensorMap` parameter (by address, as flashlab.launch.prepared passes
its constants), loads one tile into shared memory behind an mbarrier and copies the shared bytes
out as they lie. The host then checks every element against the 128-byte swizzle: 16-byte chunk
c of row r lands at chunk c ^ (r % 8), so every element must be where tc90.cu's SwzAddr expects
it. Run on an sm_90 GPU from the repository root:

    python3 scripts/probe_tma.py            # prints what passed, exits 1 on a mismatch
    python3 scripts/probe_tma.py --compile  # no GPU: NVRTC to sm_90a, the SASS's TMA instructions

Run on the H200 2026-12-04: the three boxes (rows 0, 64, 192) matched the swizzle.
"""
import argparse
import subprocess
import sys

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

ROWS, COLS, BOX = 256, 64, 64  # a (256, 64) 16-bit tensor, 64 x 64 boxes (one 128-byte row each)

SOURCE = r"""
struct __align__(64) CUtensorMap { unsigned long long opaque[16]; };  // cuda.h's, 128 bytes

/* One TMA load of the box at (col 0, row row0) of `tmap` into 1024-byte-aligned shared memory,
 * completed on an mbarrier; the shared bytes are then copied to out (64 x 64 u16) as they lie. */
extern "C" __global__ void __launch_bounds__(128)
tma_probe(const __grid_constant__ CUtensorMap tmap,
          unsigned short* __restrict__ out,  // (64, 64): the box as it lies in shared memory
          int row0) {
    __shared__ __align__(1024) unsigned short tile[64 * 64];
    __shared__ __align__(8) unsigned long long bar;
    const unsigned sbar = (unsigned)__cvta_generic_to_shared(&bar);
    const unsigned stile = (unsigned)__cvta_generic_to_shared(tile);
    if (threadIdx.x == 0) {
        asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" :: "r"(sbar) : "memory");
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n"
                     :: "r"(sbar), "r"(64 * 64 * 2) : "memory");
        asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                     " [%0], [%1, {%2, %3}], [%4];\n"
                     :: "r"(stile), "l"(reinterpret_cast<unsigned long long>(&tmap)), "r"(0),
                        "r"(row0), "r"(sbar) : "memory");
    }
    unsigned done = 0;
    while (!done)  // phase 0 of the barrier: the bytes have landed
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], 0;\n"
                     " selp.u32 %0, 1, 0, p;\n}\n" : "=r"(done) : "r"(sbar) : "memory");
    for (int x = threadIdx.x; x < 64 * 64; x += blockDim.x) out[x] = tile[x];
}
"""


def expected_swizzled(x: np.ndarray, row0: int) -> np.ndarray:
    """The (64, 64) box at row0 of x as the 128-byte swizzle lays it in shared memory: row r's
    16-byte chunk c (8 elements) at chunk c ^ (r % 8)."""
    box = x[row0:row0 + BOX, :COLS]
    out = np.empty_like(box)
    for r in range(BOX):
        for c in range(COLS // 8):
            d = c ^ (r % 8)
            out[r, 8 * d:8 * d + 8] = box[r, 8 * c:8 * c + 8]
    return out


def tensor_map(ptr: int):
    """cuTensorMapEncodeTiled for the (ROWS, COLS) uint16 tensor at device address ptr."""
    from cuda.bindings import driver as cu

    err, tmap = cu.cuTensorMapEncodeTiled(
        cu.CUtensorMapDataType.CU_TENSOR_MAP_DATA_TYPE_UINT16, 2, ptr,
        [cu.cuuint64_t(COLS), cu.cuuint64_t(ROWS)],  # sizes, innermost first
        [cu.cuuint64_t(COLS * 2)],  # byte strides of the dims past the first
        [cu.cuuint32_t(BOX), cu.cuuint32_t(BOX)], [cu.cuuint32_t(1), cu.cuuint32_t(1)],
        cu.CUtensorMapInterleave.CU_TENSOR_MAP_INTERLEAVE_NONE,
        cu.CUtensorMapSwizzle.CU_TENSOR_MAP_SWIZZLE_128B,
        cu.CUtensorMapL2promotion.CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
        cu.CUtensorMapFloatOOBfill.CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE)
    if err != cu.CUresult.CUDA_SUCCESS:
        raise SystemExit(f"cuTensorMapEncodeTiled: {err}")
    return tmap


def run() -> int:
    import cupy as cp

    x = (np.arange(ROWS * COLS) % 65521).astype(np.uint16).reshape(ROWS, COLS)
    dx = cp.asarray(x)
    tmap = tensor_map(dx.data.ptr)
    host = np.array(tmap.opaque, np.uint64)  # the 128 bytes, which the launch copies
    assert host.nbytes == 128, host.nbytes
    # sm_90a as tc90.cu is built (CuPy's RawModule compiles for the plain target only)
    from flashlab.launch.compiler import _ArchModule

    fn = _ArchModule(SOURCE, ("--std=c++17",), ("tma_probe",), "sm_90a",
                     "tma_probe.cu").get_function("tma_probe")
    bad = 0
    for row0 in (0, 64, 192):
        out = cp.full((BOX, COLS), 0xFFFF, cp.uint16)  # poisoned: every element must be written
        fn((1,), (128,), (cp.cuda.function.CPointer(host.ctypes.data), out, np.int32(row0)))
        got = cp.asnumpy(out)
        want = expected_swizzled(x, row0)
        wrong = int((got != want).sum())
        print(f"row0 {row0}: {'ok' if not wrong else f'{wrong} of {got.size} elements differ'}")
        if wrong:
            plain = x[row0:row0 + BOX]
            print("  as the unswizzled box:", bool((got == plain).all()))
        bad += wrong
    print("TMA through a CuPy launch with a __grid_constant__ tensor map:", "works" if not bad
          else "FAILED")
    return 1 if bad else 0


def compile_only() -> int:
    """No GPU: NVRTC to sm_90a, then the SASS's TMA and barrier instructions (needs cuda-bindings'
    NVRTC and cuobjdump on PATH)."""
    import tempfile

    from cuda.bindings import nvrtc

    err, prog = nvrtc.nvrtcCreateProgram(SOURCE.encode(), b"tma_probe.cu", 0, [], [])
    opts = [b"--std=c++17", b"--gpu-architecture=sm_90a"]
    (res,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
    _, n = nvrtc.nvrtcGetProgramLogSize(prog)
    log = b" " * n
    nvrtc.nvrtcGetProgramLog(prog, log)
    if res != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        print(log.decode())
        return 1
    _, n = nvrtc.nvrtcGetCUBINSize(prog)
    cubin = b" " * n
    nvrtc.nvrtcGetCUBIN(prog, cubin)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run(["cuobjdump", "-sass", f.name], capture_output=True, text=True).stdout
    ops = [w for line in sass.splitlines() for w in line.split() if w.startswith(("UTMALDG", "SYNCS"))]
    print("NVRTC sm_90a: compiled;", ", ".join(sorted(set(ops))) or "no TMA instructions found")
    return 0 if any(o.startswith("UTMALDG") for o in ops) else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--compile", action="store_true")
    sys.exit(compile_only() if p.parse_args().compile else run())
