/* tc.cu: F2 and G2 on tensor cores. fp16 or bf16 Q, K, V, dO; fp32 accumulation. sm_80 and newer;
 * its float16 instances also build for sm_75 (registry variant "turing": TC_SM75 in tc_common.cuh,
 * each m16n8k16 product as two m16n8k8, copies through registers).
 *
 * The same algorithms as fa2.cu (docs/ALGORITHMS.md F2, G2), rewritten for mma.sync.m16n8k16:
 *
 *   - a warp, not a thread, is the unit of work: it owns 16-row slabs of a tile and computes
 *     16 x 8 pieces of a product with one tensor-core instruction (mma.sync);
 *   - tiles travel HBM -> shared memory with cp.async (no registers in between, overlapped with
 *     the arithmetic on the previous tile), and shared memory -> registers with ldmatrix;
 *   - shared-memory rows are swizzled: 16-byte chunk c of row r is stored at chunk c ^ (r % 8),
 *     so the 8 row addresses of one ldmatrix hit 8 different bank groups;
 *   - the online softmax runs in base 2 (exp2 is one MUFU instruction): S is multiplied by
 *     tau * log2(e) once, m is kept in those units, and l and O~ are unchanged by the base;
 *   - P~ never leaves registers in the forward: the accumulator layout of S = Q K^T is the
 *     A-operand layout of P~ V, once each pair of fp32 values is rounded to one 16-bit pair. That
 *     rounding, and the roundings of P and dS in the backward (which pass them between warps
 *     through shared memory), are where this kernel's result differs from fp32's;
 *   - ldmatrix addresses come from a few base registers plus constants (SwzAddr), so the
 *     registers go to the accumulators: two 16-row slabs per warp even at D = 128.
 *
 * Here: the mma.sync kernels. tc_tiles.cuh: their mma.sync / ldmatrix wrappers, swizzle, SwzAddr,
 * tile loaders; tc_common.cuh, tc_blocks.cuh: what tc90.cu shares (one-slab softmax, P~ packing,
 * masks, epilogues, traces, cp.async, the blocks and their order, the backward's helpers).
 * Reference: flashlab/reference/tc.py (same warps, same tile order, same roundings).
 * Layout: Q, O, dO (B*H, Nq, D); K, V (B*H, Nk, D), 16-bit raw words (the dtype is the template
 *   flag BF16, seen only by mma and cvt); L (logsumexp), Dv, dQacc fp32.
 * Launch: forward grid (ceil(Nq / BR), B*H), NW warps, (BR + 4 BC) D 2 bytes of shared memory;
 *   backward: tc_backward_dot (8 rows per 256-thread block), then tc_backward with grid
 *   (ceil(Nk / BC), B*H), NW warps, (2 BC + 2 QS BR) D 2 + 2 BC BR 2 + 8 QS BR bytes, then
 *   tc_backward_dq. Causal grids start their longest blocks first (block_order, tc_blocks.cuh).
 *   Tiles per head dim: TC_FORWARD / TC_BACKWARD in flashlab/registry.py (plans.tc_plan: bytes).
 */
#include "tc_common.cuh"
#include "tc_tiles.cuh"  // mma.sync, ldmatrix, the swizzled tiles and their loaders

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 750
#error "kernels/tc.cu needs sm_75 or newer (mma.sync, ldmatrix); kernel='auto' falls back to fa2"
#endif

/* ---------------------------------------------------------------- F2 forward */

/* One thread block per (Q block i, head); NW warps, each owning WM slabs of 16 query rows: warp
 * w holds rows w*16*WM .. w*16*WM + 16*WM - 1 of the block. BR = 16 * WM * NW. K_j and V_j
 * arrive BC keys at a time into two stages of shared memory (the copy of tile j+1 runs during all
 * of tile j: one barrier per tile; on Turing its loads are issued before tile j and stored after
 * it, RegTile). The arithmetic takes each tile BK keys at a time: S = Q_i K^T for BK keys, the
 * online softmax, O~ += P~ V for those keys, then the next BK. That is F2 with Bc = BK as far as
 * the numbers go; BK < BC keeps fewer S registers alive (32 rows x BK), so a warp can own two
 * slabs at D = 128 without spilling. */
