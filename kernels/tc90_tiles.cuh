/* tc90_tiles.cuh: kernels/tc90.cu's shared-memory tiles for wgmma (sm_90a): the panel layouts
 * and their 128- and 64-byte swizzles, the descriptors that name them, the copies that fill them,
 * the byte steps of a product's k loop through them, and the register and fence helpers the
 * asynchronous products need. tc90.cu's header says how the kernels use them. */
#pragma once
#include "tc_common.cuh"

typedef unsigned long long u64;  // a wgmma descriptor

/* Shared memory written by ordinary stores or cp.async and read next by wgmma (the async proxy):
 * each writing thread fences before the barrier that publishes it. */
__device__ __forceinline__ void fence_async_smem() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

/* The panel layout of a tile W columns wide: panels of 64 columns in the 128-byte swizzle (W a
 * multiple of 64), or one panel of 32 columns in the 64-byte swizzle (W = 32). */
template <int W>
struct Panel {
    static_assert(W == 32 || W % 64 == 0, "panel tiles are 32 or a multiple of 64 columns wide");
    static constexpr int COLS = W == 32 ? 32 : 64;  // columns of one panel
    static constexpr u32 ROWB = COLS * 2;            // bytes of a panel row
    static constexpr u32 SBO = 8 * ROWB;             // bytes between 8-row groups
    static constexpr u64 MODE = W == 32 ? 2 : 1;     // the descriptor's swizzle: 64 or 128 bytes
    // where 16-byte chunk c (< COLS / 8) of row r lies in the row
    static __device__ __forceinline__ u32 chunk(int c, int r) {
        return W == 32 ? (u32)(c ^ ((r >> 1) & 3)) : (u32)(c ^ (r & 7));
    }
};

/* A wgmma shared-memory descriptor of a panel tile W columns wide: start address, LBO and SBO in
 * 16-byte units, Panel<W>'s swizzle. Adding (bytes >> 4) to it moves the start address. */
template <int W>
__device__ __forceinline__ u64 wg_desc(u32 addr, u32 lbo, u32 sbo = Panel<W>::SBO) {
    return (u64)((addr & 0x3FFFFu) >> 4) | ((u64)(lbo >> 4) << 16) | ((u64)(sbo >> 4) << 32) |
           (Panel<W>::MODE << 62);
}

/* rows [row0, row0 + R) of an (N, W) 16-bit matrix, rows `stride` elements apart -> a panel tile at
 * shared address `tile` (1024-byte aligned); rows past N become zeros. Thread x copies chunk
 * x % (W / 8) of rows x / (W / 8) + k RS, so every pass has the same swizzle and constant shared
 * offsets (copy_passes, tc_common.cuh, moves the global address). */
template <int W, int R, int NT>
__device__ __forceinline__ void load_panels(u32 tile, const u16* src, int stride, int row0, int N) {
    using P = Panel<W>;
    constexpr int CH = W / 8, CP = P::COLS / 8, RS = NT / CH;  // chunks of a row, of a panel row
    static_assert(NT % CH == 0 && RS % 8 == 0 && R % RS == 0, "tile does not split");
    const int r = threadIdx.x / CH, c = threadIdx.x % CH;
    const u32 dst = tile + (u32)((c / CP) * R * P::ROWB + r * P::ROWB + (P::chunk(c % CP, r) << 4));
    copy_passes<R, RS>(dst, RS * P::ROWB, src, src + (long long)(row0 + r) * stride + c * 8, stride,
                       N - row0 - r);
}

/* Registers an asynchronous wgmma reads as its A operand are free only after the wg_wait that
 * retires it; the compiler, which sees the read at issue, would otherwise reuse them sooner. */
template <int R>
__device__ __forceinline__ void wg_keep(u32 (&a)[R][4]) {
#pragma unroll
    for (int x = 0; x < R; ++x)
#pragma unroll
        for (int y = 0; y < 4; ++y) asm volatile("" : "+r"(a[x][y]) :: "memory");
}

/* Byte offset of the 16-column step kk of a K-major panel tile of R rows, W columns (inner
 * dimension along the row): panel kk / (COLS / 16), 32 bytes per step inside the panel row. */
template <int R, int W>
__device__ __forceinline__ constexpr u32 kmajor_step(int kk) {
    constexpr int SP = Panel<W>::COLS / 16;  // steps per panel
    return (u32)((kk / SP) * R * Panel<W>::ROWB + (kk % SP) * 32);
}
/* Byte offset of the 16-row step kk of an MN-major panel tile W columns wide (inner dimension
 * down the rows) */
template <int W>
__device__ __forceinline__ constexpr u32 mnmajor_step(int kk) {
    return (u32)(kk * 16 * Panel<W>::ROWB);
}

/* A warp's part of a wgmma accumulator (x[4 n + e], the layout wgmma.cuh describes) as the one
 * 16-row slab tc_common.cuh's helpers take (x[n][e]): the same registers. */
template <int R>
__device__ __forceinline__ Slab<R / 4>& frag(float (&x)[R]) {
    return reinterpret_cast<Slab<R / 4>&>(x);
}
