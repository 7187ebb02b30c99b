/* tc.cu: F2 and G2 on tensor cores. fp16 or bf16 Q, K, V, dO; fp32 accumulation. sm_80 and newer.
 *
 * The same algorithms as fa2.cu (ALGORITHMS.md F2, G2), rewritten for mma.sync.m16n8k16:
 *
 *   - a warp, not a thread, is the unit of work: it owns 16-row slabs of a tile and computes
 *     16 x 8 pieces of a product with one tensor-core instruction (mma.sync);
 *   - tiles travel HBM -> shared memory with cp.async (no registers in between, overlapped with
 *     the arithmetic on the previous tile), and shared memory -> registers with ldmatrix;
 *   - shared-memory rows are swizzled: 16-byte chunk c of row r is stored at chunk c ^ (r % 8),
 *     so the 8 row addresses of one ldmatrix hit 8 different bank groups;
 *   - the online softmax runs in base 2 (exp2 is one MUFU instruction): S is multiplied by
 *     tau * log2(e) once, m is kept in those units, and l and O~ are unchanged by the base;
 *   - P~ never leaves registers: the accumulator layout of S = Q K^T is the A-operand layout of
 *     P~ V, once each pair of fp32 values is rounded to one 16-bit pair. That rounding, and the
 *     rounding of dS in the backward, are where this kernel's result differs from fp32's.
 *
 * Reference: flashlab/reference/tc.py (same warps, same tile order, same roundings).
 * Layout: Q, O, dO are (B*H, Nq, D); K, V are (B*H, Nk, D), 16-bit, contiguous; L (logsumexp),
 *   Dv, dQacc are fp32. Elements travel as raw 16-bit words (unsigned short), so no fp16/bf16
 *   header is needed: the dtype is the template flag BF16 and appears only in mma and cvt.
 * Launch: forward grid (ceil(Nq / BR), B*H), NW warps, (BR + 2 BC) D 2 bytes of shared memory;
 *   backward: tc_backward_dot (8 rows per 256-thread block), then tc_backward with grid
 *   (ceil(Nk / BC), B*H), NW warps, (2 BC + 4 BR) D 2 + BC BR 2 + 16 BR bytes, then
 *   tc_backward_dq. Tile shapes per head dim: TC_FORWARD / TC_BACKWARD in cuda_kernel_ops.py.
 */
#include "common.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "kernels/tc.cu needs sm_80 or newer (bf16 mma.sync, cp.async); kernel='auto' falls back to fa2"
#endif

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

/* rows [row0, row0 + R) of a (N, W) 16-bit matrix -> shared tile; rows past N become zeros. */
template <int W, int R, int NT>
__device__ __forceinline__ void load_tile(uint4* tile, const u16* src, int row0, int N) {
    constexpr int CH = W / 8;
#pragma unroll
    for (int it = 0; it < (R * CH + NT - 1) / NT; ++it) {
        const int idx = it * NT + threadIdx.x;
        if ((R * CH) % NT != 0 && idx >= R * CH) break;
        const int r = idx / CH, c = idx % CH;
        const bool ok = row0 + r < N;
        const u16* g = src + (size_t)(ok ? row0 + r : 0) * W + c * 8;
        cp_async16(smem_addr(tile + swz<W>(r, c)), g, ok);
    }
}

/* ---------------------------------------------------------------- F2 forward */

/* One thread block per (Q block i, head); NW warps, each owning WM slabs of 16 query rows:
 * warp w holds rows w*16*WM .. w*16*WM + 16*WM - 1 of the block. BR = 16 * WM * NW. */
