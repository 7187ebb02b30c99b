/* tc90.cu: F2 and G2 on Hopper's warpgroup tensor-core instructions (wgmma, sm_90a only).
 *
 * The same algorithms and the same roundings as tc.cu (docs/ALGORITHMS.md F2, G2); what changes
 * is who multiplies and where the operands come from:
 *
 *   - a warpgroup (4 consecutive warps, 128 threads), not a warp, issues each product: one wgmma
 *     computes a 64 x N piece (N up to 128) of a product, 16 steps of the inner dimension at a time,
 *     reading B (and sometimes A) straight from shared memory through a 64-bit descriptor, so
 *     there are no ldmatrix instructions and no operand registers for those matrices;
 *   - wgmma is asynchronous: the warpgroup issues a batch (wg_fence, the wgmmas, wg_commit) and
 *     waits for it (wg_wait) only when it needs the result;
 *   - the accumulator layout is the mma.sync one (warp w of the warpgroup owns rows 16 w .. 16 w + 15
 *     of the 64), so the online softmax, the masks, the packing of P~ into 16-bit A operands, the
 *     epilogues and the trace stores are tc.cu's: the one-slab helpers of tc_common.cuh, called
 *     once per warp on the wgmma accumulator (frag() views it as a slab);
 *   - shared-memory tiles use wgmma's 128-byte swizzle: a (R x W) tile is stored as W / 64 panels
 *     of (R x 64), each row 128 bytes, 16-byte chunk c of row r at chunk c ^ (r % 8). A descriptor
 *     names a panel's start, the distance between 8-row groups (SBO = 1024 bytes) and, where a
 *     product spans two panels along its N or M side, the distance between panels (LBO). A matrix
 *     32 columns wide (head dim 32) is one panel of 64-byte rows in the 64-byte swizzle: chunk c of
 *     row r at c ^ ((r / 2) % 4), SBO 512 bytes (Panel<W> below).
 *
 * Reference: flashlab/reference/tc.py with the launch's tile shape (tc_plan in flashlab/launch/plans.py):
 *   forward  Br = 64 NWG rows (warp w owns rows 16 w .. 16 w + 15), Bk = Bc;
 *   backward warp grids WS = WKV = NW (warp w owns keys 16 w .. 16 w + 15 of S^T, dP^T, dK~, dV~),
 *            WQ = 4 at BR = 64 (dQ: warp w owns queries 16 (w % 4) .. and columns (w / 4) D / 2 ..),
 *            WQ = NW at BR = 128 (warp w owns queries 16 w .. 16 w + 15, every column).
 * Layout: as tc.cu (Q, O, dO (B*H, Nq, D); K, V (B*H, Nk, D); 16-bit words; L, Dv, dQacc fp32).
 * Launch: forward grid (ceil(Nq / BR), B*H), 128 NWG threads, (BR + 4 BC) D 2
 *   bytes of shared memory; backward tc_backward_dot, then tc90_backward with grid
 *   (ceil(Nk / BC), B*H), 128 NWG threads, (2 BC + 2 QS BR) D 2 + BC BR 2 + 8 QS BR bytes, then
 *   tc_backward_dq. Causal grids start their longest blocks first (block_order, tc_blocks.cuh).
 */
#include "tc_common.cuh"
#include "tc90_tiles.cuh"
#include "wgmma.cuh"
#include "tc90_g2.cuh"

#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "kernels/tc90.cu needs sm_90a (wgmma); other GPUs run kernels/tc.cu"
#endif

/* ---------------------------------------------------------------- F2 forward */

/* One thread block per (Q block i, head); NWG warpgroups, warpgroup h owning query rows
 * 64 h .. 64 h + 63 of the block (BR = 64 NWG). Per tile j and warpgroup: S_j = Q_i K_j^T
 * (wgmma, both operands in shared memory), the online softmax in registers, and O~ += P~_j V_j
 * (wgmma, P~ from registers, V_j transposed from shared memory).
 *
 * The two products of a tile overlap the softmax (FlashAttention-3's intra-warpgroup pipelining):
 * iteration j issues S_j and then O~ += P~_{j-1} V_{j-1}, waits only for S_j, computes P~_j while
 * the tensor cores still work on P~_{j-1} V_{j-1}, then waits for that product and rescales O~ by
 * e^(m_{j-1} - m_j). The result is F2's: O~ after the rescale is e^(m_{j-1} - m_j) O~_{j-1}, and
 * P~_j V_j is added at the next iteration (or after the loop).
 *
 * Shared memory: Q_i, two stages of K and two of V. K_{j+1} and V_j are copied during iteration j
 * (V a tile behind K, because P~_{j-1} V_{j-1} is still reading the other V stage then; V_0 is
 * copied with Q_i and K_0 but waited for a tile later); one barrier per tile. MINB: thread blocks per multiprocessor the registers must allow. */
