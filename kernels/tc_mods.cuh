/* tc_mods.cuh: an attention variant (flashlab.mods) in the tensor-core kernels, tc.cu and tc90.cu.
 * Included by tc_common.cuh; the C of the variant comes first (flashlab.mods.kernel.KernelVariant:
 * -DFL_MODS, fl_mask_mod, fl_score_mod and its derivative, and FL_SCORE when there is a score_mod).
 *
 * A variant build's kernels take, after their Rows arguments (TC_MOD_PARAMS):
 *   Hkv            key/value heads per batch (GQA: query head h reads key/value head h / (H / Hkv));
 *   fl_mod_f, fl_mod_i   the variant's closed-over arrays (floats, ints);
 *   fl_tiles       (tiles_B, tiles_H, Tr, Tc) bytes for this kernel's tiles: 0 no visible entry,
 *                  1 some (the mask is evaluated per element), 2 all (it is not);
 *   fl_range       (tiles_B, tiles_H, T, 2) ints: per query block i (forward, T = Tr) or key
 *                  block j (backward, T = Tc), the first and one past the last tile of the other
 *                  kind with a visible entry ([0, 0) when none). The loops visit only that range
 *                  (F2:L3, G2:L3 for any mask), intersected with causal's;
 *   tiles_B, tiles_H  1 where the mask reads neither b nor h (one block mask for every head);
 *   fl_order       (gridDim.x gridDim.y, 2) ints: the block (x, bh) each thread block computes,
 *                  in start order, longest range first (TC_BLOCK_ORDER: block_order's idea for
 *                  any mask; the launcher's flashlab.launch.variants.block_order).
 * Per element, on a tile that is not all visible or with a score_mod (F2:L5, G2:L5):
 *   S = score_mod(tau q.k, b, h, r, c) where visible, -inf (P = 0) where not; the backward's
 *   dS is multiplied by score_mod's derivative (G2:L6). Edge tiles test each entry (f2_mod,
 *   g2_mod_p); interior all-visible tiles of a score_mod only apply it (f2_interior,
 *   g2_interior_p). A query row with no visible key gets O = 0 and L = -inf (TC_ROW_INV,
 *   TC_ROW_LSE).
 *
 * The plain build has none of this: TcMod below is then an empty struct whose answers are
 * constants (every tile all visible, no score_mod), so the kernels compile as before. */
#pragma once

#ifdef FL_MODS
#define TC_MOD_PARAMS , int Hkv, const float* __restrict__ fl_mod_f,                     \
    const int* __restrict__ fl_mod_i, const unsigned char* __restrict__ fl_tiles,           \
    const int* __restrict__ fl_range, int tiles_B, int tiles_H, const int* __restrict__ fl_order
/* which block (x, bh) thread block (blockIdx.x, blockIdx.y) computes: the launcher's order,
 * longest first (the work of each block is its range's length) */
#define TC_BLOCK_ORDER(LONG_HIGH, causal, group, x, bh) tc_variant_order(fl_order, x, bh)
/* the variant of thread block `bh` whose tile grid is Tr x Tc and range has T entries */
#define TC_MOD(bh, Tr, Tc, T) \
    TcMod(bh, H, fl_mod_f, fl_mod_i, fl_tiles, fl_range, tiles_B, tiles_H, Tr, Tc, T)
#define TC_KV_GROUP (H / Hkv)  // query heads per key/value head
#define TC_ROW_INV(l) ((l) > 0.0f ? 1.0f / (l) : 0.0f)
#define TC_ROW_LSE(m, l) ((l) > 0.0f ? (safe_max(m) + log2f(l)) * TC_LN2 : FL_NEG_INF)