template <bool BF16, int D, int BC, int NW, int WM>
__global__ void __launch_bounds__(NW * 32)
tc_forward(const u16* __restrict__ Q, const u16* __restrict__ K, const u16* __restrict__ V,
           u16* __restrict__ O, float* __restrict__ L, int Nq, int Nk, float tau, int causal,
           float* tr_m, float* tr_l, float* tr_O, long long* tr_seq) {
    constexpr int BR = 16 * WM * NW, NT = NW * 32, CH = D / 8;
    constexpr int NS = BC / 8;   // n8 tiles of S per slab
    constexpr int NO = D / 8;    // n8 tiles of O~ per slab
    extern __shared__ uint4 smem[];
    uint4* sQ = smem;            // (BR, D)
    uint4* sK = sQ + BR * CH;    // (BC, D)
    uint4* sV = sK + BC * CH;    // (BC, D)

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int bh = blockIdx.y;
    // causal: the longest row blocks start first, so the short ones fill the tail
    const int i = causal ? (int)gridDim.x - 1 - (int)blockIdx.x : (int)blockIdx.x;
    const u16* Qh = Q + head_offset(bh, Nq, D);
    const u16* Kh = K + head_offset(bh, Nk, D);
    const u16* Vh = V + head_offset(bh, Nk, D);
    const int Tr = (Nq + BR - 1) / BR, Tc = (Nk + BC - 1) / BC;
    (void)Tr;
    const int last_row = min(Nq, (i + 1) * BR) - 1;
    const int jend = causal ? min(Tc, last_row / BC + 1) : Tc;      // F2:L3 causal skipping
    const float sl2 = tau * TC_LOG2E;

    load_tile<D, BR, NT>(sQ, Qh, i * BR, Nq);                       // F2:L2
    cp_commit();
    load_tile<D, BC, NT>(sK, Kh, 0, Nk);                            // F2:L4 (K_0)
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
    const int wrow = warp * 16 * WM;  // this warp's first row in the block

    for (int j = 0; j < jend; ++j) {                                 // F2:L3
        __syncthreads();  // every warp is done with V_{j-1}
        load_tile<D, BC, NT>(sV, Vh, j * BC, Nk);                   // F2:L4 (V_j)
        cp_commit();
        cp_wait<1>();     // Q_i and K_j have landed (V_j may still be in flight)
        __syncthreads();  // ... and every thread's copies of them are visible to all warps

        float s[WM][NS][4];                                          // F2:L5  S = Q_i K_j^T
#pragma unroll
        for (int a = 0; a < WM; ++a)
#pragma unroll
            for (int n = 0; n < NS; ++n) s[a][n][0] = s[a][n][1] = s[a][n][2] = s[a][n][3] = 0.0f;
        // At D = 128 a fully unrolled k loop makes the compiler hoist K fragments' addresses
        // into registers (246 of them at BC = 128, spills at WM = 2): there the loop stays
        // rolled. At D <= 64 unrolled measured faster (docs/PERFORMANCE.md, tc v2).
#pragma unroll (D >= 128 ? 1 : D / 16)
        for (int kk = 0; kk < D / 16; ++kk) {
            u32 qa[WM][4];
#pragma unroll
            for (int a = 0; a < WM; ++a)
                ldsm4(qa[a], smem_addr(sQ + swz<D>(wrow + a * 16 + (lane & 15), kk * 2 + (lane >> 4))));
#pragma unroll
            for (int nb = 0; nb < BC / 16; ++nb) {
                u32 kb[4];
                ldsm4(kb, smem_addr(sK + swz<D>(nb * 16 + (lane & 7) + ((lane >> 4) << 3),
                                                kk * 2 + ((lane >> 3) & 1))));
#pragma unroll
                for (int a = 0; a < WM; ++a) {
                    mma16816<BF16>(s[a][2 * nb], qa[a], kb[0], kb[1]);
                    mma16816<BF16>(s[a][2 * nb + 1], qa[a], kb[2], kb[3]);
                }
            }
        }
        __syncthreads();  // every warp is done with K_j
        if (j + 1 < jend) load_tile<D, BC, NT>(sK, Kh, (j + 1) * BC, Nk);  // K_{j+1}, during F2:L6-L7
        cp_commit();

        // scale to base-2 units; mask keys past Nk and, on tiles the diagonal crosses, keys after
        // the query (F2:L5)
        const bool edge = (j + 1) * BC > Nk || (causal && (j + 1) * BC - 1 > i * BR);
#pragma unroll
        for (int a = 0; a < WM; ++a)
#pragma unroll
            for (int n = 0; n < NS; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    float x = s[a][n][e] * sl2;
                    if (edge) {
                        const int r = i * BR + wrow + a * 16 + g + (e >> 1) * 8;
                        const int c = j * BC + n * 8 + 2 * t + (e & 1);
                        if (c >= Nk || masked(causal, r, c)) x = FL_NEG_INF;
                    }
                    s[a][n][e] = x;
                }

        // F2:L6  m_new = max(m, rowmax S); P~ = exp(S - m_new); l = e^(m - m_new) l + rowsum P~
        // F2:L7  O~ = e^(m - m_new) O~  (+ P~ V_j below)
        // P~ is rounded to 16 bits as soon as each half-row is done: pa holds it in the A-operand
        // layout of P~ V (the S accumulator layout, two values per register), so the fp32 S
        // registers are free before the P~ V product starts
        u32 pa[WM][BC / 16][4];
#pragma unroll
        for (int a = 0; a < WM; ++a)
#pragma unroll
            for (int h = 0; h < 2; ++h) {  // rows g and g + 8 of the slab
                float mx = m[a][h];
#pragma unroll
                for (int n = 0; n < NS; ++n) mx = fmaxf(mx, fmaxf(s[a][n][2 * h], s[a][n][2 * h + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));  // the 4 lanes of a row
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float base = safe_max(mx);
                const float alpha = exp2_fast(m[a][h] - base);
                float sum = 0.0f;
#pragma unroll
                for (int n = 0; n < NS; ++n) {
                    s[a][n][2 * h] = exp2_fast(s[a][n][2 * h] - base);
                    s[a][n][2 * h + 1] = exp2_fast(s[a][n][2 * h + 1] - base);
                    sum += s[a][n][2 * h] + s[a][n][2 * h + 1];
                }
                l[a][h] = alpha * l[a][h] + sum;  // this lane's columns only; summed over the row at F2:L9
                m[a][h] = mx;
#pragma unroll
                for (int n = 0; n < NO; ++n) {
                    o[a][n][2 * h] *= alpha;
                    o[a][n][2 * h + 1] *= alpha;
                }
#pragma unroll
                for (int kk = 0; kk < BC / 16; ++kk) {  // rows g (h = 0) or g + 8 (h = 1)
                    pa[a][kk][h] = pack2<BF16>(s[a][2 * kk][2 * h], s[a][2 * kk][2 * h + 1]);
                    pa[a][kk][2 + h] = pack2<BF16>(s[a][2 * kk + 1][2 * h], s[a][2 * kk + 1][2 * h + 1]);
                }
            }

        cp_wait<1>();     // V_j has landed (K_{j+1} may still be in flight)
        __syncthreads();  // ... for every thread's copies
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk) {                       // F2:L7  O~ += P~ V_j
#pragma unroll
            for (int nb = 0; nb < D / 16; ++nb) {
                u32 vb[4];
                ldsm4t(vb, smem_addr(sV + swz<D>(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                                 nb * 2 + (lane >> 4))));
#pragma unroll
                for (int a = 0; a < WM; ++a) {
                    mma16816<BF16>(o[a][2 * nb], pa[a][kk], vb[0], vb[1]);
                    mma16816<BF16>(o[a][2 * nb + 1], pa[a][kk], vb[2], vb[3]);
                }
            }
        }
#ifdef FLASHLAB_TRACE
        // after step (i, j): m in F2's units (S = tau Q K^T), l summed over the row, O~ unnormalised
#pragma unroll
        for (int a = 0; a < WM; ++a)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int rl = wrow + a * 16 + g + 8 * h;
                float lsum = l[a][h];
                lsum += __shfl_xor_sync(0xffffffffu, lsum, 1);
                lsum += __shfl_xor_sync(0xffffffffu, lsum, 2);
                if (i * BR + rl >= Nq) continue;
                const size_t t1 = trace_offset(bh, i, j, Tr, Tc, BR, 1), tD = trace_offset(bh, i, j, Tr, Tc, BR, D);
                if (t == 0) {
                    tr_m[t1 + rl] = m[a][h] * TC_LN2;
                    tr_l[t1 + rl] = lsum;
                }
#pragma unroll
                for (int n = 0; n < NO; ++n) {
                    tr_O[tD + (size_t)rl * D + n * 8 + 2 * t] = o[a][n][2 * h];
                    tr_O[tD + (size_t)rl * D + n * 8 + 2 * t + 1] = o[a][n][2 * h + 1];
                }
            }
        if (threadIdx.x == 0) tr_seq[((size_t)bh * Tr + i) * Tc + j] = j;
#endif
    }
    cp_wait<0>();

    // F2:L9  O_i = O~ / l, L_i = m + log l (natural units), one write per row
    u16* Oh = O + head_offset(bh, Nq, D);
