/* naive: standard attention (A0:L1-L3), S and P materialised in HBM; the baseline of every
 * speedup table, and its backward.
 * Reference: flashlab/reference/naive.py    Layout: see common.cuh, fp32; S, P (B*H, Nq, Nk)
 * Kernels: naive_matmul (one batched GEMM that serves S = tau Q K^T, O = P V and the four
 *          backward products), naive_softmax (A0:L2, one row per block), naive_dsoftmax
 *          (dS = P * (dP - rowsum(P * dP)), one row per block).
 * Launch:  naive_matmul grid (ceil(N/64), ceil(M/64), B*H), block 256, static smem 16 KB;
 *          the row kernels grid (B*H*Nq), block 256.
 * Not a straw man: a register-blocked GEMM (4 x 4 outputs per thread); still far from cuBLAS,
 * which `flashlab bench --compare torch` shows beside it. Its cost is the Theta(N^2) HBM traffic
 * of S and P, which is what the flash kernels remove.
 */
#include "common.cuh"

#define MM_TILE 64
#define MM_K 16

/* C[b] = alpha * op(A[b]) op(B[b]) with op(A) (M x K), op(B) (K x N), C (M x N) row-major.
 * transA: A is stored (K x M); transB: B is stored (N x K). causal: C[r][c] = -inf for c > r
 * (used by A0:L1 so that softmax sees the mask).                                           */
extern "C" __global__ void __launch_bounds__(256)
naive_matmul(const float* __restrict__ A,   // (batch, M, K), or (batch, K, M) with transA
             const float* __restrict__ Bm,  // (batch, K, N), or (batch, N, K) with transB
             float* __restrict__ C,         // (batch, M, N)
             int M, int N, int K, int transA, int transB, float alpha, int causal) {
    __shared__ float As[MM_K][MM_TILE + 4];  // As[k][m]
    __shared__ float Bs[MM_K][MM_TILE + 4];  // Bs[k][n]
    const int b = blockIdx.z;
    const float* Ab = A + head_offset(b, M, K);
    const float* Bb = Bm + head_offset(b, K, N);
    float* Cb = C + head_offset(b, M, N);
    const int m0 = blockIdx.y * MM_TILE, n0 = blockIdx.x * MM_TILE;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    float acc[4][4] = {};
    for (int k0 = 0; k0 < K; k0 += MM_K) {
        for (int e = threadIdx.x; e < MM_TILE * MM_K; e += 256) {
            int kk, mm;
            if (transA) { mm = e % MM_TILE; kk = e / MM_TILE; }   // contiguous along m
            else        { kk = e % MM_K;    mm = e / MM_K; }      // contiguous along k
            int gm = m0 + mm, gk = k0 + kk;
            float a = 0.0f;
            if (gm < M && gk < K) a = transA ? Ab[(size_t)gk * M + gm] : Ab[(size_t)gm * K + gk];
            As[kk][mm] = a;
            int nn;
            if (transB) { kk = e % MM_K;    nn = e / MM_K; }      // B stored (N x K)
            else        { nn = e % MM_TILE; kk = e / MM_TILE; }
            int gn = n0 + nn; gk = k0 + kk;
            float bv = 0.0f;
            if (gn < N && gk < K) bv = transB ? Bb[(size_t)gn * K + gk] : Bb[(size_t)gk * N + gn];
            Bs[kk][nn] = bv;
        }
        __syncthreads();  // the A and B tiles are complete before anyone multiplies
#pragma unroll
        for (int kk = 0; kk < MM_K; ++kk) {
            float a[4], bv[4];
#pragma unroll
            for (int x = 0; x < 4; ++x) { a[x] = As[kk][ty * 4 + x]; bv[x] = Bs[kk][tx + 16 * x]; }
#pragma unroll
            for (int x = 0; x < 4; ++x)
#pragma unroll
                for (int y = 0; y < 4; ++y) acc[x][y] += a[x] * bv[y];
        }
        __syncthreads();  // everyone is done with the tiles before the next ones overwrite them
    }
#pragma unroll
    for (int x = 0; x < 4; ++x)
#pragma unroll
        for (int y = 0; y < 4; ++y) {
            int r = m0 + ty * 4 + x, c = n0 + tx + 16 * y;
            if (r < M && c < N) Cb[(size_t)r * N + c] = masked(causal, r, c) ? FL_NEG_INF : alpha * acc[x][y];
        }
}

__device__ float block_reduce(float v, bool is_max, float* scratch) {
    for (int o = 16; o > 0; o >>= 1) {
        float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, w) : v + w;
    }
    if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
    __syncthreads();  // every warp's partial is in scratch
    v = scratch[0];
    for (int w = 1; w < blockDim.x / 32; ++w) v = is_max ? fmaxf(v, scratch[w]) : v + scratch[w];
    __syncthreads();  // everyone has read scratch before it is reused
    return v;
}

/* A0:L2  P = softmax(S) row by row, and L = m + log(l) for the backward pass. Grid: one block
 * per row of S (B*H*Nq rows). NaN in S propagates as in the oracle (fmaxf would drop it).   */
extern "C" __global__ void __launch_bounds__(256)
naive_softmax(const float* __restrict__ S,  // (B, H, Nq, Nk)
              float* __restrict__ P,        // (B, H, Nq, Nk)
              float* __restrict__ L,        // (B, H, Nq) logsumexp, for the backward
              int Nk) {
    __shared__ float scratch[8];
    const size_t row = blockIdx.x;
    const float* s = S + row * Nk;
    float* p = P + row * Nk;
    float m = FL_NEG_INF;
    bool nan = false;
    for (int c = threadIdx.x; c < Nk; c += blockDim.x) { m = fmaxf(m, s[c]); nan |= isnan(s[c]); }
    m = block_reduce(m, true, scratch);
    nan = block_reduce(nan ? 1.0f : 0.0f, false, scratch) > 0.0f;
    if (nan) m = __int_as_float(0x7fc00000);
    const float ms = safe_max(m);
    float l = 0.0f;
    for (int c = threadIdx.x; c < Nk; c += blockDim.x) l += expf(s[c] - ms);
    l = block_reduce(l, false, scratch);
    const float inv = 1.0f / l;
    for (int c = threadIdx.x; c < Nk; c += blockDim.x) p[c] = expf(s[c] - ms) * inv;
    if (threadIdx.x == 0) L[row] = ms + logf(l);
}

/* Backward of A0:L2: dS = P * (dP - D) with D = rowsum(P * dP) (= rowsum(dO * O)). In place
 * over dP. Grid: one block per row.                                                        */
extern "C" __global__ void __launch_bounds__(256)
naive_dsoftmax(const float* __restrict__ P,  // (B, H, Nq, Nk)
               float* __restrict__ dP,        // (B, H, Nq, Nk): dP in, dS out
               int Nk) {
    __shared__ float scratch[8];
    const size_t row = blockIdx.x;
    const float* p = P + row * Nk;
    float* dp = dP + row * Nk;
    float D = 0.0f;
    for (int c = threadIdx.x; c < Nk; c += blockDim.x) D += p[c] * dp[c];
    D = block_reduce(D, false, scratch);
    for (int c = threadIdx.x; c < Nk; c += blockDim.x) dp[c] = p[c] * (dp[c] - D);
}
