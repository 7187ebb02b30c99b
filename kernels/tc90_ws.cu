/* tc90_ws.cu: F2 on Hopper with warp specialization and ping-pong (the Hopper ladder, issue 22,
 * step 1 and 2: FlashAttention-3's forward schedule), sm_90a only.
 *
 * The same algorithm and roundings as tc90.cu's forward (docs/ALGORITHMS.md F2); what changes is
 * who does what, and how the warpgroups wait for each other:
 *
 *   - warpgroup 0 is the producer: one thread of it asks the TMA unit for Q_i once and for K_j,
 *     V_j tile after tile (cp.async.bulk.tensor, 128-byte swizzle: the panel layout of
 *     tc90_tiles.cuh) into ST stages of a circular buffer. It gives most of its registers back
 *     (setmaxnreg) to the consumer warpgroups, which take 240 each (160 with three);
 *   - no __syncthreads in the loop: each stage has a "full" mbarrier (the TMA unit completes it
 *     when the tile's bytes have landed) and an "empty" one (the consumer threads arrive when
 *     their products have read the stage); K and V have their own, so S_j waits only for K_j;
 *   - warpgroups 1 and 2 (and 3: NC) are the consumers, 64 query rows each (BR = 64 NC). Each
 *     runs tc90.cu's intra-warpgroup pipelining (S_j = Q_i K_j^T and O~ += P~_{j-1} V_{j-1}
 *     issued together, the softmax of S_j while P~_{j-1} V_{j-1} runs), and two take turns to
 *     issue their products (ping-pong: named barriers 1 and 2), so one's softmax runs under the
 *     other's products and the tensor cores are not left idle while both do exponentials;
 *   - the thread blocks may be persistent (fewer blocks than tiles, each taking tiles in turn),
 *     so the producer loads the next tile while the consumers finish this one; the turns are
 *     static (block b takes tiles b, b + gridDim.x, ...) or dynamic (the producer takes the next
 *     tile from a counter in global memory, atomicAdd, when its block has room for one: the
 *     blocks that finish early take more). The launcher chooses (flashlab/launch/tc_ws.py
 *     grid_blocks, with the measurements behind it).
 *
 * Unlike tc90.cu, P~_j is packed to 16 bits after P~_{j-1} V_{j-1} has landed (FlashAttention-3's
 * order): one set of P~ registers, not two.
 *
 * Reference: flashlab/reference/tc.py (F2 with Br = 128, Bc = BC; the order of the loop is the
 * same, only the schedule of the warpgroups differs: flashlab/reference/schedule.py models it,
 * flashlab.viz.draw_timeline draws it).
 * Layout: Q, O (B, H, Nq, D); K, V (B, H_kv, Nk, D), 16-bit; L (B, H, Nq) fp32. Q, K, V come as
 * tensor maps over (D, N, heads, B) with boxes of 64 columns x (BR or BC) rows; O through Rows.
 * Launch: a 1-D grid of up to ceil(Nq / BR) B*H blocks (fewer: persistent blocks that take the
 * tiles in turn), 128 (NC + 1) threads, BR D 2 + 2 ST BC D 2 + 8 (2 + 4 ST) + 8 bytes of shared
 * memory;
 * dynamic turns: `next` a zeroed int in global memory (one per launch).
 * Causal tiles are taken longest first (block_order_of, tc_blocks.cuh).
 */
#include "tc_common.cuh"
#include "tc90_tiles.cuh"
#include "tma.cuh"
#include "wgmma.cuh"

#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "kernels/tc90_ws.cu needs sm_90a (wgmma, TMA, setmaxnreg)"
#endif

