/* tc_blocks.cuh: who a thread block is, for the tensor-core kernels (kernels/tc.cu, tc90.cu,
 * tc90_ws.cu): the causal block order, the operand layout (Rows) and F2's and G2's thread blocks.
 * Part of tc_common.cuh, which includes it after its PTX wrappers (u16, u32, TC_LOG2E); not a
 * header to include on its own. */
#pragma once

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
 * launcher picks how many heads' operands fit: tc_head_group in flashlab/launch/plans.py), inside a
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
/* block_order's mapping for the id-th block to start, of nx blocks per head over BH heads: a
 * persistent kernel's work tiles (kernels/tc90_ws.cu). The same arithmetic as block_order, kept
 * apart so that the kernels that call block_order compile as before. */
template <bool LONG_HIGH>
__device__ __forceinline__ void block_order_of(int id, int nx, int BH, int causal, int group,
                                               int& x, int& bh) {
    const int G = causal ? group : 1;
    const int c = id / (G * nx);
    const int r = id - c * G * nx;
    const int heads = min(G, BH - c * G);
    const int q = r / heads;
    x = (LONG_HIGH && causal) ? nx - 1 - q : q;
    bh = c * G + r % heads;
}

/* ---------------------------------------------------------------- operand layout */

/* Where the rows of one (B, H, N, D) 16-bit operand are: the element strides of its batch, head
 * and row dimensions (torch's x.stride(0), x.stride(1), x.stride(2)); the last dimension is
 * contiguous and every row starts on 16 bytes (cp.async's unit), which the launcher checks. A
 * contiguous tensor has (H N D, N D, D); q of a packed projection, qkv.view(B, N, 3, H, D) with
 * its heads moved forward, has (3 N H D, D, 3 H D), and runs without a copy. */
struct Rows {
    long long b, h;  // batch, head
    int n;           // row
    /* element offset of head bh's first row, bh = b * H + h as block_order counts heads; with
     * G > 1 (GQA, a variant build's K and V) query head h reads head h / G of this operand */
    __device__ __forceinline__ long long head(int bh, int H, int G = 1) const {
        const int bb = bh / H;
        return bb * b + (long long)((bh - bb * H) / G) * h;
    }
};
static_assert(sizeof(Rows) == 24 && alignof(Rows) == 8,
              "Rows must match ROWS_DTYPE in flashlab/launch/prepared.py");

/* ---------------------------------------------------------------- thread blocks */

/* F2's thread block (tc_forward, tc90_forward): row block i of head bh (the kernel has them from
 * block_order), that head's Q, K, V, the tile counts, the key tiles it visits (F2:L3: causal, none
 * past the tile that holds the diagonal of its last row) and the scale. */
template <int D, int BR, int BC>
struct F2Block {
    int i, bh;                // row block, head
    int Tr, Tc;               // row blocks and key tiles per head
    int last_row;             // the block's last query row that exists
    int j0, jend;             // key tiles visited: j = j0 .. jend - 1 (a variant narrows them)
    const u16 *Qh, *Kh, *Vh;  // head bh's Q (Nq, D), K and V (Nk, D), rows qn, kn, vn apart
    int qn, kn, vn;
    float sl2;                // tau log2(e): S in the softmax's base-2 units
    __device__ __forceinline__ F2Block(int i_, int bh_, const u16* Q, const u16* K, const u16* V,
                                       const Rows& qr, const Rows& kr, const Rows& vr, int H,
                                       int G, int Nq, int Nk, float tau, int causal) {
        i = i_;
        bh = bh_;
        Qh = Q + qr.head(bh, H);
        Kh = K + kr.head(bh, H, G);  // G query heads per key/value head (TC_KV_GROUP)
        Vh = V + vr.head(bh, H, G);
        qn = qr.n;
        kn = kr.n;
        vn = vr.n;
        Tr = (Nq + BR - 1) / BR;
        Tc = (Nk + BC - 1) / BC;
        last_row = min(Nq, (i + 1) * BR) - 1;
        j0 = 0;
        jend = causal ? min(Tc, last_row / BC + 1) : Tc;            // F2:L3 causal skipping
        sl2 = tau * TC_LOG2E;
    }
};

/* G2's thread block (tc_backward, tc90_backward): key block j of head bh (the kernel has them
 * from block_order), that head's Q, dO, L, D and fp32 dQ accumulator, the tile counts and the
 * scale. G2:L3's causal skipping (i0) stays in the kernel: computed in this constructor, it
 * changes how the kernels' later tests of `causal` compile (tc90_backward then reloads `causal`
 * for every masked pair). */
template <int D, int BR, int BC>
struct G2Block {
    int j, bh;                 // key block, head
    int Tr, Tc;                // query blocks and key blocks per head
    const u16 *Qh, *dOh;       // head bh's Q, dO (Nq, D), rows qn, don apart
    int qn, don;
    const float *Lh, *Dh;      // its L, D (Nq)
    float* dQh;                // its fp32 dQ accumulator (Nq, D)
    float sl2;                 // tau log2(e)
    __device__ __forceinline__ G2Block(int j_, int bh_, const u16* Q, const u16* dO,
                                       const Rows& qr, const Rows& dor, int H,
                                       const float* L, const float* Dv, float* dQacc, int Nq,
                                       int Nk, float tau) {
        j = j_;
        bh = bh_;
        Qh = Q + qr.head(bh, H);
        dOh = dO + dor.head(bh, H);
        qn = qr.n;
        don = dor.n;
        Lh = L + head_offset(bh, Nq, 1);
        Dh = Dv + head_offset(bh, Nq, 1);
        dQh = dQacc + head_offset(bh, Nq, D);
        Tr = (Nq + BR - 1) / BR;
        Tc = (Nk + BC - 1) / BC;
        sl2 = tau * TC_LOG2E;
    }
};