template <bool BF16, int D, int BC, int NW, int WM, int BK>
__global__ void __launch_bounds__(NW * 32)
tc_forward(const u16* __restrict__ Q,  // (B, H, Nq, D), rows as qr says
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
    constexpr int BR = 16 * WM * NW, NT = NW * 32, CH = D / 8;
    constexpr int NS = BK / 8;   // n8 tiles of S per slab and sub-step
    constexpr int NO = D / 8;    // n8 tiles of O~ per slab
    static_assert(BC % BK == 0 && BK % 16 == 0, "BK must divide BC in multiples of 16 keys");
    extern __shared__ uint4 smem[];
    uint4* sQ = smem;            // (BR, D)
    uint4* sKV = sQ + BR * CH;   // 2 stages of K_j (BC, D) then V_j (BC, D)

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    int i, bh;
    TC_BLOCK_ORDER(true, causal, group, i, bh);  // causal: longest first, `group` heads at a time
    F2Block<D, BR, BC> blk(i, bh, Q, K, V, qr, kr, vr, H, TC_KV_GROUP, Nq, Nk, tau, causal);  // its slices, F2:L3's jend
    const TcMod md = f2_variant(blk, TC_MOD(bh, blk.Tr, blk.Tc, blk.Tr));  // a variant's: F2:L3's tiles narrowed
    const int wrow = warp * 16 * WM;  // this warp's first row in the block

    load_tile<D, BR, NT>(sQ, blk.Qh, blk.qn, i * BR, Nq);                  // F2:L2
    uint4* first = sKV + (blk.j0 & 1) * 2 * BC * CH;  // tile j lives in stage j % 2
    load_tile<D, BC, NT>(first, blk.Kh, blk.kn, blk.j0 * BC, Nk);           // F2:L4 (K_j0, V_j0)
    load_tile<D, BC, NT>(first + BC * CH, blk.Vh, blk.vn, blk.j0 * BC, Nk);
    cp_commit();

    float o[WM][NO][4];
    float m[WM][2], l[WM][2];
#pragma unroll
    for (int a = 0; a < WM; ++a) {
        m[a][0] = m[a][1] = FL_NEG_INF;
        l[a][0] = l[a][1] = 0.0f;
#pragma unroll
        for (int n = 0; n < NO; ++n) o[a][n][0] = o[a][n][1] = o[a][n][2] = o[a][n][3] = 0.0f;
    }
    // ldmatrix addresses (A: rows lane % 16, chunk lane / 16; B: rows lane % 8 + 8 (lane / 16),
    // chunk (lane / 8) % 2; V^T: rows lane % 16 in two halves of 8, chunk lane / 16), stage 0
    const SwzAddr<D> aQ(sQ, wrow + (lane & 15), lane >> 4);
    const SwzAddr<D> aK(sKV, (lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1);
    const SwzAddr<D> aV(sKV + BC * CH, (lane & 7) + ((lane >> 3) & 1) * 8, lane >> 4);
    constexpr u32 STAGE = 2u * BC * CH * 16u;  // bytes from stage 0 to stage 1

    int fl_next = md.flag(i, blk.j0);  // a variant's tile flags, each read a tile before its use
#if TC_SM75
    // Turing: K_{j+1}, V_{j+1} between their loads and their stores, where the registers allow
    // (ptxas sm_75: D = 64 with 2 slabs 246 registers; D = 128 with 2 slabs would spill 64 bytes
    // at 255, so it copies as before)
    constexpr bool PF = D * WM <= 128;
    RegTile<D, BC, NT> rk, rv;
#endif
    for (int j = blk.j0; j < blk.jend; ++j) {                        // F2:L3
        cp_wait<0>();     // K_j, V_j (and at j = j0 Q_i) have landed ...
#if TC_SM75
        if (PF && j > blk.j0) {  // K_j, V_j, loaded during tile j-1, into stage j % 2 (tile
            uint4* cur = sKV + (j & 1) * 2 * BC * CH;  // j-2's, which every warp finished)
            rk.store(cur);
            rv.store(cur + BC * CH);
        }
#endif
        __syncthreads();  // ... for every thread's copies, and every warp is done with tile j-1
        if (j + 1 < blk.jend) {                                      // F2:L4 for j+1, during tile j
#if TC_SM75
            if constexpr (PF) {
                rk.fetch(blk.Kh, blk.kn, (j + 1) * BC, Nk);
                rv.fetch(blk.Vh, blk.vn, (j + 1) * BC, Nk);
            } else
#endif
            {
                uint4* nxt = sKV + ((j + 1) & 1) * 2 * BC * CH;
                load_tile<D, BC, NT>(nxt, blk.Kh, blk.kn, (j + 1) * BC, Nk);
                load_tile<D, BC, NT>(nxt + BC * CH, blk.Vh, blk.vn, (j + 1) * BC, Nk);
            }
        }
        cp_commit();
        const u32 so = (j & 1) * STAGE;
        const int fl = md.step_flag(fl_next, j + 1 < blk.jend, i, j + 1);  // 0 none visible, 1 some, 2 all
        if (fl == 0) continue;

#pragma unroll
        for (int u = 0; u < BC / BK; ++u) {
            const int k0 = j * BC + u * BK;  // first key of this sub-step
            if (k0 > (causal ? min(Nk - 1, blk.last_row) : Nk - 1)) break;  // nothing left to see
            float s[WM][NS][4];                                      // F2:L5  S = Q_i K^T
#pragma unroll
            for (int a = 0; a < WM; ++a)
#pragma unroll
                for (int n = 0; n < NS; ++n) s[a][n][0] = s[a][n][1] = s[a][n][2] = s[a][n][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                u32 qa[WM][4];
#pragma unroll
                for (int a = 0; a < WM; ++a) ldsm4(qa[a], aQ.at(a * 16, kk * 2));
#pragma unroll
                for (int nb = 0; nb < BK / 16; ++nb) {
                    u32 kb[4];
                    ldsm4(kb, so + aK.at(u * BK + nb * 16, kk * 2));
#pragma unroll
                    for (int a = 0; a < WM; ++a) {
                        mma16816<BF16>(s[a][2 * nb], qa[a], kb[0], kb[1]);
                        mma16816<BF16>(s[a][2 * nb + 1], qa[a], kb[2], kb[3]);
                    }
                }
            }

            // F2:L5  scale to base-2 units; mask keys past Nk and, where the diagonal crosses,
            // keys after the query (two loops, not one with a test inside: the interior tiles
            // skip the compares)
            const bool edge = k0 + BK > Nk || (causal && k0 + BK - 1 > i * BR) || (TcMod::ON && fl != 2);
            if (edge) {
#pragma unroll
                for (int a = 0; a < WM; ++a)
                    if (TcMod::ON)  // a variant: its mask and score_mod, element by element
                        f2_mod(s[a], md, fl, i * BR + wrow + a * 16, k0, Nq, Nk, causal, tau, blk.sl2, g, t);
                    else
                        f2_mask(s[a], i * BR + wrow + a * 16, k0, Nk, causal, blk.sl2, g, t);
            } else {  // interior tile: only the scale (a score_mod's variant: score_mod)
#pragma unroll
                for (int a = 0; a < WM; ++a)
                    f2_interior(s[a], md, i * BR + wrow + a * 16, k0, tau, blk.sl2, g, t);
            }

            // P~ is rounded to 16 bits as soon as each half-row is done: pa holds it in the
            // A-operand layout of P~ V (the S accumulator layout, two values per register)
            u32 pa[WM][BK / 16][4];
#pragma unroll
            for (int a = 0; a < WM; ++a)
#pragma unroll
                for (int h = 0; h < 2; ++h) {  // rows g and g + 8 of the slab
                    // F2:L6  m_new = max(m, rowmax S); P~ = exp(S - m_new); l = e^(m - m_new) l + rowsum P~
                    const float alpha = f2_softmax_row(s[a], h, m[a][h], l[a][h]);
                    f2_rescale_row(o[a], h, alpha);                  // F2:L7  O~ = e^(m - m_new) O~
                    f2_pack_row<BF16>(s[a], h, pa[a]);
                }

#pragma unroll
            for (int kk = 0; kk < BK / 16; ++kk) {                   // F2:L7  O~ += P~ V
#pragma unroll
                for (int nb = 0; nb < D / 16; ++nb) {
                    u32 vb[4];
                    ldsm4t(vb, so + aV.at(u * BK + kk * 16, nb * 2));
#pragma unroll
                    for (int a = 0; a < WM; ++a) {
                        mma16816<BF16>(o[a][2 * nb], pa[a][kk], vb[0], vb[1]);
                        mma16816<BF16>(o[a][2 * nb + 1], pa[a][kk], vb[2], vb[3]);
                    }
                }
            }
        }
#ifdef FLASHLAB_TRACE
        // after step (i, j)
#pragma unroll
        for (int a = 0; a < WM; ++a)
            f2_trace(blk, j, wrow + a * 16, Nq, o[a], m[a], l[a], tr_m, tr_l, tr_O, g, t);
        if (threadIdx.x == 0) tr_seq[((size_t)bh * blk.Tr + i) * blk.Tc + j] = j;
#endif
    }
    cp_wait<0>();

    // F2:L9  O_i = O~ / l, L_i = m + log l (natural units), one write per row
    TC_BLOCK_ORDER(true, causal, group, i, bh);  // i and bh again (cheaper than keeping them live)
    u16* Oh = O + orr.head(bh, H);
    float* Lh = L + head_offset(bh, Nq, 1);
#pragma unroll
    for (int a = 0; a < WM; ++a)
        f2_write<BF16, D>(Oh, orr.n, Lh, i * BR + wrow + a * 16, Nq, o[a], m[a], l[a], g, t);
}

/* ---------------------------------------------------------------- G2 backward */

/* One thread block per (K/V block j, head), NW warps; each step i works on one block of BR
 * queries. Each product splits its output tile over the warps as a 2-D grid, like
 * FlashAttention-2, so a fragment read from shared memory feeds several mma:
 *   S^T = K_j Q_i^T and dP^T = V_j dO_i^T: warp w = (w % WS, w / WS) holds SK = BC / WS keys x
 *     SQ = BR / (NW / WS) queries;
 *   dV~ += P^T dO_i and dK~ += dS^T Q_i: warp (w % WKV, w / WKV) holds KK = BC / WKV keys x
 *     KD = D / (NW / WKV) columns of dK~ and dV~, in registers for the whole i loop;
 *   dQ_i += dS K_j: warp (w % WQ, w / WQ) holds QQ = BR / WQ queries x QD = D / (NW / WQ) columns
 *     of this step's term, added into the fp32 dQ accumulator in HBM.
 * P^T and dS^T change hands between those grids through shared memory, rounded to 16 bits
 * (the rounding G2 needs anyway: they are mma operands). Q_i, dO_i, L_i, D_i rotate through QS
 * (2 or 3) stages of shared memory: the copy of step i + QS - 1 starts at the top of step i, so it
 * has QS - 1 steps to land. Two barriers per step. G2:L0 (tc_backward_dot) and dQ's rounding
 * (tc_backward_dq) are in tc_common.cuh. */
template <bool BF16, int D, int BR, int BC, int NW, int WS, int WKV, int WQ, int QS>
__global__ void __launch_bounds__(NW * 32)
tc_backward(const u16* __restrict__ Q,     // (B, H, Nq, D), rows as qr says
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
    constexpr int NT = NW * 32, CH = D / 8;
    constexpr int SK = BC / WS, SQ = BR / (NW / WS);     // S^T, dP^T: keys x queries per warp
    constexpr int KK = BC / WKV, KD = D / (NW / WKV);    // dK~, dV~: keys x columns per warp
    constexpr int QQ = BR / WQ, QD = D / (NW / WQ);      // dQ term: queries x columns per warp
    static_assert(NW % WS == 0 && NW % WKV == 0 && NW % WQ == 0, "warp grids must divide NW");
    static_assert(SK % 16 == 0 && SQ % 16 == 0 && KK % 16 == 0 && KD % 16 == 0 && QQ % 16 == 0 &&
                  QD % 16 == 0, "every warp tile must be whole 16 x 16 pieces");
    constexpr int MS = SK / 16, NQ = SQ / 8;             // S^T: key slabs, n8 query tiles
    constexpr int MK = KK / 16, NDK = KD / 8;            // dK~, dV~: key slabs, n8 column tiles
    constexpr int MQ = QQ / 16, NDQ = QD / 8;            // dQ: query slabs, n8 column tiles
    constexpr int CP = BR / 8;                           // 16-byte chunks in a row of P^T, dS^T
    // shared memory, in 16-byte chunks from smem: K_j, V_j, P^T, dS^T, QS x (Q_i, dO_i), QS x (L_i, D_i)
    constexpr int OK_ = 0, OV = BC * CH, OP = 2 * BC * CH, OS = OP + BC * CP, OQ = OS + BC * CP;
    static_assert(QS == 2 || QS == 3, "Q_i, dO_i take 2 or 3 stages");
    constexpr int ODO = BR * CH, STG = 2 * BR * CH, OLD = OQ + QS * STG;
    extern __shared__ uint4 smem[];
    uint4* sK = smem + OK_;
    uint4* sP = smem + OP;                   // (BC, BR) P^T, 16-bit
    uint4* sdS = smem + OS;                  // (BC, BR) dS^T, 16-bit
    float* sLD2 = reinterpret_cast<float*>(smem + OLD);

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    int j, bh;
    TC_BLOCK_ORDER(false, causal, group, j, bh);  // causal: longest (j = 0) first, `group` heads at a time
    const G2Block<D, BR, BC> blk(j, bh, Q, dO, qr, dor, H, L, Dv, dQacc, Nq, Nk, tau);  // its slices of the head
    int i0 = causal ? min(blk.Tr, (j * BC) / BR) : 0, iend = blk.Tr;  // G2:L3 causal skipping
    const TcMod md = TC_MOD(bh, blk.Tr, blk.Tc, blk.Tc);  // a variant's mask and score_mod
    md.visit(j, i0, iend);  // G2:L3: a variant's block mask narrows the query blocks

    // the three warp grids
    const int sk0 = (warp % WS) * SK, sq0 = (warp / WS) * SQ;
    const int kk0 = (warp % WKV) * KK, kd0 = (warp / WKV) * KD;
    const int qq0 = (warp % WQ) * QQ, qd0 = (warp / WQ) * QD;
    // ldmatrix addresses (SwzAddr), relative to smem; tiles of one pattern share them
    const SwzAddr<D> aKV(smem, sk0 + (lane & 15), lane >> 4);                         // K, V (A)
    const SwzAddr<D> aQO(smem, sq0 + (lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1);  // Q, dO (B)
    const SwzAddr<BR> aPS(smem, kk0 + (lane & 15), lane >> 4);                        // P^T, dS^T (A)
    const SwzAddr<D> aQOt(smem, (lane & 7) + ((lane >> 3) & 1) * 8, kd0 / 8 + (lane >> 4));  // dO, Q (B^T)
    const SwzAddr<BR> aSt(smem, (lane & 7) + (lane >> 4) * 8, qq0 / 8 + ((lane >> 3) & 1));  // dS (A^T)
    const SwzAddr<D> aKt(smem, (lane & 7) + ((lane >> 3) & 1) * 8, qd0 / 8 + (lane >> 4));   // K (B^T)

    load_tile<D, BC, NT>(sK, K + kr.head(bh, H, TC_KV_GROUP), kr.n, j * BC, Nk);   // G2:L2
    load_tile<D, BC, NT>(smem + OV, V + vr.head(bh, H, TC_KV_GROUP), vr.n, j * BC, Nk);
    // step i's Q_i, dO_i, L_i, D_i into stage (i - i0) % QS
    auto load_i = [&](int i) {
        const int st = (i - i0) % QS;
        uint4* q = smem + OQ + st * STG;
        float* ld = sLD2 + st * 2 * BR;
        load_tile<D, BR, NT>(q, blk.Qh, blk.qn, i * BR, Nq);
        load_tile<D, BR, NT>(q + ODO, blk.dOh, blk.don, i * BR, Nq);
        g2_load_ld<BR, NT>(ld, blk.Lh, blk.Dh, i, Nq);
    };
    g2_first_stages<QS>(load_i, i0, iend);                               // G2:L4, stages i0 ..
#if TC_SM75
    // Turing (no cp.async): Q and dO of step i + QS - 1 are loaded into registers during step i
    // and stored at the top of step i + 1 (RegTile); L and D, a few floats, copy as before
    RegTile<D, BR, NT> rq, rdo;
#endif

    float dk[MK][NDK][4], dv[MK][NDK][4];
#pragma unroll
    for (int a = 0; a < MK; ++a)
#pragma unroll
        for (int n = 0; n < NDK; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) dk[a][n][e] = dv[a][n][e] = 0.0f;

    int fl_next = md.flag(i0, j);  // a variant's tile flags, each read a step before its use
    for (int i = i0; i < iend; ++i) {                                    // G2:L3
        const int st = (i - i0) % QS;
        const u32 so = (u32)(st * STG) * 16u;  // this stage's byte offset from stage 0
        const float* sL = sLD2 + st * 2 * BR;
        const float* sD = sL + BR;
        cp_wait<QS - 2>();  // stage i has landed (with QS = 3, stage i+1 may still be in flight) ...
#if TC_SM75
        if (i > i0 && i + QS - 2 < iend) {  // step i + QS - 2's Q, dO, fetched during step i-1,
            uint4* q = smem + OQ + ((i + QS - 2 - i0) % QS) * STG;  // into the stage step i-2
            rq.store(q);                                            // used (every warp is done)
            rdo.store(q + ODO);
        }
#endif
        __syncthreads();    // ... for every thread's copies; every warp is done with step i-1
        if (i + QS - 1 < iend) {  // G2:L4, into the stage step i-1 used
#if TC_SM75
            rq.fetch(blk.Qh, blk.qn, (i + QS - 1) * BR, Nq);
            rdo.fetch(blk.dOh, blk.don, (i + QS - 1) * BR, Nq);
            g2_load_ld<BR, NT>(sLD2 + ((i + QS - 1 - i0) % QS) * 2 * BR, blk.Lh, blk.Dh,
                               i + QS - 1, Nq);
#else
            load_i(i + QS - 1);
#endif
        }
        cp_commit();
        const int fl = md.step_flag(fl_next, i + 1 < iend, i + 1, j);  // 0 none visible, 1 some, 2 all
        if (fl == 0) continue;

        // G2:L5  S^T = K_j Q_i^T and G2:L6  dP^T = V_j dO_i^T (this warp's SK keys x SQ queries)
        float s[MS][NQ][4], dp[MS][NQ][4];
#pragma unroll
        for (int a = 0; a < MS; ++a)
#pragma unroll
            for (int n = 0; n < NQ; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[a][n][e] = dp[a][n][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            u32 ka[MS][4];
#pragma unroll
            for (int a = 0; a < MS; ++a) ldsm4(ka[a], aKV.at(a * 16, kk * 2) + 16u * OK_);
#pragma unroll
            for (int nb = 0; nb < SQ / 16; ++nb) {
                u32 qb[4];
                ldsm4(qb, aQO.at(nb * 16, kk * 2) + 16u * OQ + so);
#pragma unroll
                for (int a = 0; a < MS; ++a) {
                    mma16816<BF16>(s[a][2 * nb], ka[a], qb[0], qb[1]);
                    mma16816<BF16>(s[a][2 * nb + 1], ka[a], qb[2], qb[3]);
                }
            }
        }
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            u32 va[MS][4];
#pragma unroll
            for (int a = 0; a < MS; ++a) ldsm4(va[a], aKV.at(a * 16, kk * 2) + 16u * OV);
#pragma unroll
            for (int nb = 0; nb < SQ / 16; ++nb) {
                u32 ob[4];
                ldsm4(ob, aQO.at(nb * 16, kk * 2) + 16u * (OQ + ODO) + so);
#pragma unroll
                for (int a = 0; a < MS; ++a) {
                    mma16816<BF16>(dp[a][2 * nb], va[a], ob[0], ob[1]);
                    mma16816<BF16>(dp[a][2 * nb + 1], va[a], ob[2], ob[3]);
                }
            }
        }
        // G2:L5  P^T = exp(S^T - L) (mask: queries past Nq, keys past Nk, causal keys after the
        // query); G2:L6  dS^T = P^T * (dP^T - D_i). Both rounded to 16 bits into shared memory.
        const bool edge = (i + 1) * BR > Nq || (j + 1) * BC > Nk || (causal && (j + 1) * BC - 1 > i * BR) ||
                          (TcMod::ON && fl != 2);
#pragma unroll
        for (int n = 0; n < NQ; ++n) {
            const float2 lq = *reinterpret_cast<const float2*>(sL + sq0 + n * 8 + 2 * t);
            const float2 dd = *reinterpret_cast<const float2*>(sD + sq0 + n * 8 + 2 * t);
#pragma unroll
            for (int a = 0; a < MS; ++a)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int c = j * BC + sk0 + a * 16 + g + 8 * h;
                    const int r = i * BR + sq0 + n * 8 + 2 * t;
                    float p0, p1, w0 = 1.0f, w1 = 1.0f;  // w: score_mod's derivative (a variant's)
                    if (TcMod::ON && edge) {
                        p0 = g2_mod_p(md, fl, s[a][n][2 * h], lq.x, r, c, Nq, Nk, causal, tau, blk.sl2, w0);
                        p1 = g2_mod_p(md, fl, s[a][n][2 * h + 1], lq.y, r + 1, c, Nq, Nk, causal, tau, blk.sl2, w1);
                    } else {  // all visible (a score_mod's variant: score_mod's P and derivative)
                        p0 = g2_interior_p(md, s[a][n][2 * h], lq.x, r, c, tau, blk.sl2, w0);
                        p1 = g2_interior_p(md, s[a][n][2 * h + 1], lq.y, r + 1, c, tau, blk.sl2, w1);
                        if (edge) {
                            if (r >= Nq || c >= Nk || masked(causal, r, c)) p0 = 0.0f;
                            if (r + 1 >= Nq || c >= Nk || masked(causal, r + 1, c)) p1 = 0.0f;
                        }
                    }
                    const int kr = sk0 + a * 16 + g + 8 * h, ch = sq0 / 8 + n;
                    reinterpret_cast<u32*>(sP + swz<BR>(kr, ch))[t] = pack2<BF16>(p0, p1);
                    reinterpret_cast<u32*>(sdS + swz<BR>(kr, ch))[t] =
                        pack2<BF16>(p0 * (dp[a][n][2 * h] - dd.x) * w0, p1 * (dp[a][n][2 * h + 1] - dd.y) * w1);
                }
        }
        __syncthreads();  // P^T and dS^T are complete

        // G2:L6  dV~ += P^T dO_i and G2:L8  dK~ += dS^T Q_i (tau applied at G2:L10)
#pragma unroll
        for (int kk = 0; kk < BR / 16; ++kk) {
            u32 pa[MK][4], sa[MK][4];
#pragma unroll
            for (int a = 0; a < MK; ++a) {
                ldsm4(pa[a], aPS.at(a * 16, kk * 2) + 16u * OP);
                ldsm4(sa[a], aPS.at(a * 16, kk * 2) + 16u * OS);
            }
#pragma unroll
            for (int nb = 0; nb < KD / 16; ++nb) {
                u32 ob[4], qb[4];
                ldsm4t(ob, aQOt.at(kk * 16, nb * 2) + 16u * (OQ + ODO) + so);
                ldsm4t(qb, aQOt.at(kk * 16, nb * 2) + 16u * OQ + so);
#pragma unroll
                for (int a = 0; a < MK; ++a) {
                    mma16816<BF16>(dv[a][2 * nb], pa[a], ob[0], ob[1]);
                    mma16816<BF16>(dv[a][2 * nb + 1], pa[a], ob[2], ob[3]);
                    mma16816<BF16>(dk[a][2 * nb], sa[a], qb[0], qb[1]);
                    mma16816<BF16>(dk[a][2 * nb + 1], sa[a], qb[2], qb[3]);
                }
            }
        }

        // G2:L7  dQ_i += dS K_j: this warp's QQ queries x QD columns of the term
        {
            float dq[MQ][NDQ][4];
#pragma unroll
            for (int a = 0; a < MQ; ++a)
#pragma unroll
                for (int n = 0; n < NDQ; ++n) dq[a][n][0] = dq[a][n][1] = dq[a][n][2] = dq[a][n][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < BC / 16; ++kk) {
                u32 da[MQ][4];  // A = dS (queries x keys), stored transposed
#pragma unroll
                for (int a = 0; a < MQ; ++a) ldsm4t(da[a], aSt.at(kk * 16, a * 2) + 16u * OS);
#pragma unroll
                for (int nb = 0; nb < QD / 16; ++nb) {
                    u32 kb[4];
                    ldsm4t(kb, aKt.at(kk * 16, nb * 2) + 16u * OK_);
#pragma unroll
                    for (int a = 0; a < MQ; ++a) {
                        mma16816<BF16>(dq[a][2 * nb], da[a], kb[0], kb[1]);
                        mma16816<BF16>(dq[a][2 * nb + 1], da[a], kb[2], kb[3]);
                    }
                }
            }
#pragma unroll
            for (int a = 0; a < MQ; ++a) g2_add_dq(blk, i, qq0 + a * 16, qd0, Nq, tau, dq[a], tr_dQ, g, t);
        }
#ifdef FLASHLAB_TRACE
#pragma unroll
        for (int a = 0; a < MK; ++a)
            g2_trace_kv(blk, i, kk0 + a * 16, kd0, Nk, tau, dk[a], dv[a], tr_dK, tr_dV, g, t);
        if (threadIdx.x == 0) tr_seq[((size_t)bh * blk.Tr + i) * blk.Tc + j] = i - i0;
#endif
    }
    cp_wait<0>();

    // G2:L10  write dK_j = tau dK~, dV_j = dV~ (keys with no visible query get zeros)
    u16* dKh = dK + dkr.head(bh, H);
    u16* dVh = dV + dvr.head(bh, H);
#pragma unroll
    for (int a = 0; a < MK; ++a)
        g2_write_kv<BF16>(dKh, dVh, dkr.n, dvr.n, j * BC + kk0 + a * 16, kd0, Nk, tau, dk[a], dv[a],
                          g, t);
}
