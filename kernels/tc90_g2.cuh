/* tc90_g2.cuh: the products of one G2 step for a warpgroup's 64 keys, as Hopper's wgmma issues
 * them (kernels/tc90.cu's backward and the ladder's, tc90_ws_bwd.cu): one place for the
 * descriptors' steps, so the two backward kernels multiply alike.
 *
 * A step's stage holds Q_i at byte offset so and dO_i at so + BR D 2 (panels of 64 columns in
 * the 128-byte swizzle, tc90_tiles.cuh); the descriptors name the stage area's start:
 *   aK, aV  K_j, V_j rows of this warpgroup (K-major A);
 *   bQk     the stages as K-major B (for S^T, dP^T), bQm as MN-major B (for dV~, dK~).
 */
#pragma once
#include "tc90_tiles.cuh"
#include "wgmma.cuh"

/* G2:L5  S^T = K_j Q_i^T into s and G2:L6  dP^T = V_j dO_i^T into dp, issued as one group (not
 * waited for). */
template <bool BF16, int D, int BR, int BC>
__device__ __forceinline__ void g2_issue_sdp(float (&s)[BR / 2], float (&dp)[BR / 2], u64 aK,
                                             u64 aV, u64 bQk, u32 so) {
    constexpr u32 QT = BR * D * 2;
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
        wg_ss<BF16, BR, 0, 0>(s, aK + (kmajor_step<BC, D>(kk) >> 4),
                              bQk + ((so + kmajor_step<BR, D>(kk)) >> 4), kk > 0);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
        wg_ss<BF16, BR, 0, 0>(dp, aV + (kmajor_step<BC, D>(kk) >> 4),
                              bQk + ((so + QT + kmajor_step<BR, D>(kk)) >> 4), kk > 0);
    wg_commit();
}

/* G2:L6  dV~ += P^T dO_i and G2:L8  dK~ += dS^T Q_i (tau applied at G2:L10), P^T and dS^T as
 * 16-bit A operands in registers, issued as one group (not waited for). */
template <bool BF16, int D, int BR>
__device__ __forceinline__ void g2_issue_dvdk(float (&dv)[D / 2], float (&dk)[D / 2],
                                              const u32 (&pa)[BR / 16][4],
                                              const u32 (&sa)[BR / 16][4], u64 bQm, u32 so) {
    constexpr u32 QT = BR * D * 2;
    wg_touch(dv);
    wg_touch(dk);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < BR / 16; ++kk)
        wg_rs<BF16, D, 1>(dv, pa[kk], bQm + ((so + QT + mnmajor_step<D>(kk)) >> 4), 1);
#pragma unroll
    for (int kk = 0; kk < BR / 16; ++kk)
        wg_rs<BF16, D, 1>(dk, sa[kk], bQm + ((so + mnmajor_step<D>(kk)) >> 4), 1);
    wg_commit();
}