#pragma unroll
    for (int a = 0; a < WM; ++a)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            float lsum = l[a][h];
            lsum += __shfl_xor_sync(0xffffffffu, lsum, 1);
            lsum += __shfl_xor_sync(0xffffffffu, lsum, 2);
            const int r = i * BR + wrow + a * 16 + g + 8 * h;
            if (r >= Nq) continue;
            const float inv = 1.0f / lsum;
#pragma unroll
            for (int n = 0; n < NO; ++n)
                *reinterpret_cast<u32*>(Oh + (size_t)r * D + n * 8 + 2 * t) =
                    pack2<BF16>(o[a][n][2 * h] * inv, o[a][n][2 * h + 1] * inv);
            if (t == 0) L[head_offset(bh, Nq, 1) + r] = (safe_max(m[a][h]) + log2f(lsum)) * TC_LN2;
        }
}

/* ---------------------------------------------------------------- G2 backward */

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

/* One thread block per (K/V block j, head); NW warps, warp w owning key rows w*16 .. w*16 + 15
 * (BC = 16 * NW). Each step i works on S^T = K_j Q_i^T, so a warp's accumulators are rows of
 * dK~ and dV~ and P^T, dS^T are A operands straight from registers. dQ_i's term needs a sum over
 * all keys: dS^T goes through shared memory and the warps split dQ_i's (BR x D) tile.
 * Q_i, dO_i, L_i, D_i are double-buffered: step i's copy of stage i+1 runs during all of step i. */