struct TcMod {
    static constexpr bool ON = true;
#ifdef FL_SCORE
    static constexpr bool SCORE = true;   // S is score_mod's: every tile goes element by element
#else
    static constexpr bool SCORE = false;  // a mask only: all-visible tiles just scale
#endif
    int b, h, Tc;
    const float* f;
    const int* iv;
    // the kernel's arguments as they come (uniform registers) and this head's offsets into them,
    // 32 bits each (the launcher's arrays are far below 2^32 entries): a pointer per head would
    // take two more ordinary registers through the loops
    const unsigned char* tiles;  // (tiles_B, tiles_H, Tr, Tc) flags; this head's at toff
    const int* range;            // (tiles_B, tiles_H, T, 2); this head's at roff
    unsigned toff, roff;
    __device__ __forceinline__ TcMod(int bh, int H, const float* f_, const int* i_,
                                     const unsigned char* tiles_, const int* range_, int tB,
                                     int tH, int Tr, int Tc_, int T) {
        b = bh / H;
        h = bh - b * H;
        Tc = Tc_;
        f = f_;
        iv = i_;
        const unsigned head = (tB > 1 ? b : 0) * tH + (tH > 1 ? h : 0);
        tiles = tiles_;
        range = range_;
        toff = head * (unsigned)(Tr * Tc_);
        roff = head * (unsigned)(T * 2);
    }
    /* the flag of tile (i, j): 0 none visible, 1 some, 2 all */
    __device__ __forceinline__ int flag(int i, int j) const { return tiles[toff + (unsigned)(i * Tc + j)]; }
    /* the flag a step of the loop computes, from `next` (read a step earlier), and the flag of
     * tile (i, j), the next step's (where `more`), read into `next`: the load's latency hides
     * behind this step's work instead of stalling before its products */
    __device__ __forceinline__ int step_flag(int& next, bool more, int i, int j) const {
        // meant to keep `next` in an ordinary register until here (ptxas moves the loaded flag
        // to a uniform register right after its load, and so waits for the load there). It does
        // not: tc90's forward still has that R2UR (SASS, 2026-12-04). It stays because it moves
        // the variant builds' register allocation, and those are the builds tested and timed
        // on the H200; taking it out needs their GPU tests again.
        int fl;
        asm volatile("mov.b32 %0, %1;\n" : "=r"(fl) : "r"(next));
        if (more) next = flag(i, j);
        return fl;
    }
    /* narrow [lo, hi) to the tiles of block x that have a visible entry */
    __device__ __forceinline__ void visit(int x, int& lo, int& hi) const {
        lo = max(lo, range[roff + 2 * x]);
        hi = min(hi, range[roff + 2 * x + 1]);
    }
    __device__ __forceinline__ bool mask(int r, int c) const {
        return fl_mask_mod(b, h, r, c, f, iv);
    }
    __device__ __forceinline__ float score(float x, int r, int c) const {
        return fl_score_mod(x, b, h, r, c, f, iv);
    }
    __device__ __forceinline__ float score_grad(float x, int r, int c) const {
        return fl_score_mod_grad(x, b, h, r, c, f, iv);
    }
};
__device__ __forceinline__ void tc_variant_order(const int* order, int& x, int& bh) {
    u32 bx, by;  // read anew at each call, as block_order does
    asm volatile("mov.u32 %0, %%ctaid.x;\n" : "=r"(bx));
    asm volatile("mov.u32 %0, %%ctaid.y;\n" : "=r"(by));
    const int2 e = reinterpret_cast<const int2*>(order)[bx + gridDim.x * by];
    x = e.x;
    bh = e.y;
}
#else
#define TC_MOD_PARAMS
#define TC_BLOCK_ORDER(LONG_HIGH, causal, group, x, bh) block_order<LONG_HIGH>(causal, group, x, bh)
#define TC_MOD(bh, Tr, Tc, T) TcMod()
#define TC_KV_GROUP 1
#define TC_ROW_INV(l) (1.0f / (l))
#define TC_ROW_LSE(m, l) ((safe_max(m) + log2f(l)) * TC_LN2)

struct TcMod {
    static constexpr bool ON = false, SCORE = false;
    __device__ __forceinline__ int flag(int, int) const { return 2; }
    __device__ __forceinline__ int step_flag(int&, bool, int, int) const { return 2; }
    __device__ __forceinline__ void visit(int, int&, int&) const {}
    __device__ __forceinline__ bool mask(int, int) const { return true; }
    __device__ __forceinline__ float score(float x, int, int) const { return x; }
    __device__ __forceinline__ float score_grad(float, int, int) const { return 1.0f; }
};
#endif

/* Is entry (r, c) of a tile with flag fl visible: inside the matrix, not hidden by causal, and
 * the mask's (its answer counts only on a tile with some entries hidden)? The mask is evaluated
 * on every entry, at indices clamped into the matrix (every index a mod is valid on: the
 * references evaluate it on all of them), so its loads are not conditional: the compiler then
 * reads a closed-over array once per distinct index of the tile (a document id per row and per
 * column), not once per entry behind each entry's tests. */
__device__ __forceinline__ bool tc_visible(const TcMod& md, int fl, int r, int c, int Nq, int Nk,
                                           int causal) {
    const bool keep = md.mask(min(r, Nq - 1), min(c, Nk - 1));
    return (fl != 0) & (r < Nq) & (c < Nk) & !masked(causal, r, c) & ((fl == 2) | keep);
}

