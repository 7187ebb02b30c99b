/* common.cuh: what every flashlab kernel shares.
 *
 * Layouts: Q, O, dO, dQ are (B*H, Nq, d); K, V, dK, dV are (B*H, Nk, d); L (logsumexp), D are
 * (B*H, Nq); all fp32, contiguous. A thread block finds its head's slice with head_offset().
 *
 * Trace mode (compiled with -DFLASHLAB_TRACE) adds stores of the per-step state into dense trace
 * buffers laid out (B*H, Tr, Tc, R, C) as flashlab/trace.py describes; in the normal build the
 * TRACE(...) statements vanish, so the traced kernel and the timed kernel are one source.
 */
#pragma once

#define FL_NEG_INF __int_as_float(0xff800000)

#ifdef FLASHLAB_TRACE
#define TRACE(stmt) do { stmt; } while (0)
#else
#define TRACE(stmt) do { } while (0)
#endif

/* Offset of head bh's (rows x cols) slab: size_t so B*H*N*d may pass 2^31. */
__device__ __forceinline__ size_t head_offset(int bh, int rows, int cols) {
    return (size_t)bh * (size_t)rows * (size_t)cols;
}

/* Offset of step (i, j)'s (R x C) tile in a trace buffer (B*H, Tr, Tc, R, C). */
__device__ __forceinline__ size_t trace_offset(int bh, int i, int j, int Tr, int Tc, int R, int C) {
    return (((size_t)bh * Tr + i) * Tc + j) * (size_t)R * C;
}

/* A row max of -inf (no visible key yet) is used as 0, so exp(-inf - m) gives 0, not NaN. */
__device__ __forceinline__ float safe_max(float m) {
    return m == FL_NEG_INF ? 0.0f : m;
}

/* Top-left causal mask (torch is_causal): key c is hidden from query r when c > r. */
__device__ __forceinline__ bool masked(int causal, int r, int c) {
    return causal && c > r;
}
