/* tc_common.cuh: what the two tensor-core sources share, included by both kernels/tc.cu (mma.sync,
 * sm_80 and newer) and kernels/tc90.cu (wgmma, sm_90a), and nothing else. The two files differ in
 * who multiplies (a warp's mma.sync from ldmatrix fragments, a warpgroup's wgmma from
 * shared-memory descriptors) and in their shared-memory tiles: tc.cu keeps its swizzle, ldmatrix
 * and mma.sync wrappers and tile loader, tc90.cu its wgmma panels and descriptors. The work around
 * the products, on accumulators of one layout (the 16-row slab below), is written once here:
 *
 *   - PTX wrappers both use (cp.async, 16-bit conversions, exp2, the dQ reduction);
 *   - the causal block order, and each kernel's thread-block setup (F2Block, G2Block: the head's
 *     slices of the inputs, the tile counts, F2:L3's causal skipping), in tc_blocks.cuh;
 *   - one-slab pieces of F2: the scale and mask of S on an edge tile (F2:L5), the online softmax
 *     of a row (F2:L6), the packing of P~ into A operands, the rescale of O~ (F2:L7), the trace
 *     stores and the epilogue (F2:L9);
 *   - one-slab pieces of G2: the L_i, D_i stage loader and the first stages (G2:L4), the dQ
 *     reduction (G2:L7), the dK~, dV~ trace stores and the epilogue (G2:L10);
 *   - the backward's helper kernels: tc_backward_dot (G2:L0, backward_dot.cuh) and tc_backward_dq;
 *   - an attention variant's pieces (tc_mods.cuh: TcMod, the per-element mask and score_mod),
 *     empty in the plain build.
 *
 * Each kernel keeps its products and the few lines whose placement decides the generated code
 * (block_order, G2:L3's i0, the edge tests and the interior tiles' scale, the P and dS loop of
 * G2:L5-L6). Every helper is __forceinline__: the kernels compile to the registers and
 * instructions they had with these lines written out in place (ptxas and cuobjdump, compared
 * instance by instance when they moved here).
 */
#pragma once
#include "common.cuh"
#include "backward_dot.cuh"

typedef unsigned short u16;
typedef unsigned int u32;

#define TC_LOG2E 1.4426950408889634f
#define TC_LN2 0.6931471805599453f

/* Turing (sm_75: T4): no cp.async, no bf16, no f16x2 conversion; tc.cu's float16 build there
 * copies through registers and splits each m16n8k16 product in two m16n8k8 (the wrappers below
 * and tc.cu's mma16816). The registry's variant "turing" (compute_75 PTX, float16). */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define TC_SM75 1
#else
#define TC_SM75 0
#endif

/* ---------------------------------------------------------------- PTX wrappers */

__device__ __forceinline__ u32 smem_addr(const void* p) {
    return static_cast<u32>(__cvta_generic_to_shared(p));
}

/* 16 bytes HBM -> shared without a register stop; pred false writes 16 zero bytes instead.
 * (sm_75: through a register, the copy done when the store is; commit and wait are empty, and
 * the kernels' barrier after the wait publishes the tile as before.) */
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, bool pred) {
#if TC_SM75
    uint4 v = pred ? *reinterpret_cast<const uint4*>(src) : make_uint4(0u, 0u, 0u, 0u);
    asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n"
                 :: "r"(dst), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w) : "memory");
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(dst), "l"(src), "r"(pred ? 16 : 0));
#endif
}
__device__ __forceinline__ void cp_async4(u32 dst, const void* src, bool pred) {
#if TC_SM75
    const u32 v = pred ? *reinterpret_cast<const u32*>(src) : 0u;
    asm volatile("st.shared.u32 [%0], %1;\n" :: "r"(dst), "r"(v) : "memory");
#else
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n"
                 :: "r"(dst), "l"(src), "r"(pred ? 4 : 0));
