/* backward_dot.cuh: G2:L0, the backward's pre-pass Dv = rowsum(dO * O), written once for every
 * element type. Included by kernels/fa2.cu (fa2_backward_dot: fp32 rows) and kernels/tc_common.cuh
 * (tc_backward_dot<BF16>: 16-bit rows, and the same pass zeroes the fp32 dQ accumulator that
 * G2:L7's atomic adds collect into). Each kernel is a one-line call of backward_dot below.
 *
 * Layout: dO, O are (rows, d) = (B*H*Nq, d) contiguous for backward_dot (backward_dot_row takes a
 * row's own pointers: tc's strided operands); Dv is (rows); dQacc (rows, d) fp32.
 * Launch: one warp per row, 8 rows per 256-thread block: grid ceil(rows / 8).
 * Includes nothing: whoever includes it has common.cuh already, and a student's copy of fa2.cu
 * beside its own common.cuh must not get a second one from kernels/.
 */
#pragma once

/* How the elements of a row read as fp32: Elem::T is the stored type, Elem::f32(x) its value
 * (tc_common.cuh has the 16-bit one). */
struct Fp32Elem {
    typedef float T;
    static __device__ __forceinline__ float f32(float x) { return x; }
};

/* Row `row` of Dv = dOr . Or, the row's d elements (dOr, Or point at them): this lane's columns
 * x = lane, lane + 32, ... summed, then the warp's 32 partial sums by shuffles; ZERO_DQ: also
 * dQacc's row (contiguous, d wide) = 0. One warp, every lane. */
template <class Elem, bool ZERO_DQ>
__device__ __forceinline__ void backward_dot_row(const typename Elem::T* __restrict__ dOr,
                                                 const typename Elem::T* __restrict__ Or,
                                                 float* __restrict__ Dv, float* __restrict__ dQacc,
                                                 long long row, int d) {
    const int lane = threadIdx.x % 32;
    float acc = 0.0f;
    for (int x = lane; x < d; x += 32) {
        acc += Elem::f32(dOr[x]) * Elem::f32(Or[x]);
        if (ZERO_DQ) dQacc[row * d + x] = 0.0f;
    }
    for (int s = 16; s > 0; s >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, s);
    if (lane == 0) Dv[row] = acc;
}

/* Row blockIdx.x * 8 + warp of contiguous (rows, d) dO and O. */
template <class Elem, bool ZERO_DQ>
__device__ __forceinline__ void backward_dot(const typename Elem::T* __restrict__ dO,
                                             const typename Elem::T* __restrict__ O,
                                             float* __restrict__ Dv, float* __restrict__ dQacc,
                                             long long rows, int d) {
    const long long row = (long long)blockIdx.x * 8 + threadIdx.x / 32;
    if (row >= rows) return;
    backward_dot_row<Elem, ZERO_DQ>(dO + row * d, O + row * d, Dv, dQacc, row, d);
}