/* One thread block works through (query block, head) tiles w, numbered in block_order's order
 * (longest first when causal): first w = blockIdx.x, then w + gridDim.x (static turns: `next`
 * null) or gridDim.x + the count of tiles taken from `next` so far (dynamic turns: the longest
 * tile left goes to the first block with room for it). gridDim.x = the tile count gives each
 * block one tile; fewer blocks (the SM count: persistent) let the producer load the next tile's
 * Q, K, V while the consumers still write this tile's O. The producer decides the tile and tells
 * the consumers in shared memory (sW, published by Q's "full" barrier; w >= tiles: no more). The
 * K/V stages and their phases run on across tiles (it: K/V tiles so far), and Q's buffer has an
 * "empty" barrier too.
 * NC: consumer warpgroups (64 query rows each, BR = 64 NC): 2, or 3 at d = 64 (FlashAttention-3's
 * 192-row tiles there: K_j, V_j shared by more rows; 160 registers each, ping-pong off).
 * PP: ping-pong on (1) or off (0: each consumer issues as soon as it is ready), for the ladder's
 * ablation. */
template <bool BF16, int D, int BC, int ST, int PP, int NC>
__global__ void __launch_bounds__(128 * (NC + 1), 1)
tc90ws_forward(const __grid_constant__ CUtensorMap tmQ,  // (D, Nq, H, B)
               const __grid_constant__ CUtensorMap tmK,  // (D, Nk, H_kv, B)
               const __grid_constant__ CUtensorMap tmV,  // (D, Nk, H_kv, B)
               u16* __restrict__ O,                      // (B, H, Nq, D), rows as orr says
               float* __restrict__ L,                    // (B, H, Nq) fp32 logsumexp, natural units
               int Nq, int Nk, float tau, int causal, int group, int H, int BH, int G, Rows orr,
               int* __restrict__ next) {                  // (1) dynamic turns' counter, or null
    constexpr int BR = 64 * NC, NP = D / 64;      // query rows; 64-column panels of a tile
    constexpr int CT = 128 * NC;                  // consumer threads
    constexpr u32 QT = BR * D * 2, TILE = BC * D * 2;
    static_assert((NC == 2 || (NC == 3 && D == 64)) && (NC == 2 || !PP), "unsupported consumers");
    static_assert(D % 64 == 0 && D <= 128 && BC % 64 == 0 && BC <= 128 && ST >= 2, "unsupported tile");
    extern __shared__ __align__(1024) uint4 smem[];
    const u32 sQ = smem_addr(smem);
    if ((sQ & 1023u) != 0) __trap();  // the swizzle needs 1024-byte aligned tiles
    const u32 sK = sQ + QT, sV = sK + ST * TILE, sB = sV + ST * TILE;
    // mbarriers, 8 bytes each: Q full, Q empty, then per stage K full, K empty, V full, V empty;
    // then the tile the consumers work on next (sW)
    const u32 qfull = sB, qempty = sB + 8;
    auto kfull = [&](int s) { return sB + 16 + 8 * s; };
    auto kempty = [&](int s) { return sB + 16 + 8 * (ST + s); };
    auto vfull = [&](int s) { return sB + 16 + 8 * (2 * ST + s); };
    auto vempty = [&](int s) { return sB + 16 + 8 * (3 * ST + s); };
    const u32 sW = sB + 16 + 32 * ST;

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wg = warp >> 2;
    const int Tr = (Nq + BR - 1) / BR, Tc = (Nk + BC - 1) / BC, tiles = Tr * BH;
    // tile w: query block i of head bh (block_order's mapping), and the key tiles it visits
    auto tile = [&](int w, int& i, int& bh, int& jend) {
        block_order_of<true>(w, Tr, BH, causal, group, i, bh);
        const int last_row = min(Nq, (i + 1) * BR) - 1;
        jend = causal ? min(Tc, last_row / BC + 1) : Tc;  // F2:L3 causal skipping
    };

    if (threadIdx.x == 0) {
        mbar_init(qfull, 1);
        mbar_init(qempty, CT);  // every consumer thread
        for (int s = 0; s < ST; ++s) {
            mbar_init(kfull(s), 1);
            mbar_init(vfull(s), 1);
            mbar_init(kempty(s), CT);
            mbar_init(vempty(s), CT);
        }
        mbar_init_fence();
    }
    __syncthreads();  // the last block-wide barrier: from here on the warpgroups meet only at mbarriers

    if (wg == 0) {  // ------------------------------------------------ producer
        regs_dec<24>();
        if (warp == 0 && lane == 0) {
            tma_prefetch_map(&tmQ);
            tma_prefetch_map(&tmK);
            tma_prefetch_map(&tmV);
            int it = 0, n = 0;  // K/V tiles and work tiles loaded so far
            int w = blockIdx.x;
            for (;; ++n) {
                if (n > 0) mbar_wait(qempty, (n - 1) & 1);  // both consumers are done with Q (and sW)
                st_shared_s32(sW, w);
                if (w >= tiles) {     // no more: the consumers see w and stop
                    mbar_arrive(qfull);
                    break;
                }
                // the tile after this one, asked for now: the atomic's trip hides behind the loads
                const int w_next = next ? gridDim.x + atomicAdd(next, 1) : w + gridDim.x;
                int i, bh, jend;
                tile(w, i, bh, jend);
                const int b = bh / H, h = bh - b * H;
                mbar_expect_tx(qfull, QT);                 // F2:L2 (its arrival publishes sW)
#pragma unroll
                for (int p = 0; p < NP; ++p) tma_load4(sQ + p * BR * 128, &tmQ, 64 * p, i * BR, h, b, qfull);
                for (int j = 0; j < jend; ++j, ++it) {                            // F2:L4
                    const int s = it % ST;
                    const u32 use = it / ST;  // this stage's uses so far: wait for the last one's release
                    if (it >= ST) mbar_wait(kempty(s), (use - 1) & 1);
                    mbar_expect_tx(kfull(s), TILE);
#pragma unroll
                    for (int p = 0; p < NP; ++p)
                        tma_load4(sK + s * TILE + p * BC * 128, &tmK, 64 * p, j * BC, h / G, b, kfull(s));
                    if (it >= ST) mbar_wait(vempty(s), (use - 1) & 1);
                    mbar_expect_tx(vfull(s), TILE);
#pragma unroll
                    for (int p = 0; p < NP; ++p)
                        tma_load4(sV + s * TILE + p * BC * 128, &tmV, 64 * p, j * BC, h / G, b, vfull(s));
                }
                w = w_next;
            }
        }
        return;
    }

    // ---------------------------------------------------------------- consumers
    regs_inc<NC == 2 ? 240 : 160>();
    const int c = wg - 1;  // consumer warpgroup c: query rows 64 c .. 64 c + 63 of the block
    const int g = lane >> 2, t = lane & 3;
    const int wrow = c * 64 + (warp & 3) * 16;  // this warp's first row in the block
    const float sl2 = tau * TC_LOG2E;
    // A = Q_i rows 64 c .. (K-major); B = K_j (K-major); B = V_j (MN-major, panels BC rows apart)
    const u64 dQ = wg_desc<D>(sQ + c * 64 * 128, 16);
    const u64 dK = wg_desc<D>(sK, 16);
    const u64 dV = wg_desc<D>(sV, BC * 128);
    int it = 0;  // K/V tiles consumed so far
    for (int n = 0;; ++n) {  // n: work tiles so far
        mbar_wait(qfull, n & 1);  // Q_i has landed, and sW says which tile it is
        const int w = __shfl_sync(0xffffffffu, ld_shared_s32(sW), 0);
        if (w >= tiles) break;
        int i, bh, jend;
        tile(w, i, bh, jend);
        float o[D / 2];
        float m[2], l[2];
        m[0] = m[1] = FL_NEG_INF;
        l[0] = l[1] = 0.0f;
#pragma unroll
        for (int x = 0; x < D / 2; ++x) o[x] = 0.0f;
        u32 p[BC / 16][4];  // P~_{j-1} as the A operands of its product with V_{j-1}

        // key tile j of this work tile is K/V tile it + j: stage (it + j) % ST, phase by its use
        auto stage = [&](int j) { return (it + j) % ST; };
        auto phase = [&](int j) { return (u32)((it + j) / ST) & 1u; };
        auto issue_pv = [&](int j) {  // O~ += P~_j V_j (issued, not waited for)
            wg_touch(o);
            wg_fence();
#pragma unroll
            for (int kk = 0; kk < BC / 16; ++kk)
                wg_rs<BF16, D, 1>(o, p[kk], dV + ((stage(j) * TILE + mnmajor_step<D>(kk)) >> 4), 1);
            wg_commit();
        };

        // S_j = Q_i K_j^T, issued (not waited for), in this warpgroup's turn
        auto issue_s = [&](float (&sc)[BC / 2], int j) {
            mbar_wait(kfull(stage(j)), phase(j));  // K_j has landed
            if (PP) named_sync(1 + c, 256);           // this warpgroup's turn to issue
            wg_touch(o);
            wg_fence();
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk)
                wg_ss<BF16, BC, 0, 0>(sc, dQ + (kmajor_step<BR, D>(kk) >> 4),
                                      dK + ((stage(j) * TILE + kmajor_step<BC, D>(kk)) >> 4), kk > 0);
            wg_commit();
        };
        // the other warpgroup's turn (consumer 1 does not hand over after its last tile: every
        // arrival then has its wait)
        auto hand_over = [&](int j) {
            if (PP && (c == 0 || j + 1 < jend)) named_arrive(2 - c, 256);
        };
        // S_j once it has landed: K_j's stage released, F2:L5's scale and mask, F2:L6's m, l and
        // P~ = 2^(S - m) in place; alpha: the rescale factors of O~
        auto softmax = [&](float (&sc)[BC / 2], int j, float (&alpha)[2]) {
            wg_touch(sc);
            mbar_arrive(kempty(stage(j)));  // K_j's stage may be refilled
            // base-2 units; keys past Nk and, where the diagonal crosses, keys after the query
            const int k0 = j * BC;
            if (k0 + BC > Nk || (causal && k0 + BC - 1 > i * BR + c * 64))
                f2_mask(frag(sc), i * BR + wrow, k0, Nk, causal, sl2, g, t);
            else {
#pragma unroll
                for (int x = 0; x < BC / 2; ++x) sc[x] *= sl2;
            }
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) alpha[hh] = f2_softmax_row(frag(sc), hh, m[hh], l[hh]);
        };

        if (PP && c == 1) named_arrive(1, 256);  // consumer 0 issues first
        {                                                                           // F2:L3, j = 0
            float sc[BC / 2], alpha[2];
            issue_s(sc, 0);                                                         // F2:L5
            hand_over(0);
            wg_wait<0>();
            softmax(sc, 0, alpha);                              // F2:L5-L6 (O~ is 0: no rescale)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) f2_pack_row<BF16>(frag(sc), hh, p);  // P~_0, 16 bits
        }
        for (int j = 1; j < jend; ++j) {                                            // F2:L3
            float sc[BC / 2], alpha[2];
            mbar_wait(vfull(stage(j - 1)), phase(j - 1));        // V_{j-1} has landed
            issue_s(sc, j);                                      // F2:L5  S_j = Q_i K_j^T
            issue_pv(j - 1);                                     // F2:L7  O~ += P~_{j-1} V_{j-1}
            hand_over(j);
            wg_wait<1>();  // S_j is done; P~_{j-1} V_{j-1} may still run
            softmax(sc, j, alpha);                               // F2:L5-L6
            wg_wait<0>();  // P~_{j-1} V_{j-1} has landed in O~
            wg_touch(o);
            wg_keep(p);
            mbar_arrive(vempty(stage(j - 1)));  // V_{j-1}'s stage may be refilled
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
                f2_rescale_row(frag(o), hh, alpha[hh]);          // F2:L7  O~ = e^(m - m_new) O~
                f2_pack_row<BF16>(frag(sc), hh, p);              // P~_j, 16 bits
            }
        }
        mbar_wait(vfull(stage(jend - 1)), phase(jend - 1));
        issue_pv(jend - 1);                                                  // F2:L7 for the last tile
        wg_wait<0>();
        wg_touch(o);
        mbar_arrive(vempty(stage(jend - 1)));  // the stages and Q may be refilled for the next tile
        mbar_arrive(qempty);

        // F2:L9  O_i = O~ / l, L_i = m + log l (natural units)
        f2_write<BF16, D>(O + orr.head(bh, H), orr.n, L + head_offset(bh, Nq, 1), i * BR + wrow, Nq,
                          frag(o), m, l, g, t);
        it += jend;
    }
}