template <bool BF16, int D, int BC, int NWG, int MINB>
__global__ void __launch_bounds__(NWG * 128, MINB)
tc90_forward(const u16* __restrict__ Q,  // (B, H, Nq, D), rows as qr says
             const u16* __restrict__ K,  // (B, H, Nk, D), rows as kr says
             const u16* __restrict__ V,  // (B, H, Nk, D), rows as vr says
             u16* __restrict__ O,        // (B, H, Nq, D), rows as orr says
             float* __restrict__ L,      // (B, H, Nq) fp32 logsumexp, natural units
             int Nq, int Nk, float tau, int causal, int group,
             int H, Rows qr, Rows kr, Rows vr, Rows orr  // heads per batch; rows of Q, K, V, O
             TC_MOD_PARAMS,              // a variant build's (tc_mods.cuh)
             float* tr_m,                // (B, H, Tr, Tc, BR), FLASHLAB_TRACE builds only
             float* tr_l,                // (B, H, Tr, Tc, BR)
             float* tr_O,                // (B, H, Tr, Tc, BR, D)
             long long* tr_seq) {        // (B, H, Tr, Tc)
    constexpr int BR = 64 * NWG, NT = NWG * 128;
    constexpr u32 TILE = BC * D * 2;
    static_assert(BC % 16 == 0 && BC <= 256 && (D == 32 || D % 64 == 0) && D <= 128, "unsupported tile");
    using PD = Panel<D>;
    extern __shared__ __align__(1024) uint4 smem[];
    const u32 sQ = smem_addr(smem);
    if ((sQ & 1023u) != 0) __trap();  // the swizzle needs 1024-byte aligned tiles
    const u32 sK = sQ + BR * D * 2;   // K stage s at sK + s TILE
    const u32 sV = sK + 2 * TILE;     // V stage s at sV + s TILE

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wg = warp >> 2;
    const int g = lane >> 2, t = lane & 3;
    int i, bh;
    TC_BLOCK_ORDER(true, causal, group, i, bh);  // causal: longest first, `group` heads at a time
    F2Block<D, BR, BC> blk(i, bh, Q, K, V, qr, kr, vr, H, TC_KV_GROUP, Nq, Nk, tau, causal);  // its slices, F2:L3's jend
    const TcMod md = f2_variant(blk, TC_MOD(bh, blk.Tr, blk.Tc, blk.Tr));  // a variant's: F2:L3's tiles narrowed
    // a block with no visible key still runs one tile (the loop below needs one), all hidden
    const bool none = TcMod::ON && blk.jend <= blk.j0;
    if (none) blk.j0 = 0, blk.jend = 1;

    load_panels<D, BR, NT>(sQ, blk.Qh, blk.qn, i * BR, Nq);                // F2:L2
    const u32 first = (blk.j0 & 1) * TILE;  // tile j lives in stage j % 2
    load_panels<D, BC, NT>(sK + first, blk.Kh, blk.kn, blk.j0 * BC, Nk);    // F2:L4 (K_j0, then V_j0)
    cp_commit();
    load_panels<D, BC, NT>(sV + first, blk.Vh, blk.vn, blk.j0 * BC, Nk);  // its own group: S_j0 waits only for Q_i and K_j0
    cp_commit();

    float o[D / 2];
    float m[2], l[2];
    m[0] = m[1] = FL_NEG_INF;
    l[0] = l[1] = 0.0f;
#pragma unroll
    for (int x = 0; x < D / 2; ++x) o[x] = 0.0f;
    const int wrow = warp * 16;  // this warp's first row in the block
    // A = Q_i rows 64 wg .. (K-major); B = K_j (K-major); B = V_j (MN-major: N = D along the row,
    // panels BC rows apart)
    const u64 dQ = wg_desc<D>(sQ + wg * 64 * PD::ROWB, 16);
    const u64 dK = wg_desc<D>(sK, 16);
    const u64 dV = wg_desc<D>(sV, BC * PD::ROWB);
#ifdef FLASHLAB_TRACE
    // step j - 1's state (m, l, O~) is complete in iteration j, after P~_{j-1} V_{j-1} lands
    auto trace_step = [&](int jj, const float (&mm)[2], const float (&ll)[2]) {
        f2_trace(blk, jj, wrow, Nq, frag(o), mm, ll, tr_m, tr_l, tr_O, g, t);
        if (threadIdx.x == 0) tr_seq[((size_t)bh * blk.Tr + i) * blk.Tc + jj] = jj;
    };
#endif

    int fl_next = md.flag(i, blk.j0);  // a variant's tile flags, each read a tile before its use
    // the copies of tile j's iteration (K_{j+1}, and V_j a tile behind K), after the barrier that
    // says every warpgroup is done with the stages they overwrite
    auto begin_tile = [&](int j) {
        if (j == blk.j0) cp_wait<1>();  // Q_i and K_j0 have landed (V_j0 may still be on its way) ...
        else cp_wait<0>();         // K_j and V_{j-1} have landed ...
        fence_async_smem();  // ... visible to wgmma ...
        __syncthreads();     // ... for every thread's copies; every warpgroup is done with j - 1
        if (j + 1 < blk.jend) load_panels<D, BC, NT>(sK + ((j + 1) & 1) * TILE, blk.Kh, blk.kn, (j + 1) * BC, Nk);
        if (j > blk.j0) load_panels<D, BC, NT>(sV + (j & 1) * TILE, blk.Vh, blk.vn, j * BC, Nk);
        cp_commit();
    };
    // S = Q_i K_j^T, issued (not waited for)
    auto issue_s = [&](float (&s)[BC / 2], int j) {
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk)
            wg_ss<BF16, BC, 0, 0>(s, dQ + (kmajor_step<BR, D>(kk) >> 4),
                                  dK + ((((j & 1) * TILE) + kmajor_step<BC, D>(kk)) >> 4), kk > 0);
        wg_commit();
    };
    // O~ += P~_j V_j, issued (not waited for)
    auto issue_pv = [&](int j, const u32 (&p)[BC / 16][4]) {
        wg_touch(o);
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk)
            wg_rs<BF16, D, 1>(o, p[kk], dV + ((((j & 1) * TILE) + mnmajor_step<D>(kk)) >> 4), 1);
        wg_commit();
    };
    // S of tile j: the scale and mask, the online softmax (m, l, and P~ rounded to 16 bits into
    // the A operands pa), and the rescale factors alpha of O~
    auto softmax = [&](float (&s)[BC / 2], int j, u32 (&pa)[BC / 16][4], float (&alpha)[2]) {
        const int k0 = j * BC;
        const int fl_j = md.step_flag(fl_next, j + 1 < blk.jend, i, j + 1);  // read a tile ahead
        const int fl = none ? 0 : fl_j;  // a variant's tile: 0 nothing visible, 1 some, 2 all
        // F2:L5  base-2 units; masked: keys past Nk and, where the diagonal crosses, keys after
        // the query (two loops, not one with a test inside: the interior tiles skip the compares)
        const bool edge = k0 + BC > Nk || (causal && k0 + BC - 1 > i * BR) || (TcMod::ON && fl != 2);
        if (edge) {
            if (TcMod::ON)  // a variant: its mask and score_mod, element by element
                f2_mod(frag(s), md, fl, i * BR + wrow, k0, Nq, Nk, causal, tau, blk.sl2, g, t);
            else
                f2_mask(frag(s), i * BR + wrow, k0, Nk, causal, blk.sl2, g, t);
        } else if (TcMod::SCORE) {  // interior tile of a score_mod's variant: score_mod
            f2_interior(frag(s), md, i * BR + wrow, k0, tau, blk.sl2, g, t);
        } else {
#pragma unroll
            for (int x = 0; x < BC / 2; ++x) s[x] *= blk.sl2;  // interior tile: only the scale
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {  // rows g and g + 8 of the warp's slab
            // F2:L6  m_new = max(m, rowmax S); P~ = exp(S - m_new); l = e^(m - m_new) l + rowsum P~
            alpha[h] = f2_softmax_row(frag(s), h, m[h], l[h]);
            f2_pack_row<BF16>(frag(s), h, pa);
        }
    };

    // Iteration j >= 1 of the key loop. P~ alternates between two register sets (pa for even j,
    // pb for odd j): while the product reading one is in flight the softmax writes the other. (A
    // copy from one to the other lets the compiler merge them, and ptxas then serializes every
    // wgmma.)
    u32 pa[BC / 16][4], pb[BC / 16][4];
    auto step = [&](int j, u32 (&prev)[BC / 16][4], u32 (&cur)[BC / 16][4]) {
        begin_tile(j);       // F2:L4  K_{j+1}, V_j
        float s[BC / 2];
        issue_s(s, j);       // F2:L5  S_j = Q_i K_j^T
        issue_pv(j - 1, prev);  // F2:L7  O~ += P~_{j-1} V_{j-1}
        wg_wait<1>();        // S_j is done; P~_{j-1} V_{j-1} may still run
        wg_touch(s);
#ifdef FLASHLAB_TRACE
        const float m_was[2] = {m[0], m[1]}, l_was[2] = {l[0], l[1]};
#endif
        float alpha[2];
        softmax(s, j, cur, alpha);  // F2:L5 mask, F2:L6
        wg_wait<0>();        // P~_{j-1} V_{j-1} has landed in O~
        wg_touch(o);
        wg_keep(prev);
#ifdef FLASHLAB_TRACE
        trace_step(j - 1, m_was, l_was);
#endif
        // F2:L7  O~ = e^(m - m_new) O~ (P~_j V_j is added at the next iteration)
#pragma unroll
        for (int h = 0; h < 2; ++h) f2_rescale_row(frag(o), h, alpha[h]);
    };
    {                                                                // F2:L3, j = j0
        begin_tile(blk.j0);        // F2:L4  K_j0+1 (V_j0 came with Q_i, K_j0)
        float s[BC / 2];
        issue_s(s, blk.j0);        // F2:L5  S_j0 = Q_i K_j0^T
        wg_wait<0>();
        wg_touch(s);
        float alpha[2];
        softmax(s, blk.j0, pa, alpha);  // F2:L5 mask, F2:L6 (O~ is still 0: nothing to rescale)
    }
    for (int j = blk.j0 + 1; j < blk.jend; j += 2) {                 // F2:L3
        step(j, pa, pb);
        if (j + 1 < blk.jend) step(j + 1, pb, pa);
    }
    cp_wait<0>();
    fence_async_smem();
    __syncthreads();  // V of the last tile has landed, for every thread's copies
    if ((blk.jend - 1 - blk.j0) & 1) issue_pv(blk.jend - 1, pb);     // F2:L7 for the last tile
    else issue_pv(blk.jend - 1, pa);
    wg_wait<0>();
    wg_touch(o);
#ifdef FLASHLAB_TRACE
    trace_step(blk.jend - 1, m, l);
#endif

    // F2:L9  O_i = O~ / l, L_i = m + log l (natural units)
    TC_BLOCK_ORDER(true, causal, group, i, bh);  // i and bh again (cheaper than keeping them live)
    u16* Oh = O + orr.head(bh, H);
    float* Lh = L + head_offset(bh, Nq, 1);
    f2_write<BF16, D>(Oh, orr.n, Lh, i * BR + wrow, Nq, frag(o), m, l, g, t);
}

