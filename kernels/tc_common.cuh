/* tc_common.cuh: what the tensor-core kernels share (kernels/tc.cu for sm_80 and newer, kernels/tc90.cu
 * for sm_90a): PTX wrappers (cp.async, ldmatrix, mma.sync, conversions), the shared-memory swizzle of
 * tc.cu's tiles and its tile loader, the causal block order and the backward's helper kernels.
 */
#pragma once
#include "common.cuh"

typedef unsigned short u16;
typedef unsigned int u32;

#define TC_LOG2E 1.4426950408889634f
#define TC_LN2 0.6931471805599453f

/* ---------------------------------------------------------------- PTX wrappers */

__device__ __forceinline__ u32 smem_addr(const void* p) {
    return static_cast<u32>(__cvta_generic_to_shared(p));
}

/* 16 bytes HBM -> shared without a register stop; pred false writes 16 zero bytes instead. */
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, bool pred) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(dst), "l"(src), "r"(pred ? 16 : 0));
}
__device__ __forceinline__ void cp_async4(u32 dst, const void* src, bool pred) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n"
                 :: "r"(dst), "l"(src), "r"(pred ? 4 : 0));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_wait() {
    asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory");
}

/* Four 8x8 16-bit matrices from shared memory; lane l gives the address of row l % 8 of matrix l / 8
 * and receives, of each matrix, row lane / 4, columns 2 (lane % 4) and 2 (lane % 4) + 1. */
