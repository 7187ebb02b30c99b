/* tc90_ws_bwd.cu: G2 on Hopper with warp specialization (the Hopper ladder, issue 22, step 4:
 * FlashAttention-3's backward schedule, first rung), sm_90a only.
 *
 * The same algorithm, tiles and roundings as tc90.cu's backward (docs/ALGORITHMS.md G2; BC = 128
 * keys per thread block, BR queries per step: 64 at d = 128, 128 at d = 64); what changes is who
 * loads and how the warpgroups wait:
 *
 *   - warpgroup 0 is the producer: one thread asks the TMA unit for K_j and V_j once, then for
 *     Q_i, dO_i (128-byte swizzled panels, as the forward's) and L_i, D_i (boxes of BR + 4
 *     floats) step after step, into ST stages guarded by mbarriers ("full": the bytes have
 *     landed; "empty": the 256 consumer threads are done with the stage). It keeps 24
 *     registers (setmaxnreg) so that the consumers can take 240;
 *   - warpgroups 1 and 2 are the consumers, 64 keys each: per step S^T = K_j Q_i^T and
 *     dP^T = V_j dO_i^T (wgmma from shared memory), P^T and dS^T in registers (G2:L5-L6),
 *     dV~ += P^T dO_i and dK~ += dS^T Q_i (wgmma, A from registers), and dQ_i += dS K_j after
 *     both have written their half of dS^T to shared memory (wgmma from shared memory);
 *   - dQ_i's term goes into the fp32 dQ accumulator through shared memory: the consumers store
 *     it (fp32 panels in the 128-byte swizzle), and the dQ writer (warp 1 of the producer
 *     warpgroup, FlashAttention-3's) asks the TMA unit to add the buffer into global memory
 *     (cp.reduce.async.bulk.tensor), then frees it; the buffer's "full" and "empty" mbarriers
 *     let the consumers run a step ahead of the adds. DQW = 0: the consumers' fp32 atomic adds
 *     instead, as tc90.cu (the ladder's ablation);
 *   - no __syncthreads in the loop: the stages are released by their "empty" mbarriers, and the
 *     two consumers meet once a step (named barrier 1: dS^T is complete). dS^T has two buffers,
 *     so step i + 1 writes one while the other warpgroup may still read step i's.
 *
 * Reference: flashlab/reference/tc.py (G2 with Br = BR, Bc = 128: the loop order and the
 * roundings are the same, only who loads and when differs).
 * Layout: Q, dO (B, H, Nq, D), K, V (B, H_kv, Nk, D) as 4-D tensor maps (D, N, heads, B), boxes
 * of 64 columns x BR (Q, dO) or 128 (K, V) rows; L, D (B H Nq) fp32 as one-row maps, boxes of
 * BR + 4; dQacc (B, H, Nq, D) fp32 (also as a map, boxes of 32 columns x BR rows), zeroed by
 * tc_backward_dot (G2:L0) and rounded by tc_backward_dq (tc_common.cuh); dK, dV (B, H, Nk, D)
 * per query head, rows as dkr, dvr say (with GQA the launcher sums each group's).
 * Launch: tc_backward_dot, then a 1-D grid of ceil(Nk / 128) B*H blocks of 384 threads,
 * 4 BC D + 4 BC BR + ST (4 BR D + 2 LB) + 4 BR D DQW + 8 (3 + 2 ST) bytes of shared memory
 * (LB: a slot of an L_i or D_i box, rounded up to 128 bytes), in block_order's
 * order (causal: longest key blocks first), then tc_backward_dq.
 */
#include "tc_common.cuh"
#include "tc90_tiles.cuh"
#include "tma.cuh"
#include "wgmma.cuh"
#include "tc90_g2.cuh"

#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "kernels/tc90_ws_bwd.cu needs sm_90a (wgmma, TMA, setmaxnreg)"
#endif

/* DQW: dQ_i's term leaves through shared memory, added into the accumulator by the TMA unit, at
 * the request of warp 1 of the producer warpgroup (the dQ writer: FlashAttention-3's), so the
 * consumers issue no atomics (1); or the consumers add it in with fp32 atomics (0). */