/* ---------------------------------------------------------------- G2 backward */

/* One thread block per (K/V block j, head), NWG = BC / 64 warpgroups; warpgroup h owns keys
 * 64 h .. 64 h + 63 of the block. Each step i works on BR queries:
 *   S^T = K_j Q_i^T, dP^T = V_j dO_i^T (wgmma from shared memory; 64 keys x BR queries each);
 *   P^T, dS^T in registers, rounded to 16 bits as the A operands of
 *   dV~ += P^T dO_i and dK~ += dS^T Q_i (wgmma, B = dO_i, Q_i transposed from shared memory;
 *     64 keys x D in registers for the whole i loop);
 *   dS^T also goes to shared memory, and after a barrier dQ_i += dS K_j: warpgroup h computes
 *     columns h D / 2 .. h D / 2 + D / 2 - 1 of the term (BR = 64) or its rows 64 h .. 64 h + 63
 *     (BR = 128, D = 64) and adds them into the fp32 dQ accumulator.
 * Q_i, dO_i, L_i, D_i rotate through QS stages, copied QS - 1 steps ahead. Two barriers per step. */
template <bool BF16, int D, int BR, int BC, int QS, int MINB>
__global__ void __launch_bounds__(BC * 2, MINB)
tc90_backward(const u16* __restrict__ Q,     // (B, H, Nq, D), rows as qr says
              const u16* __restrict__ K,     // (B, H, Nk, D), rows as kr says
              const u16* __restrict__ V,     // (B, H, Nk, D), rows as vr says
              const u16* __restrict__ dO,    // (B, H, Nq, D), rows as dor says
              const float* __restrict__ L,   // (B, H, Nq) fp32 logsumexp from the forward
              const float* __restrict__ Dv,  // (B, H, Nq) fp32 rowsum(dO * O), tc_backward_dot
              float* __restrict__ dQacc,     // (B, H, Nq, D) fp32, zeroed by tc_backward_dot
              u16* __restrict__ dK,          // (B, H, Nk, D), rows as dkr says
              u16* __restrict__ dV,          // (B, H, Nk, D), rows as dvr says
              int Nq, int Nk, float tau, int causal, int group,
              int H, Rows qr, Rows kr, Rows vr, Rows dor,  // heads per batch; rows of Q, K, V, dO
              Rows dkr, Rows dvr             // and of dK, dV
              TC_MOD_PARAMS,                 // a variant build's (tc_mods.cuh)
              float* tr_dQ,                  // (B, H, Tr, Tc, BR, D), FLASHLAB_TRACE builds only
              float* tr_dK,                  // (B, H, Tr, Tc, BC, D)
              float* tr_dV,                  // (B, H, Tr, Tc, BC, D)
              long long* tr_seq) {           // (B, H, Tr, Tc)
    constexpr int NWG = BC / 64, NT = NWG * 128;
    constexpr int NQ = BR / 8;        // n8 query tiles of S^T per warp
    // dQ_i's term (BR x D) splits over the warpgroups by columns when BR = 64 (a wgmma is 64 rows
    // tall) and by rows when BR = 128
    constexpr bool DQ_ROWS = BR == 128;
    constexpr int DQ = DQ_ROWS ? D : D / NWG;  // dQ columns per warpgroup
    static_assert(BC == 128 && (BR == 64 || (BR == 128 && D <= 64)) && (D == 32 || D % 64 == 0) &&
                  D <= 128 && (DQ_ROWS || D >= 64), "unsupported tile");
    using PD = Panel<D>;
    static_assert(QS == 2 || QS == 3, "Q_i, dO_i take 2 or 3 stages");
    constexpr u32 KV = BC * D * 2, QT = BR * D * 2;                 // bytes of a K_j and a Q_i tile
    constexpr u32 OK_ = 0, OV = KV, OS = 2 * KV, OQ = OS + BC * BR * 2, STG = 2 * QT;
    constexpr u32 OLD = OQ + QS * STG;
    extern __shared__ __align__(1024) uint4 smem[];
    const u32 s0 = smem_addr(smem);
    if ((s0 & 1023u) != 0) __trap();  // the swizzle needs 1024-byte aligned tiles
    float* sLD = reinterpret_cast<float*>(reinterpret_cast<char*>(smem) + OLD);

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wg = warp >> 2, wq = warp & 3;
    const int g = lane >> 2, t = lane & 3;
    int j, bh;
    TC_BLOCK_ORDER(false, causal, group, j, bh);  // causal: longest (j = 0) first, `group` heads at a time
    const G2Block<D, BR, BC> blk(j, bh, Q, dO, qr, dor, H, L, Dv, dQacc, Nq, Nk, tau);  // its slices of the head
    const int krow = wg * 64 + wq * 16;                   // this warp's first key in the block
    int i0 = causal ? min(blk.Tr, (j * BC) / BR) : 0, iend = blk.Tr;  // G2:L3 causal skipping
    const TcMod md = TC_MOD(bh, blk.Tr, blk.Tc, blk.Tc);  // a variant's mask and score_mod
    md.visit(j, i0, iend);  // G2:L3: a variant's block mask narrows the query blocks

    load_panels<D, BC, NT>(s0 + OK_, K + kr.head(bh, H, TC_KV_GROUP), kr.n, j * BC, Nk);   // G2:L2
    load_panels<D, BC, NT>(s0 + OV, V + vr.head(bh, H, TC_KV_GROUP), vr.n, j * BC, Nk);
    // step i's Q_i, dO_i, L_i, D_i into stage (i - i0) % QS
    auto load_i = [&](int i) {
        const int st = (i - i0) % QS;
        const u32 q = s0 + OQ + st * STG;
        load_panels<D, BR, NT>(q, blk.Qh, blk.qn, i * BR, Nq);
        load_panels<D, BR, NT>(q + QT, blk.dOh, blk.don, i * BR, Nq);
        g2_load_ld<BR, NT>(sLD + st * 2 * BR, blk.Lh, blk.Dh, i, Nq);
    };
    g2_first_stages<QS>(load_i, i0, iend);                                   // G2:L4, stages i0 ..

    // descriptors: A = K_j, V_j rows 64 wg .. (K-major); B = Q_i, dO_i (K-major, for S^T, dP^T);
    // B = dO_i, Q_i (MN-major, for dV~, dK~); A = dS (MN-major: dS^T rows are keys); B = K_j
    // (MN-major, columns wg DQ ..)
    const u64 aK = wg_desc<D>(s0 + OK_ + wg * 64 * PD::ROWB, 16);
    const u64 aV = wg_desc<D>(s0 + OV + wg * 64 * PD::ROWB, 16);
    const u64 bQk = wg_desc<D>(s0 + OQ, 16);
    const u64 bQm = wg_desc<D>(s0 + OQ, BR * PD::ROWB);
    const u64 aS = wg_desc<BR>(s0 + OS + (DQ_ROWS ? wg * BC * 128 : 0), BC * 128);  // dS^T: 128-byte rows
    const u64 bKm = wg_desc<D>(s0 + OK_ + (DQ_ROWS ? 0 : (wg * DQ / 64) * BC * PD::ROWB + (wg * DQ % 64) * 2),
                               BC * PD::ROWB);
    const int dq_row0 = DQ_ROWS ? wg * 64 : 0, dq_col0 = DQ_ROWS ? 0 : wg * DQ;

    float dk[D / 2], dv[D / 2];
#pragma unroll
    for (int x = 0; x < D / 2; ++x) dk[x] = dv[x] = 0.0f;

    // The next step's stage has landed and is visible to wgmma (the barrier at the top of that
    // step publishes it to the other threads). Done at the end of a step, before its dQ atomics:
    // the proxy fence waits for this thread's outstanding memory operations, and at the top of
    // the next step it would wait for those atomics to drain.
    auto stage_ready = [&]() {
        cp_wait<QS - 2>();
        fence_async_smem();
    };
    stage_ready();  // stage i0
    int fl_next = md.flag(i0, j);  // a variant's tile flags, each read a step before its use
    for (int i = i0; i < iend; ++i) {                                    // G2:L3
        const int st = (i - i0) % QS;
        const u32 so = st * STG;
        const float* sL = sLD + st * 2 * BR;
        const float* sD = sL + BR;
        __syncthreads();     // stage i is visible for every thread's copies; every warpgroup is done with i - 1
        if (i + QS - 1 < iend) load_i(i + QS - 1);  // G2:L4
        cp_commit();
        const int fl = md.step_flag(fl_next, i + 1 < iend, i + 1, j);  // 0 none visible, 1 some, 2 all
        if (fl == 0) {
            stage_ready();  // stage i + 1
            continue;
        }

        // G2:L5  S^T = K_j Q_i^T and G2:L6  dP^T = V_j dO_i^T (this warpgroup's 64 keys x BR)
        float s[BR / 2], dp[BR / 2];
        g2_issue_sdp<BF16, D, BR, BC>(s, dp, aK, aV, bQk, so);
        wg_wait<0>();
        wg_touch(s);
        wg_touch(dp);

        // P^T = exp(S^T - L), masked; dS^T = P^T (dP^T - D_i); both rounded to 16 bits (G2:L6)
        const bool edge = (i + 1) * BR > Nq || (j + 1) * BC > Nk || (causal && (j + 1) * BC - 1 > i * BR) ||
                          (TcMod::ON && fl != 2);
        u32 pa[BR / 16][4], sa[BR / 16][4];
        // edge tiles (a mask's: MOD; the plain build's: MASK) and the rest in two loops, the test
        // outside them: with the test inside, ptxas kept a branch per entry pair (a mask's build)
        // or a select per entry on every tile (the plain build). A score_mod's build keeps the
        // one loop with the test inside (two loops of its score_mod code spill).
        // (a plain lambda with an int, not a generic one: the device's NVRTC takes a generic
        // lambda in device code for a host function; each call is inlined with its constant)
        auto p_ds = [&](const int kind) {  // 0 all visible, 1 bounds and causal, 2 a mask's, 3 as `edge` says
            const bool MOD = kind == 2 || (kind == 3 && TcMod::ON && edge);
            const bool MASK = kind == 1 || (kind == 3 && edge);
#pragma unroll
            for (int n = 0; n < NQ; ++n) {
                const float2 lq = *reinterpret_cast<const float2*>(sL + n * 8 + 2 * t);
                const float2 dd = *reinterpret_cast<const float2*>(sD + n * 8 + 2 * t);
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int c = j * BC + krow + g + 8 * h;
                    const int r = i * BR + n * 8 + 2 * t;
                    float p0, p1, w0 = 1.0f, w1 = 1.0f;  // w: score_mod's derivative (a variant's)
                    if (MOD) {
                        p0 = g2_mod_p(md, fl, s[4 * n + 2 * h], lq.x, r, c, Nq, Nk, causal, tau, blk.sl2, w0);
                        p1 = g2_mod_p(md, fl, s[4 * n + 2 * h + 1], lq.y, r + 1, c, Nq, Nk, causal, tau, blk.sl2, w1);
                        if (!TcMod::SCORE) w0 = w1 = 1.0f;  // a mask only: P is 0 where hidden already
                    } else {  // all visible (a score_mod's variant: score_mod's P and derivative)
                        p0 = g2_interior_p(md, s[4 * n + 2 * h], lq.x, r, c, tau, blk.sl2, w0);
                        p1 = g2_interior_p(md, s[4 * n + 2 * h + 1], lq.y, r + 1, c, tau, blk.sl2, w1);
                        if (MASK) {
                            if (r >= Nq || c >= Nk || masked(causal, r, c)) p0 = 0.0f;
                            if (r + 1 >= Nq || c >= Nk || masked(causal, r + 1, c)) p1 = 0.0f;
                        }
                    }
                    const u32 pp = pack2<BF16>(p0, p1);
                    const u32 ss = pack2<BF16>(p0 * (dp[4 * n + 2 * h] - dd.x) * w0, p1 * (dp[4 * n + 2 * h + 1] - dd.y) * w1);
                    pa[n >> 1][(n & 1) * 2 + h] = pp;
                    sa[n >> 1][(n & 1) * 2 + h] = ss;
                    // dS^T (keys x queries) into its panel tile: row krow + g + 8 h, chunk n
                    const int kr = krow + g + 8 * h;
                    asm volatile("st.shared.b32 [%0], %1;\n" ::
                                 "r"(s0 + OS + (u32)((n >> 3) * BC * 128 + kr * 128 + (((n & 7) ^ g) << 4) + 4 * t)),
                                 "r"(ss) : "memory");
                }
            }
        };
        if (TcMod::SCORE) p_ds(3);
        else if (TcMod::ON && edge) p_ds(2);
        else if (edge) p_ds(1);
        else p_ds(0);

        g2_issue_dvdk<BF16, D, BR>(dv, dk, pa, sa, bQm, so);  // G2:L6 dV~, G2:L8 dK~

        fence_async_smem();
        __syncthreads();  // dS^T is complete

        // G2:L7  dQ_i += dS K_j: this warpgroup's 64 queries x DQ columns of the term
        float dq[DQ / 2];
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk)
            wg_ss<BF16, DQ, 1, 1>(dq, aS + (mnmajor_step<BR>(kk) >> 4), bKm + (mnmajor_step<D>(kk) >> 4), kk > 0);
        wg_commit();
        wg_wait<0>();
        wg_touch(dq);
        wg_touch(dv);
        wg_touch(dk);
        stage_ready();  // stage i + 1
        g2_add_dq(blk, i, dq_row0 + wq * 16, dq_col0, Nq, tau, frag(dq), tr_dQ, g, t);
#ifdef FLASHLAB_TRACE
        g2_trace_kv(blk, i, krow, 0, Nk, tau, frag(dk), frag(dv), tr_dK, tr_dV, g, t);
        if (threadIdx.x == 0) tr_seq[((size_t)bh * blk.Tr + i) * blk.Tc + j] = i - i0;
#endif
    }
    cp_wait<0>();

    // G2:L10  write dK_j = tau dK~, dV_j = dV~ (keys with no visible query get zeros)
    g2_write_kv<BF16>(dK + dkr.head(bh, H), dV + dvr.head(bh, H), dkr.n, dvr.n, j * BC + krow, 0,
                      Nk, tau, frag(dk), frag(dv), g, t);
}