/* F2:L5 with a variant, on a slab of S whose rows start at query row0 and columns at key k0:
 * S in base-2 units, score_mod's where visible (score_mod sees the natural-units score tau q.k),
 * -inf where hidden. score_mod too runs on every entry at clamped indices, its loads unconditional
 * (tc_visible). */
template <int N>
__device__ __forceinline__ void f2_mod(Slab<N>& s, const TcMod& md, int fl, int row0, int k0,
                                       int Nq, int Nk, int causal, float tau, float sl2, int g,
                                       int t) {
    if (!TcMod::SCORE) {  // a mask only: the tile's flag and place pick a loop (uniform branches)
        if (fl == 2) {    // the mask hides nothing here: the plain build's edge (Nk, causal)
            f2_mask(s, row0, k0, Nk, causal, sl2, g, t);
            return;
        }
        if (fl == 0 || (!causal && k0 + 8 * N <= Nk && row0 + 16 <= Nq)) {
            // nothing visible, or the warp's slab inside the matrix: only the mask's own test
            // per entry (a causal-shaped mask costs what built-in causal's f2_mask does)
#pragma unroll
            for (int n = 0; n < N; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    s[n][e] = fl != 0 && md.mask(row0 + g + (e >> 1) * 8, k0 + n * 8 + 2 * t + (e & 1))
                                  ? s[n][e] * sl2 : FL_NEG_INF;
            return;
        }
    }
#pragma unroll
    for (int n = 0; n < N; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int r = row0 + g + (e >> 1) * 8;
            const int c = k0 + n * 8 + 2 * t + (e & 1);
            const float x = s[n][e];
            const float v = TcMod::SCORE
                                ? md.score(x * tau, min(r, Nq - 1), min(c, Nk - 1)) * TC_LOG2E
                                : x * sl2;
            s[n][e] = tc_visible(md, fl, r, c, Nq, Nk, causal) ? v : FL_NEG_INF;
        }
}

/* F2:L5 on a tile whose entries are all visible: S in base-2 units, score_mod's where there is
 * one (no index tests: an interior tile of a score_mod's variant skips them as the plain build's
 * interior tiles do), else just scaled. */
template <int N>
__device__ __forceinline__ void f2_interior(Slab<N>& s, const TcMod& md, int row0, int k0,
                                            float tau, float sl2, int g, int t) {
#pragma unroll
    for (int n = 0; n < N; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e)
            s[n][e] = TcMod::SCORE ? md.score(s[n][e] * tau, row0 + g + (e >> 1) * 8,
                                              k0 + n * 8 + 2 * t + (e & 1)) * TC_LOG2E
                                   : s[n][e] * sl2;
}

/* G2:L5 for entry (r, c) of a tile whose entries are all visible: P = exp(S - L), score_mod's
 * where there is one (grad gets its derivative; left as it is without one). */
__device__ __forceinline__ float g2_interior_p(const TcMod& md, float x, float Lr, int r, int c,
                                               float tau, float sl2, float& grad) {
    if (!TcMod::SCORE) return exp2_fast(x * sl2 - Lr * TC_LOG2E);
    grad = md.score_grad(x * tau, r, c);
    return exp2_fast((md.score(x * tau, r, c) - Lr) * TC_LOG2E);
}

/* G2:L5 with a variant, for entry (r, c) whose S (unscaled q.k) is x and whose row has
 * logsumexp Lr: P = exp(score_mod(tau x) - L) where visible, 0 where hidden; grad gets
 * score_mod's derivative there (G2:L6 multiplies dS by it), 0 where hidden. Evaluated on every
 * entry at clamped indices, as f2_mod. */
__device__ __forceinline__ float g2_mod_p(const TcMod& md, int fl, float x, float Lr, int r,
                                          int c, int Nq, int Nk, int causal, float tau,
                                          float sl2, float& grad) {
    const bool vis = tc_visible(md, fl, r, c, Nq, Nk, causal);
    if (!TcMod::SCORE) {
        grad = vis ? 1.0f : 0.0f;
        return vis ? exp2_fast(x * sl2 - Lr * TC_LOG2E) : 0.0f;
    }
    const int rc = min(r, Nq - 1), cc = min(c, Nk - 1);
    const float gv = md.score_grad(x * tau, rc, cc);
    const float p = exp2_fast((md.score(x * tau, rc, cc) - Lr) * TC_LOG2E);
    grad = vis ? gv : 0.0f;
    return vis ? p : 0.0f;
}