template <bool BF16, int D, int BR, int ST, int DQW>
__global__ void __launch_bounds__(384, 1)
tc90ws_backward(const __grid_constant__ CUtensorMap tmQ,   // (D, Nq, H, B)
                const __grid_constant__ CUtensorMap tmK,   // (D, Nk, H_kv, B)
                const __grid_constant__ CUtensorMap tmV,   // (D, Nk, H_kv, B)
                const __grid_constant__ CUtensorMap tmdO,  // (D, Nq, H, B)
                const __grid_constant__ CUtensorMap tmL,   // (B H Nq) fp32 logsumexp
                const __grid_constant__ CUtensorMap tmD,   // (B H Nq) fp32 rowsum(dO * O)
                const __grid_constant__ CUtensorMap tmdQ,  // (D, Nq, H, B) fp32 (DQW)
                float* __restrict__ dQacc,                 // (B, H, Nq, D) fp32
                u16* __restrict__ dK,                      // (B, H, Nk, D), rows as dkr says
                u16* __restrict__ dV,                      // (B, H, Nk, D), rows as dvr says
                int Nq, int Nk, float tau, int causal, int group, int H, int BH, int G,
                Rows dkr, Rows dvr) {
    constexpr int BC = 128, NQ = BR / 8;  // keys per block; n8 query tiles of S^T per warp
    // dQ_i's term (BR x D) splits over the two consumers by columns when BR = 64 (a wgmma is 64
    // rows tall) and by rows when BR = 128
    constexpr bool DQ_ROWS = BR == 128;
    constexpr int DQ = DQ_ROWS ? D : D / 2;  // dQ columns per consumer
    static_assert(D % 64 == 0 && D <= 128 && (BR == 64 || (BR == 128 && D == 64)) && ST >= 2,
                  "unsupported tile");
    // L_i, D_i: boxes of BR + 4 floats from the multiple of 4 at or below the first row (the TMA
    // unit takes a box only from a 16-byte aligned start), each in a slot of LB bytes
    constexpr u32 KV = BC * D * 2, QT = BR * D * 2, DS = BC * BR * 2;
    constexpr u32 LB = ((BR + 4) * 4 + 127) / 128 * 128, LD = 2 * LB;
    // shared memory: K_j, V_j; dS^T twice; ST stages of (Q_i, dO_i); dQ_i's term (DQW: fp32
    // panels of 32 columns, 128-byte swizzle); ST stages of (L_i, D_i); mbarriers
    constexpr u32 OK_ = 0, OV = KV, OS = 2 * KV, OQ = OS + 2 * DS, ODQ = OQ + ST * 2 * QT;
    constexpr u32 OLD = ODQ + (DQW ? BR * D * 4 : 0), OB = OLD + ST * LD;
    extern __shared__ __align__(1024) uint4 smem[];
    const u32 s0 = smem_addr(smem);
    if ((s0 & 1023u) != 0) __trap();  // the swizzle needs 1024-byte aligned tiles
    // mbarriers: K_j and V_j full, then per stage full, empty, then dQ's buffer full, empty
    const u32 kvfull = s0 + OB;
    auto full = [&](int s) { return s0 + OB + 8 + 8 * s; };
    auto empty = [&](int s) { return s0 + OB + 8 + 8 * (ST + s); };
    const u32 dqfull = s0 + OB + 8 + 16 * ST, dqempty = dqfull + 8;

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wg = warp >> 2;
    const int Tr = (Nq + BR - 1) / BR, Tc = (Nk + BC - 1) / BC;
    int j, bh;
    block_order_of<false>(blockIdx.x, Tc, BH, causal, group, j, bh);  // causal: j = 0 first
    const int i0 = causal ? min(Tr, (j * BC) / BR) : 0, iend = Tr;  // G2:L3 causal skipping

    if (threadIdx.x == 0) {
        mbar_init(kvfull, 1);
        for (int s = 0; s < ST; ++s) {
            mbar_init(full(s), 1);
            mbar_init(empty(s), 256);  // every consumer thread
        }
        mbar_init(dqfull, 256);
        mbar_init(dqempty, 1);
        mbar_init_fence();
    }
    __syncthreads();  // the last block-wide barrier

    if (wg == 0) {  // ------------------------------------------------ producer
        regs_dec<24>();
        if (warp == 0 && lane == 0 && i0 < iend) {
            tma_prefetch_map(&tmQ);
            tma_prefetch_map(&tmdO);
            tma_prefetch_map(&tmL);
            tma_prefetch_map(&tmD);
            const int b = bh / H, h = bh - b * H;
            mbar_expect_tx(kvfull, 2 * KV);                                       // G2:L2
#pragma unroll
            for (int p = 0; p < D / 64; ++p) {
                tma_load4(s0 + OK_ + p * BC * 128, &tmK, 64 * p, j * BC, h / G, b, kvfull);
                tma_load4(s0 + OV + p * BC * 128, &tmV, 64 * p, j * BC, h / G, b, kvfull);
            }
            for (int i = i0, n = 0; i < iend; ++i, ++n) {                         // G2:L4
                const int s = n % ST;
                if (n >= ST) mbar_wait(empty(s), (u32)(n / ST - 1) & 1u);  // its last use is over
                mbar_expect_tx(full(s), 2 * QT + 2 * (BR + 4) * 4);
                const u32 q = s0 + OQ + s * 2 * QT, ld = s0 + OLD + s * LD;
#pragma unroll
                for (int p = 0; p < D / 64; ++p) {
                    tma_load4(q + p * BR * 128, &tmQ, 64 * p, i * BR, h, b, full(s));
                    tma_load4(q + QT + p * BR * 128, &tmdO, 64 * p, i * BR, h, b, full(s));
                }
                // rows past Nq read the next head's L, D (or zeros after the last): finite,
                // and their P is masked to 0
                const int a0 = (bh * Nq + i * BR) & ~3;
                tma_load_row(ld, &tmL, a0, full(s));
                tma_load_row(ld + LB, &tmD, a0, full(s));
            }
        } else if (DQW && warp == 1 && lane == 0 && i0 < iend) {  // the dQ writer
            const int b = bh / H, h = bh - b * H;
            for (int i = i0, n = 0; i < iend; ++i, ++n) {                         // G2:L7
                mbar_wait(dqfull, (u32)n & 1u);  // both consumers' terms are in the buffer
#pragma unroll
                for (int p = 0; p < D / 32; ++p)
                    tma_reduce_add4(s0 + ODQ + p * BR * 128, &tmdQ, 32 * p, i * BR, h, b);
                bulk_commit();
                bulk_wait_read<0>();  // the buffer has been read ...
                mbar_arrive(dqempty);  // ... and may be written again
            }
            bulk_wait<0>();
        }
        return;
    }

    // ---------------------------------------------------------------- consumers
    regs_inc<240>();
    const int c = wg - 1, wq = warp & 3, g = lane >> 2, t = lane & 3;
    const int krow = c * 64 + wq * 16;  // this warp's first key in the block
    const float sl2 = tau * TC_LOG2E;
    // descriptors: A = K_j, V_j rows 64 c .. (K-major); B = Q_i, dO_i (K-major, for S^T, dP^T);
    // B = dO_i, Q_i (MN-major, for dV~, dK~); A = dS (MN-major: dS^T rows are keys); B = K_j
    // (MN-major, columns c DQ ..)
    const u64 aK = wg_desc<D>(s0 + OK_ + c * 64 * 128, 16);
    const u64 aV = wg_desc<D>(s0 + OV + c * 64 * 128, 16);
    const u64 bQk = wg_desc<D>(s0 + OQ, 16);
    const u64 bQm = wg_desc<D>(s0 + OQ, BR * 128);
    const u64 aS = wg_desc<BR>(s0 + OS + (DQ_ROWS ? c * BC * 128 : 0), BC * 128);
    const u64 bKm = wg_desc<D>(s0 + OK_ + (DQ_ROWS ? 0 : (c * DQ / 64) * BC * 128 + (c * DQ % 64) * 2),
                               BC * 128);
    const int dq_row0 = (DQ_ROWS ? c * 64 : 0) + wq * 16, dq_col0 = DQ_ROWS ? 0 : c * DQ;
    float* dQh = dQacc + head_offset(bh, Nq, D);
    const char* sLD = reinterpret_cast<const char*>(smem) + OLD;

    float dk[D / 2], dv[D / 2];
#pragma unroll
    for (int x = 0; x < D / 2; ++x) dk[x] = dv[x] = 0.0f;
    // G2:L5  S^T = K_j Q_i^T and G2:L6  dP^T = V_j dO_i^T of step n (this warpgroup's 64 keys x
    // BR), issued once the stage has landed
    float sc[BR / 2], dp[BR / 2];
    auto issue_sdp = [&](int n) {
        const int s = n % ST;
        mbar_wait(full(s), (u32)(n / ST) & 1u);  // Q_i, dO_i, L_i, D_i have landed
        g2_issue_sdp<BF16, D, BR, BC>(sc, dp, aK, aV, bQk, s * 2 * QT);
    };
    if (i0 < iend) mbar_wait(kvfull, 0);  // K_j, V_j have landed
    for (int i = i0, n = 0; i < iend; ++i, ++n) {                          // G2:L3
        const int s = n % ST;
        const u32 so = s * 2 * QT, sd = (n & 1) * DS;  // this step's stage, dS^T buffer
        const int off = (bh * Nq + i * BR) & 3;  // row i BR's place in its boxes
        const float* sL = reinterpret_cast<const float*>(sLD + s * LD) + off;
        const float* sD = reinterpret_cast<const float*>(sLD + s * LD + LB) + off;
        issue_sdp(n);
        wg_wait<0>();
        wg_touch(sc);
        wg_touch(dp);

        // P^T = exp(S^T - L), masked on edge tiles; dS^T = P^T (dP^T - D_i); both rounded to
        // 16 bits (G2:L6); dS^T also into this step's buffer. Edge tiles and the rest in two
        // loops (the test outside them), as tc90.cu.
        const bool edge = (i + 1) * BR > Nq || (j + 1) * BC > Nk || (causal && (j + 1) * BC - 1 > i * BR);
        u32 pa[BR / 16][4], sa[BR / 16][4];
        auto p_ds = [&](const bool MASK) {
#pragma unroll
            for (int nn = 0; nn < NQ; ++nn) {
                const float2 lq = make_float2(sL[nn * 8 + 2 * t], sL[nn * 8 + 2 * t + 1]);
                const float2 dd = make_float2(sD[nn * 8 + 2 * t], sD[nn * 8 + 2 * t + 1]);
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int col = j * BC + krow + g + 8 * h;
                    const int r = i * BR + nn * 8 + 2 * t;
                    float p0 = exp2_fast(sc[4 * nn + 2 * h] * sl2 - lq.x * TC_LOG2E);
                    float p1 = exp2_fast(sc[4 * nn + 2 * h + 1] * sl2 - lq.y * TC_LOG2E);
                    if (MASK) {
                        if (r >= Nq || col >= Nk || masked(causal, r, col)) p0 = 0.0f;
                        if (r + 1 >= Nq || col >= Nk || masked(causal, r + 1, col)) p1 = 0.0f;
                    }
                    const u32 ss = pack2<BF16>(p0 * (dp[4 * nn + 2 * h] - dd.x),
                                               p1 * (dp[4 * nn + 2 * h + 1] - dd.y));
                    pa[nn >> 1][(nn & 1) * 2 + h] = pack2<BF16>(p0, p1);
                    sa[nn >> 1][(nn & 1) * 2 + h] = ss;
                    // dS^T (keys x queries) into its panel tile: row krow + g + 8 h, chunk nn
                    const int kr = krow + g + 8 * h;
                    st_shared_s32(s0 + OS + sd + (u32)((nn >> 3) * BC * 128 + kr * 128 +
                                                       (((nn & 7) ^ g) << 4) + 4 * t), (int)ss);
                }
            }
        };
        if (edge) p_ds(true);
        else p_ds(false);

        g2_issue_dvdk<BF16, D, BR>(dv, dk, pa, sa, bQm, so);  // G2:L6 dV~, G2:L8 dK~
        fence_async_smem();   // this thread's dS^T stores, visible to wgmma ...
        named_sync(1, 256);   // ... and both consumers' halves are there

        // G2:L7  dQ_i += dS K_j: this warpgroup's 64 queries x DQ columns of the term
        float dq[DQ / 2];
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk)
            wg_ss<BF16, DQ, 1, 1>(dq, aS + ((sd + mnmajor_step<BR>(kk)) >> 4),
                                  bKm + (mnmajor_step<D>(kk) >> 4), kk > 0);
        wg_commit();
        wg_wait<0>();
        wg_touch(dq);
        wg_touch(dv);
        wg_touch(dk);
        mbar_arrive(empty(s));  // the stage may be refilled
        if (DQW) {  // into the buffer, for the dQ writer (tau: tc_backward_dq)
            mbar_wait(dqempty, ((u32)n & 1u) ^ 1u);  // the writer has read its last use
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int r = dq_row0 + g + 8 * h;
#pragma unroll
                for (int nn = 0; nn < DQ / 8; ++nn) {
                    // column col: panel col / 32, 16-byte chunk (col % 32) / 4 of row r, swizzled
                    const int col = dq_col0 + nn * 8 + 2 * t;
                    const u32 chunk = ((col & 31) >> 2) ^ (r & 7);
                    const u32 at = s0 + ODQ + (u32)((col >> 5) * BR * 128 + r * 128) + (chunk << 4) +
                                   (col & 3) * 4;
                    asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" :: "r"(at),
                                 "f"(dq[4 * nn + 2 * h]), "f"(dq[4 * nn + 2 * h + 1]) : "memory");
                }
            }
            fence_async_smem();  // visible to the TMA unit
            mbar_arrive(dqfull);
        } else {
#pragma unroll
            for (int h = 0; h < 2; ++h) {  // into the fp32 accumulator (tau: tc_backward_dq)
                const int r = i * BR + dq_row0 + g + 8 * h;
                if (r >= Nq) continue;
#pragma unroll
                for (int nn = 0; nn < DQ / 8; ++nn)
                    red_add2(dQh + (size_t)r * D + dq_col0 + nn * 8 + 2 * t, dq[4 * nn + 2 * h],
                             dq[4 * nn + 2 * h + 1]);
            }
        }
    }

    // G2:L10  dK_j = tau dK~, dV_j = dV~ (keys with no visible query get zeros)
    g2_write_kv<BF16>(dK + dkr.head(bh, H), dV + dvr.head(bh, H), dkr.n, dvr.n, j * BC + krow, 0,
                      Nk, tau, frag(dk), frag(dv), g, t);
}