#endif
}
__device__ __forceinline__ void cp_commit() {
#if !TC_SM75
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
__device__ __forceinline__ void cp_wait() {
#if !TC_SM75
    asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory");
#endif
}

/* The copy passes of a tile loader (tc.cu's load_tile, tc90.cu's load_panels): this thread's
 * rows k RS, k < R / RS, of a 16-bit matrix whose rows are `stride` elements apart; g points at
 * its first row's 16-byte chunk, and pass k lands at shared address dst + k dpass. Rows from
 * `left` on do not exist and become zeros. The global address moves RS rows a pass by one add:
 * multiplying k RS by the stride in each pass cost registers and 7-19% more instructions. */
template <int R, int RS>
__device__ __forceinline__ void copy_passes(u32 dst, u32 dpass, const u16* src, const u16* g,
                                            int stride, int left) {
    const long long step = (long long)RS * stride;
#pragma unroll
    for (int k = 0; k < R / RS; ++k) {
        const bool ok = k * RS < left;
        cp_async16(dst + (u32)k * dpass, ok ? g : src, ok);
        g += step;
    }
}

/* Two fp32 -> one register of two 16-bit values (round to nearest even); lo in the low half. */
template <bool BF16>
__device__ __forceinline__ u32 pack2(float lo, float hi) {
    u32 r;
#if TC_SM75
    static_assert(!BF16, "bfloat16 needs sm_80: the sm_75 build of the tensor-core kernels is float16 only");
    unsigned short l, h;
    asm("cvt.rn.f16.f32 %0, %1;\n" : "=h"(l) : "f"(lo));
    asm("cvt.rn.f16.f32 %0, %1;\n" : "=h"(h) : "f"(hi));
    r = (u32)l | ((u32)h << 16);
#else
    if (BF16) asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    else      asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
#endif
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

#include "tc_blocks.cuh"  // the causal block order, Rows, F2Block and G2Block

/* ---------------------------------------------------------------- one 16-row slab
 *
 * Both sources leave every accumulator (S, O~; S^T, dP^T, dQ, dK~, dV~) in one layout, the
 * m16n8 C layout of mma.sync: a warp's 16-row slab of a (16 x 8 N) product is N tiles of 8
 * columns, Slab<N> = float[N][4]. Lane 4 g + t holds, of tile n, row g (x[n][0], x[n][1]) and
 * row g + 8 (x[n][2], x[n][3]) at columns 8 n + 2 t and 8 n + 2 t + 1: row half h is x[n][2 h],
 * x[n][2 h + 1]. tc.cu's warp holds slabs x[a] (16 rows apart); a wgmma accumulator of tc90.cu is
 * one slab per warp as a flat array x[4 n + e], which tc90.cu's frag() views as a Slab. The
 * helpers below take one slab and the lane's g and t (computed once by the kernel); the kernels
 * call them for each slab they hold.
 */
template <int N>
using Slab = float[N][4];

/* F2:L5 on a slab of S whose rows start at query row0 and columns at key k0, in a tile that needs
 * the mask: S * sl2 (base-2 units), -inf for keys past Nk and, causal, keys after the query. (An
 * interior tile only scales: each kernel writes that loop itself.) */
template <int N>
__device__ __forceinline__ void f2_mask(Slab<N>& s, int row0, int k0, int Nk, int causal,
                                        float sl2, int g, int t) {
#pragma unroll
    for (int n = 0; n < N; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int r = row0 + g + (e >> 1) * 8;
            const int c = k0 + n * 8 + 2 * t + (e & 1);
            s[n][e] = (c >= Nk || masked(causal, r, c)) ? FL_NEG_INF : s[n][e] * sl2;
        }
}

#include "tc_mods.cuh"  // a variant's mask and score_mod (TcMod), empty in the plain build

/* A variant's TcMod (tc_mods.cuh) for F2's thread block, whose key tiles it narrows to the
 * block mask's range (F2:L3 for any mask); the plain build's does nothing. */
template <int D, int BR, int BC>
__device__ __forceinline__ TcMod f2_variant(F2Block<D, BR, BC>& blk, const TcMod& md) {
    md.visit(blk.i, blk.j0, blk.jend);
    return md;
}


/* ---------------------------------------------------------------- F2 pieces */

/* F2:L6 on row half h of a slab of S (base-2 units), with that row's m and l:
 * m_new = max(m, rowmax S) over the row's 4 lanes, P~ = 2^(S - m_new) in place of S,
 * l = 2^(m - m_new) l + rowsum P~ (this lane's columns; summed over the row at F2:L9), m = m_new.
 * Returns alpha = 2^(m - m_new), the factor of F2:L7's rescale of O~. */
template <int N>
__device__ __forceinline__ float f2_softmax_row(Slab<N>& s, int h, float& m, float& l) {
    float mx = m;
#pragma unroll
    for (int n = 0; n < N; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * h], s[n][2 * h + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));  // the 4 lanes of a row
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float base = safe_max(mx);
    const float alpha = exp2_fast(m - base);
    float sum = 0.0f;
#pragma unroll
    for (int n = 0; n < N; ++n) {
        s[n][2 * h] = exp2_fast(s[n][2 * h] - base);
        s[n][2 * h + 1] = exp2_fast(s[n][2 * h + 1] - base);
        sum += s[n][2 * h] + s[n][2 * h + 1];
    }
    l = alpha * l + sum;
    m = mx;
    return alpha;
}

/* Row half h of P~ (a slab, N tiles of 8 keys) rounded to 16 bits into the A operands of P~ V
 * (N / 2 steps of 16 keys): the S accumulator layout is the A layout, two values per register. */
template <bool BF16, int N>
__device__ __forceinline__ void f2_pack_row(const Slab<N>& s, int h, u32 (&pa)[N / 2][4]) {
#pragma unroll
    for (int kk = 0; kk < N / 2; ++kk) {  // rows g (h = 0) or g + 8 (h = 1)
        pa[kk][h] = pack2<BF16>(s[2 * kk][2 * h], s[2 * kk][2 * h + 1]);
        pa[kk][2 + h] = pack2<BF16>(s[2 * kk + 1][2 * h], s[2 * kk + 1][2 * h + 1]);
    }
}

/* F2:L7's O~ = e^(m - m_new) O~ on row half h of a slab of O~. */
template <int N>
__device__ __forceinline__ void f2_rescale_row(Slab<N>& o, int h, float alpha) {
#pragma unroll
    for (int n = 0; n < N; ++n) {
        o[n][2 * h] *= alpha;
        o[n][2 * h + 1] *= alpha;
    }
}

/* The trace of step (i, j) for a slab whose rows start at row rl0 of the block: m in F2's units
 * (S = tau Q K^T), l summed over the row, O~ unnormalised (FLASHLAB_TRACE builds). */
template <int D, int BR, int BC>
__device__ __forceinline__ void f2_trace(const F2Block<D, BR, BC>& blk, int j, int rl0, int Nq,
                                         const Slab<D / 8>& o, const float (&m)[2],
                                         const float (&l)[2], float* tr_m, float* tr_l,
                                         float* tr_O, int g, int t) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int rl = rl0 + g + 8 * h;
        float lsum = l[h];
        lsum += __shfl_xor_sync(0xffffffffu, lsum, 1);
        lsum += __shfl_xor_sync(0xffffffffu, lsum, 2);
        if (blk.i * BR + rl >= Nq) continue;
        const size_t t1 = trace_offset(blk.bh, blk.i, j, blk.Tr, blk.Tc, BR, 1),
                     tD = trace_offset(blk.bh, blk.i, j, blk.Tr, blk.Tc, BR, D);
        if (t == 0) {
            tr_m[t1 + rl] = m[h] * TC_LN2;
            tr_l[t1 + rl] = lsum;
        }
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            tr_O[tD + (size_t)rl * D + n * 8 + 2 * t] = o[n][2 * h];
            tr_O[tD + (size_t)rl * D + n * 8 + 2 * t + 1] = o[n][2 * h + 1];
        }
    }
}