__device__ __forceinline__ void ldsm4(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
/* The same, transposed: lane receives rows 2 (lane % 4) and 2 (lane % 4) + 1 of column lane / 4. */
__device__ __forceinline__ void ldsm4t(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

/* C (16x8, fp32) += A (16x16, row) * B (16x8, col). Lane l = 4g + t holds
 *   A: a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
 *   B: b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g)
 *   C: c0, c1 = (g, 2t..2t+1), c2, c3 = (g+8, 2t..2t+1)                                  */
template <bool BF16>
__device__ __forceinline__ void mma16816(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    if (BF16)
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
            "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    else
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
            "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Two fp32 -> one register of two 16-bit values (round to nearest even); lo in the low half. */
template <bool BF16>
__device__ __forceinline__ u32 pack2(float lo, float hi) {
    u32 r;
    if (BF16) asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    else      asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
/* 2^x in one MUFU instruction (2^-inf = 0). */
__device__ __forceinline__ float exp2_fast(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}
/* dQ accumulator += (a, b) at p, p + 1 (8-byte aligned): one vector reduction on sm_90, two before. */
__device__ __forceinline__ void red_add2(float* p, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" :: "l"(p), "f"(a), "f"(b) : "memory");
#else
    atomicAdd(p, a);
    atomicAdd(p + 1, b);
#endif
}
template <bool BF16>
__device__ __forceinline__ float to_f32(u16 x) {
    if (BF16) return __uint_as_float(((u32)x) << 16);
    float f;
    asm("cvt.f32.f16 %0, %1;\n" : "=f"(f) : "h"(x));
    return f;
}
template <bool BF16>
__device__ __forceinline__ u16 from_f32(float x) {
    return (u16)(pack2<BF16>(x, 0.0f) & 0xffffu);
}

/* ---------------------------------------------------------------- swizzled tiles */

/* Shared tiles hold rows of W 16-bit values as W/8 chunks of 16 bytes. Chunk c of row r lives at
 * chunk (c ^ (r % 8)) of its group of 8 (rows of 4 chunks, W = 32: c ^ ((r / 2) % 4)). The 8 rows an
 * ldmatrix reads at one logical chunk then sit in 8 different 16-byte bank groups. */
template <int W>
__device__ __forceinline__ int swz(int r, int c) {
    static_assert(W % 64 == 0 || W == 32, "tile rows must be 32 or a multiple of 64 elements");
    if (W == 32) return r * 4 + (c ^ ((r >> 1) & 3));
    return r * (W / 8) + (c ^ (r & 7));
}

/* ldmatrix addresses with few registers. A lane reads row r + R, logical chunk cc + x of a
 * swizzled tile, where r and x (0 or 1) depend on the lane and R (a multiple of 8 rows) and cc
 * (even) are compile-time constants of an unrolled loop. Since cc + x = cc ^ x, the physical chunk
 * is (cc & ~7) + ((cc & 6) ^ y) with y = x ^ (r % 8): four values of cc & 6, so four base
 * registers plus an immediate offset cover every (R, cc). (W = 32 has two.) Without this ptxas
 * keeps one register per (R, cc) alive across the whole key loop, which is what spilled. */
template <int W>
struct SwzAddr {
    static constexpr int NB = W == 32 ? 2 : 4;
    u32 b[NB];
    __device__ __forceinline__ SwzAddr(const uint4* tile, int r, int x) {
        const int y = x ^ (W == 32 ? (r >> 1) & 3 : r & 7);
        const u32 row = smem_addr(tile) + 16u * (u32)(r * (W / 8));
#pragma unroll
        for (int m = 0; m < NB; ++m) b[m] = row + 16u * (u32)((2 * m) ^ y);
    }
    __device__ __forceinline__ u32 at(int R, int cc) const {
        return b[(cc >> 1) & (NB - 1)] + 16u * (u32)(R * (W / 8) + (cc & ~(2 * NB - 1)));
    }
};

/* rows [row0, row0 + R) of a (N, W) 16-bit matrix -> shared tile; rows past N become zeros.
 * A thread copies chunk tid % CH of rows tid / CH + k RS (RS = NT / CH rows a pass): RS is a
 * multiple of 8, so the swizzle is the same in every pass and each pass's shared and global
 * addresses are the first one's plus a constant (no registers per pass kept across the loop). */
template <int W, int R, int NT>
__device__ __forceinline__ void load_tile(uint4* tile, const u16* src, int row0, int N) {
    constexpr int CH = W / 8, RS = NT / CH;
    static_assert(NT % CH == 0 && RS % 8 == 0 && R % RS == 0, "tile does not split into passes");
    const int r = threadIdx.x / CH, c = threadIdx.x % CH;
    const u32 dst = smem_addr(tile + swz<W>(r, c));
    const u16* g = src + (size_t)(row0 + r) * W + c * 8;
    const int left = N - row0 - r;  // this thread's rows k RS < left exist
#pragma unroll
    for (int k = 0; k < R / RS; ++k) {
        const bool ok = k * RS < left;
        cp_async16(dst + 16u * (u32)(k * RS * CH), ok ? g + (size_t)k * RS * W : src, ok);
    }
}

/* ---------------------------------------------------------------- causal block order */

/* Which block x (F2: row block i; G2: key block j) and head bh the thread block
 * (blockIdx.x, blockIdx.y) of a grid (blocks per head, B*H) computes.
 *
 * Not causal: x = blockIdx.x, bh = blockIdx.y (every block has the same work). Causal: the work
 * is a triangle. F2's row block i sees about i + 1 key tiles (LONG_HIGH: the longest block has
 * the highest x); G2's key block j sees every query block from about j on (the longest has
 * x = 0). The GPU starts thread blocks in index order as earlier ones finish, so the longest go
 * first and the last to start are short: they fill the tail instead of leaving multiprocessors
 * idle behind one long block. Longest first across every head would spread the resident blocks
 * over all heads' K and V (Q and dO), more than L2 holds; so heads go in groups of `group` (the
 * launcher picks how many heads' operands fit: tc_head_group in cuda_kernel_ops.py), inside a
 * group longest first, then by head. The last group may have fewer heads. The same mapping:
 * flashlab/reference/tc.py tc_block_order. */
template <bool LONG_HIGH>
__device__ __forceinline__ void block_order(int causal, int group, int& x, int& bh) {
    const int nx = gridDim.x, BH = gridDim.y;
    const int G = causal ? group : 1;             // not causal: one head at a time, x ascending
    u32 bx, by;  // read anew at each call (volatile): a kernel short of registers may call this
    asm volatile("mov.u32 %0, %%ctaid.x;\n" : "=r"(bx));  // again for its epilogue rather than
    asm volatile("mov.u32 %0, %%ctaid.y;\n" : "=r"(by));  // keep x and bh live (or spill them)
    const int id = (int)bx + nx * (int)by;        // start order
    const int c = id / (G * nx);                  // head group
    const int r = id - c * G * nx;
    const int heads = min(G, BH - c * G);         // the last group may have fewer
    const int q = r / heads;
    x = (LONG_HIGH && causal) ? nx - 1 - q : q;
    bh = c * G + r % heads;
}

/* ---------------------------------------------------------------- G2 helper kernels */

/* G2:L0  Dv = rowsum(dO * O) in fp32, one warp per row; the same pass zeroes that row of the fp32
 * dQ accumulator that G2:L7's atomic adds collect into. */
template <bool BF16>
__global__ void __launch_bounds__(256)
tc_backward_dot(const u16* __restrict__ dO, const u16* __restrict__ O, float* __restrict__ Dv,
                float* __restrict__ dQacc, long long rows, int d) {
    const long long row = (long long)blockIdx.x * 8 + threadIdx.x / 32;
    if (row >= rows) return;
    const int lane = threadIdx.x % 32;
    float acc = 0.0f;
    for (int x = lane; x < d; x += 32) {
        acc += to_f32<BF16>(dO[row * d + x]) * to_f32<BF16>(O[row * d + x]);
        dQacc[row * d + x] = 0.0f;
    }
    for (int s = 16; s > 0; s >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, s);
    if (lane == 0) Dv[row] = acc;
}

/* dQ = tau * dQacc, rounded to the input dtype (after every thread block of G2 has added in). */
template <bool BF16>
__global__ void __launch_bounds__(256)
tc_backward_dq(const float* __restrict__ dQacc, u16* __restrict__ dQ, long long n, float tau) {
    const long long x = (long long)blockIdx.x * 256 + threadIdx.x;
    if (x < n) dQ[x] = from_f32<BF16>(tau * dQacc[x]);
}
