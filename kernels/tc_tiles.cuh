/* tc_tiles.cuh: kernels/tc.cu's own pieces (sm_75 / sm_80 and newer): the mma.sync and
 * ldmatrix wrappers, and its shared-memory tiles (the XOR swizzle, the cp.async tile loaders,
 * and on Turing the register-staged copy, RegTile). tc.cu's header says how the kernels use them;
 * tc90.cu's wgmma panels are tc90_tiles.cuh. */
#pragma once
#include "tc_common.cuh"

/* ---------------------------------------------------------------- mma.sync and ldmatrix */

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
#if TC_SM75  // float16 only: the k = 0..7 half ({a0, a1}, b0), then k = 8..15 ({a2, a3}, b1)
    static_assert(!BF16, "bfloat16 mma.sync needs sm_80: the sm_75 build is float16 only");
    asm("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]) : "r"(a[0]), "r"(a[1]), "r"(b0));
    asm("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]) : "r"(a[2]), "r"(a[3]), "r"(b1));
#else
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
#endif
}

/* ---------------------------------------------------------------- swizzled tiles */

/* Shared tiles hold rows of W 16-bit values as W/8 chunks of 16 bytes. Chunk c of row r lives at
 * chunk (c ^ (r % 8)) of its group of 8 (rows of 4 chunks, W = 32: c ^ ((r / 2) % 4)). The 8 rows an
 * ldmatrix reads at one logical chunk then sit in 8 different 16-byte bank groups. Rows of 12
 * chunks (W = 96, 192 bytes) are a group of 8 swizzled so, then a group of 4 swizzled as W = 32's:
 * row r starts at bank group 4 r % 8, and within either group the 8 rows r0 .. r0 + 7 (r0 a
 * multiple of 8) still land in 8 different bank groups (even rows keep a chunk's parity, odd rows
 * move it by 4). */
template <int W>
__device__ __forceinline__ int swz(int r, int c) {
    static_assert(W % 64 == 0 || W == 32 || W == 96, "tile rows must be 32, 96 or a multiple of 64 elements");
    if (W == 32) return r * 4 + (c ^ ((r >> 1) & 3));
    if (W == 96 && c >= 8) return r * 12 + 8 + ((c - 8) ^ ((r >> 1) & 3));
    return r * (W / 8) + (c ^ (r & 7));
}

/* ldmatrix addresses with few registers. A lane reads row r + R, logical chunk cc + x of a
 * swizzled tile, where r and x (0 or 1) depend on the lane and R (a multiple of 8 rows) and cc
 * (even) are compile-time constants of an unrolled loop. Since cc + x = cc ^ x, the physical chunk
 * is (cc & ~7) + ((cc & 6) ^ y) with y = x ^ (r % 8): four values of cc & 6, so four base
 * registers plus an immediate offset cover every (R, cc). (W = 32 has two; W = 96 four for its
 * first 8 chunks and two for its last 4.) Without this ptxas keeps one register per (R, cc) alive
 * across the whole key loop, which is what spilled. */
template <int W>
struct SwzAddr {
    static constexpr int NB = W == 32 ? 2 : 4;
    static constexpr int NTAIL = W == 96 ? 2 : 1;  // W = 96: the tail group's bases
    u32 b[NB], tail[NTAIL];
    __device__ __forceinline__ SwzAddr(const uint4* tile, int r, int x) {
        const int y = x ^ (W == 32 ? (r >> 1) & 3 : r & 7);
        const u32 row = smem_addr(tile) + 16u * (u32)(r * (W / 8));
#pragma unroll
        for (int m = 0; m < NB; ++m) b[m] = row + 16u * (u32)((2 * m) ^ y);
        const int y4 = x ^ ((r >> 1) & 3);
#pragma unroll
        for (int m = 0; m < NTAIL; ++m) tail[m] = row + 16u * (u32)(8 + ((2 * m) ^ y4));
    }
    __device__ __forceinline__ u32 at(int R, int cc) const {
        if (W == 96 && cc >= 8) return tail[((cc - 8) >> 1) & 1] + 16u * (u32)(R * 12);
        return b[(cc >> 1) & (NB - 1)] + 16u * (u32)(R * (W / 8) + (cc & ~(2 * NB - 1)));
    }
};

/* Chunks C0 .. C0 + CW - 1 of rows [row0, row0 + R) of an (N, W) 16-bit matrix whose rows are
 * `stride` elements apart -> shared tile; rows past N become zeros.
 * A thread copies chunk C0 + tid % CW of rows tid / CW + k RS (RS = NT / CW rows a pass): RS is a
 * multiple of 8, so the swizzle is the same in every pass and each pass's shared address is the
 * first one's plus a constant (copy_passes, tc_common.cuh, moves the global one). */
template <int W, int C0, int CW, int R, int NT>
__device__ __forceinline__ void load_chunks(uint4* tile, const u16* src, int stride, int row0, int N) {
    constexpr int RS = NT / CW;
    static_assert(NT % CW == 0 && RS % 8 == 0 && R % RS == 0, "tile does not split into passes");
    const int r = threadIdx.x / CW, c = C0 + threadIdx.x % CW;
    const u32 dst = smem_addr(tile + swz<W>(r, c));
    // this thread's rows k RS < N - row0 - r exist
    copy_passes<R, RS>(dst, 16u * RS * (W / 8), src, src + (long long)(row0 + r) * stride + c * 8,
                       stride, N - row0 - r);
}

/* Rows [row0, row0 + R) of an (N, W) matrix -> shared tile: every chunk of a row in one pass
 * pattern where 8 whole rows fit the threads, else in column parts of NT / 8 chunks (W = 256
 * with 128 threads: two halves), each part 8 rows a pass; W = 96 (12 chunks do not divide the
 * threads): its first 8 chunks, then its last 4. */
template <int W, int C0, int R, int NT>
__device__ __forceinline__ void load_parts(uint4* tile, const u16* src, int stride, int row0, int N) {
    constexpr int CW = (W / 8) * 8 > NT ? NT / 8 : W / 8;
    static_assert((W / 8) % CW == 0, "a row does not split into equal column parts");
    load_chunks<W, C0, CW, R, NT>(tile, src, stride, row0, N);
    if constexpr (C0 + CW < W / 8) load_parts<W, C0 + CW, R, NT>(tile, src, stride, row0, N);
}

template <int W, int R, int NT>
__device__ __forceinline__ void load_tile(uint4* tile, const u16* src, int stride, int row0, int N) {
    if constexpr (W == 96) {
        load_chunks<W, 0, 8, R, NT>(tile, src, stride, row0, N);
        load_chunks<W, 8, 4, R, NT>(tile, src, stride, row0, N);
    } else {
        load_parts<W, 0, R, NT>(tile, src, stride, row0, N);
    }
}

#if TC_SM75
/* Turing has no cp.async, so a copy HBM -> shared stops its warp at the shared store until the
 * data arrives. A tile copied during the previous one goes through registers in two halves
 * instead: fetch issues the global loads of rows [row0, row0 + R) (the chunks load_chunks
 * copies, rows past N zeros) and returns at once; store, a tile of arithmetic later, writes them
 * to shared memory, by when they have landed. R / RS uint4 a thread (W = 64 or 128, 128
 * threads: 4, 16 registers a tile). */
template <int W, int R, int NT>
struct RegTile {
    static constexpr int CW = W / 8, RS = NT / CW;
    static_assert(CW * 8 <= NT && NT % CW == 0 && RS % 8 == 0 && R % RS == 0,
                  "RegTile copies whole rows, 8 or more a pass");
    uint4 v[R / RS];
    __device__ __forceinline__ void fetch(const u16* src, int stride, int row0, int N) {
        const int r = threadIdx.x / CW, left = N - row0 - r;
        const u16* g = src + (long long)(row0 + r) * stride + (threadIdx.x % CW) * 8;
#pragma unroll
        for (int k = 0; k < R / RS; ++k) {
            v[k] = k * RS < left ? *reinterpret_cast<const uint4*>(g) : make_uint4(0u, 0u, 0u, 0u);
            g += (long long)RS * stride;
        }
    }
    __device__ __forceinline__ void store(uint4* tile) const {
        const u32 dst = smem_addr(tile + swz<W>(threadIdx.x / CW, threadIdx.x % CW));
#pragma unroll
        for (int k = 0; k < R / RS; ++k)
            asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n"
                         :: "r"(dst + (u32)k * 16u * RS * CW), "r"(v[k].x), "r"(v[k].y),
                            "r"(v[k].z), "r"(v[k].w) : "memory");
    }
};
#endif