template <bool BF16, int D, int BR, int NW>
__global__ void __launch_bounds__(NW * 32)
tc_backward(const u16* __restrict__ Q, const u16* __restrict__ K, const u16* __restrict__ V,
            const u16* __restrict__ dO, const float* __restrict__ L, const float* __restrict__ Dv,
            float* __restrict__ dQacc, u16* __restrict__ dK, u16* __restrict__ dV,
            int Nq, int Nk, float tau, int causal,
            float* tr_dQ, float* tr_dK, float* tr_dV, long long* tr_seq) {
    constexpr int BC = 16 * NW, NT = NW * 32, CH = D / 8;
    constexpr int NQ = BR / 8;              // n8 tiles of S^T (query columns) per warp
    constexpr int ND = D / 8;               // n8 tiles of dK~, dV~ per warp
    constexpr int QRG = BR / 16;            // dQ tile: row groups of 16 ...
    constexpr int QCG = NW / QRG;           // ... times column groups
    constexpr int QC = D / QCG;             // columns of dQ per warp
    static_assert(NW % QRG == 0 && QC % 16 == 0, "dQ tile does not split evenly over the warps");
    extern __shared__ uint4 smem[];
    uint4* sK = smem;                        // (BC, D)
    uint4* sV = sK + BC * CH;                // (BC, D)
    uint4* sdS = sV + BC * CH;               // (BC, BR): dS^T, 16-bit
    uint4* sQ2 = sdS + BC * (BR / 8);        // 2 stages of Q_i (BR, D) then dO_i (BR, D)
    float* sLD2 = reinterpret_cast<float*>(sQ2 + 4 * BR * CH);  // 2 stages of L_i (BR), D_i (BR)

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int j = blockIdx.x, bh = blockIdx.y;
    const u16* Qh = Q + head_offset(bh, Nq, D);
    const u16* dOh = dO + head_offset(bh, Nq, D);
    const float* Lh = L + head_offset(bh, Nq, 1);
    const float* Dh = Dv + head_offset(bh, Nq, 1);
    float* dQh = dQacc + head_offset(bh, Nq, D);
    const int Tr = (Nq + BR - 1) / BR, Tc = (Nk + BC - 1) / BC;
    (void)Tc;
    const float sl2 = tau * TC_LOG2E;
    const int wkey = warp * 16;               // this warp's first key row in the block
    const int i0 = causal ? min(Tr, (j * BC) / BR) : 0;   // G2:L3 causal skipping

    load_tile<D, BC, NT>(sK, K + head_offset(bh, Nk, D), j * BC, Nk);       // G2:L2
    load_tile<D, BC, NT>(sV, V + head_offset(bh, Nk, D), j * BC, Nk);
    auto load_i = [&](int i) {                                              // G2:L4
        const int st = (i - i0) & 1;
        uint4* q = sQ2 + st * 2 * BR * CH;
        float* ld = sLD2 + st * 2 * BR;
        load_tile<D, BR, NT>(q, Qh, i * BR, Nq);
        load_tile<D, BR, NT>(q + BR * CH, dOh, i * BR, Nq);
        for (int x = threadIdx.x; x < BR; x += NT) {
            const bool ok = i * BR + x < Nq;
            cp_async4(smem_addr(ld + x), Lh + (ok ? i * BR + x : 0), ok);
            cp_async4(smem_addr(ld + BR + x), Dh + (ok ? i * BR + x : 0), ok);
        }
    };
    if (i0 < Tr) load_i(i0);       // with K_j, V_j: one commit group
    cp_commit();
    if (i0 + 1 < Tr) load_i(i0 + 1);
    cp_commit();                   // (possibly empty: one group per stage keeps the count simple)

    float dk[ND][4], dv[ND][4];
#pragma unroll
    for (int n = 0; n < ND; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) dk[n][e] = dv[n][e] = 0.0f;

    for (int i = i0; i < Tr; ++i) {                                          // G2:L3
        const int st = (i - i0) & 1;
        const uint4* sQ = sQ2 + st * 2 * BR * CH;
        const uint4* sdO = sQ + BR * CH;
        const float* sL = sLD2 + st * 2 * BR;
        const float* sD = sL + BR;
        cp_wait<1>();     // stage i's group has landed (stage i+1's may still be in flight)
        __syncthreads();  // ... for every thread's copies; dS^T of step i-1 is consumed

        // G2:L5  S^T = K_j Q_i^T (this warp's 16 keys x BR queries)
        float s[NQ][4];
#pragma unroll
        for (int n = 0; n < NQ; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            u32 ka[4];
            ldsm4(ka, smem_addr(sK + swz<D>(wkey + (lane & 15), kk * 2 + (lane >> 4))));
#pragma unroll
            for (int nb = 0; nb < BR / 16; ++nb) {
                u32 qb[4];
                ldsm4(qb, smem_addr(sQ + swz<D>(nb * 16 + (lane & 7) + ((lane >> 4) << 3),
                                                kk * 2 + ((lane >> 3) & 1))));
                mma16816<BF16>(s[2 * nb], ka, qb[0], qb[1]);
                mma16816<BF16>(s[2 * nb + 1], ka, qb[2], qb[3]);
            }
        }
        // P^T = exp(S^T - L) (mask: queries past Nq, keys past Nk, causal keys after the query)
        const bool edge = (i + 1) * BR > Nq || (j + 1) * BC > Nk || (causal && (j + 1) * BC - 1 > i * BR);
        float lq[NQ][2];  // L of this lane's query columns, two adjacent per 8-byte read
#pragma unroll
        for (int n = 0; n < NQ; ++n) {
            const float2 x = *reinterpret_cast<const float2*>(sL + n * 8 + 2 * t);
            lq[n][0] = x.x;
            lq[n][1] = x.y;
        }
#pragma unroll
        for (int n = 0; n < NQ; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int ql = n * 8 + 2 * t + (e & 1);
                float p = exp2_fast(s[n][e] * sl2 - lq[n][e & 1] * TC_LOG2E);
                if (edge) {
                    const int c = j * BC + wkey + g + (e >> 1) * 8, r = i * BR + ql;
                    if (r >= Nq || c >= Nk || masked(causal, r, c)) p = 0.0f;
                }
                s[n][e] = p;
            }

        // G2:L6  dP^T = V_j dO_i^T
        float dp[NQ][4];
#pragma unroll
        for (int n = 0; n < NQ; ++n) dp[n][0] = dp[n][1] = dp[n][2] = dp[n][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            u32 va[4];
            ldsm4(va, smem_addr(sV + swz<D>(wkey + (lane & 15), kk * 2 + (lane >> 4))));
#pragma unroll
            for (int nb = 0; nb < BR / 16; ++nb) {
                u32 ob[4];
                ldsm4(ob, smem_addr(sdO + swz<D>(nb * 16 + (lane & 7) + ((lane >> 4) << 3),
                                                 kk * 2 + ((lane >> 3) & 1))));
                mma16816<BF16>(dp[2 * nb], va, ob[0], ob[1]);
                mma16816<BF16>(dp[2 * nb + 1], va, ob[2], ob[3]);
            }
        }
        // G2:L6  dV~ += P^T dO_i  (P^T rounded to 16 bits, from registers)
#pragma unroll
        for (int kk = 0; kk < BR / 16; ++kk) {
            u32 pa[4] = {pack2<BF16>(s[2 * kk][0], s[2 * kk][1]), pack2<BF16>(s[2 * kk][2], s[2 * kk][3]),
                         pack2<BF16>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                         pack2<BF16>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int nb = 0; nb < D / 16; ++nb) {
                u32 ob[4];
                ldsm4t(ob, smem_addr(sdO + swz<D>(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                                  nb * 2 + (lane >> 4))));
                mma16816<BF16>(dv[2 * nb], pa, ob[0], ob[1]);
                mma16816<BF16>(dv[2 * nb + 1], pa, ob[2], ob[3]);
            }
        }
        // G2:L6  dS^T = P^T * (dP^T - D_i), kept in s; rounded to 16 bits into shared memory for dQ
#pragma unroll
        for (int n = 0; n < NQ; ++n) {
            const float2 dd = *reinterpret_cast<const float2*>(sD + n * 8 + 2 * t);
            s[n][0] *= dp[n][0] - dd.x;
            s[n][1] *= dp[n][1] - dd.y;
            s[n][2] *= dp[n][2] - dd.x;
            s[n][3] *= dp[n][3] - dd.y;
        }
#pragma unroll
        for (int n = 0; n < NQ; ++n)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int kr = wkey + g + 8 * h;
                u32* dst = reinterpret_cast<u32*>(sdS + swz<BR>(kr, n)) + t;
                *dst = pack2<BF16>(s[n][2 * h], s[n][2 * h + 1]);
            }
        // G2:L8  dK~ += dS^T Q_i  (tau applied at G2:L10)
#pragma unroll
        for (int kk = 0; kk < BR / 16; ++kk) {
            u32 sa[4] = {pack2<BF16>(s[2 * kk][0], s[2 * kk][1]), pack2<BF16>(s[2 * kk][2], s[2 * kk][3]),
                         pack2<BF16>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                         pack2<BF16>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int nb = 0; nb < D / 16; ++nb) {
                u32 qb[4];
                ldsm4t(qb, smem_addr(sQ + swz<D>(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                                 nb * 2 + (lane >> 4))));
                mma16816<BF16>(dk[2 * nb], sa, qb[0], qb[1]);
                mma16816<BF16>(dk[2 * nb + 1], sa, qb[2], qb[3]);
            }
        }
        __syncthreads();  // dS^T is complete; every warp is done with stage i's Q, dO, L, D
        if (i + 2 < Tr) load_i(i + 2);   // into stage i's buffers, during the dQ term and step i+1
        cp_commit();

        // G2:L7  dQ_i += dS K_j: warp (rg, cg) computes rows rg*16.., columns cg*QC.. of the term
        {
            const int rg = warp % QRG, cg = warp / QRG;
            float dq[QC / 8][4];
#pragma unroll
            for (int n = 0; n < QC / 8; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < BC / 16; ++kk) {
                u32 da[4];  // A = dS (queries x keys), stored transposed
                ldsm4t(da, smem_addr(sdS + swz<BR>(kk * 16 + (lane & 7) + (lane >> 4) * 8,
                                                   rg * 2 + ((lane >> 3) & 1))));
#pragma unroll
                for (int nb = 0; nb < QC / 16; ++nb) {
                    u32 kb[4];
                    ldsm4t(kb, smem_addr(sK + swz<D>(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                                     (cg * QC) / 8 + nb * 2 + (lane >> 4))));
                    mma16816<BF16>(dq[2 * nb], da, kb[0], kb[1]);
                    mma16816<BF16>(dq[2 * nb + 1], da, kb[2], kb[3]);
                }
            }
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int rl = rg * 16 + g + 8 * h, r = i * BR + rl;
                if (r >= Nq) continue;
#pragma unroll
                for (int n = 0; n < QC / 8; ++n) {
                    const int c = cg * QC + n * 8 + 2 * t;
                    red_add2(dQh + (size_t)r * D + c, dq[n][2 * h], dq[n][2 * h + 1]);
                    TRACE(tr_dQ[trace_offset(bh, i, j, Tr, Tc, BR, D) + (size_t)rl * D + c] = tau * dq[n][2 * h]);
                    TRACE(tr_dQ[trace_offset(bh, i, j, Tr, Tc, BR, D) + (size_t)rl * D + c + 1] = tau * dq[n][2 * h + 1]);
                }
            }
        }