/* F2:L9 for a slab whose rows start at query row0: O = O~ / l rounded to 16 bits, L = m + log l
 * in natural units; Oh, Lh are the head's O (Nq, D; rows on apart) and L (Nq). One write per row. */
template <bool BF16, int D>
__device__ __forceinline__ void f2_write(u16* Oh, int on, float* Lh, int row0, int Nq, const Slab<D / 8>& o,
                                         const float (&m)[2], const float (&l)[2], int g, int t) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float lsum = l[h];
        lsum += __shfl_xor_sync(0xffffffffu, lsum, 1);
        lsum += __shfl_xor_sync(0xffffffffu, lsum, 2);
        const int r = row0 + g + 8 * h;
        if (r >= Nq) continue;
        const float inv = TC_ROW_INV(lsum);  // a variant's row with no visible key: O = 0
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
            *reinterpret_cast<u32*>(Oh + (size_t)r * on + n * 8 + 2 * t) =
                pack2<BF16>(o[n][2 * h] * inv, o[n][2 * h + 1] * inv);
        if (t == 0) Lh[r] = TC_ROW_LSE(m[h], lsum);  // ... and L = -inf
    }
}

/* ---------------------------------------------------------------- G2 pieces */

/* G2:L4's L_i and D_i (BR floats each, rows past Nq 0) -> shared ld[0, BR) and ld[BR, 2 BR). */
template <int BR, int NT>
__device__ __forceinline__ void g2_load_ld(float* ld, const float* Lh, const float* Dh, int i,
                                           int Nq) {
    for (int x = threadIdx.x; x < BR; x += NT) {
        const bool ok = i * BR + x < Nq;
        cp_async4(smem_addr(ld + x), Lh + (ok ? i * BR + x : 0), ok);
        cp_async4(smem_addr(ld + BR + x), Dh + (ok ? i * BR + x : 0), ok);
    }
}

/* G2:L4 before the loop: stage i0 (with K_j, V_j: one commit group) and, with QS = 3 stages,
 * stage i0 + 1; load_i(i) issues the copies of step i. */
template <int QS, class LoadI>
__device__ __forceinline__ void g2_first_stages(const LoadI& load_i, int i0, int Tr) {
    if (i0 < Tr) load_i(i0);       // with K_j, V_j: one commit group
    cp_commit();
    if (QS == 3) {
        if (i0 + 1 < Tr) load_i(i0 + 1);
        cp_commit();               // (possibly empty: one group per stage keeps the count simple)
    }
}

/* G2:L7 for a slab of step i's dQ term whose rows start at row rl0 of the query block and whose
 * columns start at c0: added into the fp32 dQ accumulator (tau is applied by tc_backward_dq);
 * the trace keeps tau times the term. */
template <int D, int BR, int BC, int N>
__device__ __forceinline__ void g2_add_dq(const G2Block<D, BR, BC>& blk, int i, int rl0, int c0,
                                          int Nq, float tau, const Slab<N>& dq, float* tr_dQ, int g,
                                          int t) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int rl = rl0 + g + 8 * h, r = i * BR + rl;
        if (r >= Nq) continue;
#pragma unroll
        for (int n = 0; n < N; ++n) {
            const int c = c0 + n * 8 + 2 * t;
            red_add2(blk.dQh + (size_t)r * D + c, dq[n][2 * h], dq[n][2 * h + 1]);
            TRACE(tr_dQ[trace_offset(blk.bh, i, blk.j, blk.Tr, blk.Tc, BR, D) + (size_t)rl * D + c] = tau * dq[n][2 * h]);
            TRACE(tr_dQ[trace_offset(blk.bh, i, blk.j, blk.Tr, blk.Tc, BR, D) + (size_t)rl * D + c + 1] = tau * dq[n][2 * h + 1]);
        }
    }
}

/* The trace of step (i, j) for a slab of dK~, dV~ whose rows start at key kl0 of the block and
 * whose columns start at c0: tau dK~ and dV~ (FLASHLAB_TRACE builds). */
template <int D, int BR, int BC, int N>
__device__ __forceinline__ void g2_trace_kv(const G2Block<D, BR, BC>& blk, int i, int kl0, int c0,
                                            int Nk, float tau, const Slab<N>& dk, const Slab<N>& dv,
                                            float* tr_dK, float* tr_dV, int g, int t) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int kl = kl0 + g + 8 * h;
        if (blk.j * BC + kl >= Nk) continue;
        const size_t tD = trace_offset(blk.bh, i, blk.j, blk.Tr, blk.Tc, BC, D) + (size_t)kl * D;
#pragma unroll
        for (int n = 0; n < N; ++n) {
            const int c = c0 + n * 8 + 2 * t;
            tr_dK[tD + c] = tau * dk[n][2 * h];
            tr_dK[tD + c + 1] = tau * dk[n][2 * h + 1];
            tr_dV[tD + c] = dv[n][2 * h];
            tr_dV[tD + c + 1] = dv[n][2 * h + 1];
        }
    }
}