#ifdef FLASHLAB_TRACE
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int kl = wkey + g + 8 * h;
            if (j * BC + kl >= Nk) continue;
            const size_t tD = trace_offset(bh, i, j, Tr, Tc, BC, D) + (size_t)kl * D;
#pragma unroll
            for (int n = 0; n < ND; ++n) {
                tr_dK[tD + n * 8 + 2 * t] = tau * dk[n][2 * h];
                tr_dK[tD + n * 8 + 2 * t + 1] = tau * dk[n][2 * h + 1];
                tr_dV[tD + n * 8 + 2 * t] = dv[n][2 * h];
                tr_dV[tD + n * 8 + 2 * t + 1] = dv[n][2 * h + 1];
            }
        }
        if (threadIdx.x == 0) tr_seq[((size_t)bh * Tr + i) * Tc + j] = i - i0;
#endif
    }
    cp_wait<0>();

    // G2:L10  write dK_j = tau dK~, dV_j = dV~ (keys with no visible query get zeros)
    u16* dKh = dK + head_offset(bh, Nk, D);
    u16* dVh = dV + head_offset(bh, Nk, D);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int c = j * BC + wkey + g + 8 * h;
        if (c >= Nk) continue;
#pragma unroll
        for (int n = 0; n < ND; ++n) {
            *reinterpret_cast<u32*>(dKh + (size_t)c * D + n * 8 + 2 * t) =
                pack2<BF16>(tau * dk[n][2 * h], tau * dk[n][2 * h + 1]);
            *reinterpret_cast<u32*>(dVh + (size_t)c * D + n * 8 + 2 * t) =
                pack2<BF16>(dv[n][2 * h], dv[n][2 * h + 1]);
        }
    }
}