/* G2:L10 for a slab of dK~, dV~ whose rows start at key c0 and columns at x0: dK = tau dK~,
 * dV = dV~ rounded to 16 bits into the head's dK, dV, whose rows are kn and vn elements apart
 * (keys with no visible query get zeros). */
template <bool BF16, int N>
__device__ __forceinline__ void g2_write_kv(u16* dKh, u16* dVh, int kn, int vn, int c0, int x0,
                                            int Nk, float tau, const Slab<N>& dk,
                                            const Slab<N>& dv, int g, int t) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int c = c0 + g + 8 * h;
        if (c >= Nk) continue;
#pragma unroll
        for (int n = 0; n < N; ++n) {
            const int x = x0 + n * 8 + 2 * t;
            *reinterpret_cast<u32*>(dKh + (size_t)c * kn + x) =
                pack2<BF16>(tau * dk[n][2 * h], tau * dk[n][2 * h + 1]);
            *reinterpret_cast<u32*>(dVh + (size_t)c * vn + x) = pack2<BF16>(dv[n][2 * h], dv[n][2 * h + 1]);
        }
    }
}

/* ---------------------------------------------------------------- G2 helper kernels */

/* 16-bit rows for backward_dot (backward_dot.cuh). */
template <bool BF16>
struct Half16Elem {
    typedef u16 T;
    static __device__ __forceinline__ float f32(u16 x) { return to_f32<BF16>(x); }
};

/* G2:L0  Dv = rowsum(dO * O) in fp32, one warp per row; the same pass zeroes that row of the fp32
 * dQ accumulator that G2:L7's atomic adds collect into. */
template <bool BF16>
__global__ void __launch_bounds__(256)
tc_backward_dot(const u16* __restrict__ dO,   // (B, H, Nq, D), 16-bit, rows as dor says
                const u16* __restrict__ O,    // (B, H, Nq, D), rows as orr says
                float* __restrict__ Dv,       // (B, H, Nq) = (rows) contiguous
                float* __restrict__ dQacc,    // (B, H, Nq, D) fp32 contiguous, zeroed here
                long long rows, int d, Rows dor, Rows orr, int Nq, int H) {
    const long long row = (long long)blockIdx.x * 8 + threadIdx.x / 32;
    if (row >= rows) return;
    const int bh = (int)(row / Nq), n = (int)(row - (long long)bh * Nq);
    backward_dot_row<Half16Elem<BF16>, true>(dO + dor.head(bh, H) + (long long)n * dor.n,
                                             O + orr.head(bh, H) + (long long)n * orr.n, Dv,
                                             dQacc, row, d);
}

/* dQ = tau * dQacc, rounded to the input dtype (after every thread block of G2 has added in):
 * grid (ceil(n8 / 256), B * H), eight columns per thread, two 16-byte loads and one 16-byte
 * store into dQ's rows as dqr says (d is a multiple of 8, the rows on 16 bytes:
 * launch.device.check_rows; Nq * d < 2^31: launch.device._check_sizes). */
template <bool BF16>
__global__ void __launch_bounds__(256)
tc_backward_dq(const float* __restrict__ dQacc,  // (B, H, Nq, d) fp32 contiguous
               u16* __restrict__ dQ,             // (B, H, Nq, d) 16-bit, rows as dqr says
               int n8, int d, float tau,         // n8 = Nq * d / 8: a head's threads
               Rows dqr, int H) {
    const int x = blockIdx.x * 256 + threadIdx.x, bh = blockIdx.y;
    if (x >= n8) return;
    const int r = x * 8 / d, c = x * 8 - r * d;
    const float4* src = reinterpret_cast<const float4*>(dQacc) + ((size_t)bh * n8 + x) * 2;
    const float4 a = src[0], b = src[1];
    const uint4 out = make_uint4(pack2<BF16>(tau * a.x, tau * a.y), pack2<BF16>(tau * a.z, tau * a.w),
                                 pack2<BF16>(tau * b.x, tau * b.y), pack2<BF16>(tau * b.z, tau * b.w));
    *reinterpret_cast<uint4*>(dQ + dqr.head(bh, H) + (long long)r * dqr.n + c) = out;
}
