/* fa1_forward: FlashAttention forward exactly as Algorithm 1 (A1:L1-L16); fa1_backward: its
 * backward, the paper's Algorithm 4 without dropout (B1:L1-L16).
 * Loop order: K/V blocks outer (j), Q blocks inner (i); O_i, l_i, m_i (forward) and dQ_i
 * (backward) go to HBM and back at every (i, j) step, as the paper writes it.
 * Reference: flashlab/reference/fa1.py    Layout: common.cuh; l, m, L (B*H, Nq) fp32
 * Launch:    grid (B*H): one thread block walks one head's whole loop nest; block 128 threads
 *            that share every tile element-wise; Br, Bc and d are run-time arguments.
 * Shared:    forward  (2 Bc + 2 Br)(d + 1) + Br Bc + 6 Br floats
 *            backward (4 Bc + 4 Br)(d + 1) + 2 Br Bc + 2 Br floats   (the launcher sizes Br, Bc
 *            from the device's opt-in limit, A1:L1 style; rows are padded to d + 1 floats so
 *            the warp's 32 reads of a column hit 32 banks)
 * Limits:    any d that fits in shared memory (launcher allows 1..256); fp32 only.
 * Slow on purpose: B*H thread blocks only (a GPU wants thousands), scalar FMAs, and the HBM round
 * trip of O_i / dQ_i per step, which FlashAttention-2 (fa2.cu) removes. It is the lesson.
 * B1:L7 uses the logsumexp L_i = m_i + log(l_i): diag(l_i)^-1 exp(S - m_i) = exp(S - L_i).
 */
#include "common.cuh"

#define FA1_THREADS 128

/* max that keeps a NaN, as NumPy's max does (fmaxf would drop it) */
__device__ __forceinline__ float nanmax(float a, float b) {
    return (a != a || a >= b) ? a : b;
}

extern "C" __global__ void __launch_bounds__(FA1_THREADS)
fa1_forward(const float* __restrict__ Q,  // (B, H, Nq, d)
            const float* __restrict__ K,  // (B, H, Nk, d)
            const float* __restrict__ V,  // (B, H, Nk, d)
            float* __restrict__ O,        // (B, H, Nq, d), read and written at every step (A1:L12)
            float* __restrict__ l,        // (B, H, Nq) row sums, in HBM between steps (A1:L13)
            float* __restrict__ m,        // (B, H, Nq) row maxima, in HBM between steps
            float* __restrict__ L,        // (B, H, Nq) logsumexp m + log l, for B1
            int Nq, int Nk, int d, int Br, int Bc, float tau, int causal,
            float* tr_m,                  // (B, H, Tr, Tc, Br), FLASHLAB_TRACE builds only
            float* tr_l,                  // (B, H, Tr, Tc, Br)
            float* tr_O,                  // (B, H, Tr, Tc, Br, d)
            long long* tr_seq) {          // (B, H, Tr, Tc)
    extern __shared__ float smem[];
    const int p = d + 1;                     // padded row pitch
    float* K_j = smem;                       // (Bc, d)
    float* V_j = K_j + Bc * p;               // (Bc, d)
    float* Q_i = V_j + Bc * p;               // (Br, d)
    float* O_i = Q_i + Br * p;               // (Br, d)
    float* S_ij = O_i + Br * p;              // (Br, Bc), P~_ij overwrites it
    float* l_i = S_ij + Br * Bc;             // (Br)
    float* m_i = l_i + Br;                   // (Br)
    float* m_new = m_i + Br;                 // (Br)
    float* l_new = m_new + Br;               // (Br)
    float* keep = l_new + Br;                // (Br)  diag(l_i) e^(m_i - m_new)
    float* add = keep + Br;                  // (Br)  e^(m~_ij - m_new)

    const int bh = blockIdx.x, t = threadIdx.x;
    const float* Qh = Q + head_offset(bh, Nq, d);
    const float* Kh = K + head_offset(bh, Nk, d);
    const float* Vh = V + head_offset(bh, Nk, d);
    float* Oh = O + head_offset(bh, Nq, d);
    float* lh = l + head_offset(bh, Nq, 1);
    float* mh = m + head_offset(bh, Nq, 1);
    const int Tr = (Nq + Br - 1) / Br, Tc = (Nk + Bc - 1) / Bc;

    // A1:L2  O = 0, l = 0, m = -inf in HBM
    for (int e = t; e < Nq * d; e += FA1_THREADS) Oh[e] = 0.0f;
    for (int r = t; r < Nq; r += FA1_THREADS) { lh[r] = 0.0f; mh[r] = FL_NEG_INF; }
    __syncthreads();  // the initial O, l, m are in HBM before step (0, 0) reads them

    long long seq = 0;
    for (int j = 0; j < Tc; ++j) {                                   // A1:L5
        const int bc = min(Bc, Nk - j * Bc);
        for (int e = t; e < bc * d; e += FA1_THREADS) {              // A1:L6  load K_j, V_j
            const int c = e / d, x = e % d;
            K_j[c * p + x] = Kh[(size_t)(j * Bc + c) * d + x];
            V_j[c * p + x] = Vh[(size_t)(j * Bc + c) * d + x];
        }
        for (int i = 0; i < Tr; ++i) {                               // A1:L7
            const int br = min(Br, Nq - i * Br);
            for (int e = t; e < br * d; e += FA1_THREADS) {          // A1:L8  load Q_i, O_i, l_i, m_i
                const int r = e / d, x = e % d;
                Q_i[r * p + x] = Qh[(size_t)(i * Br + r) * d + x];
                O_i[r * p + x] = Oh[(size_t)(i * Br + r) * d + x];
            }
            for (int r = t; r < br; r += FA1_THREADS) { l_i[r] = lh[i * Br + r]; m_i[r] = mh[i * Br + r]; }
            __syncthreads();  // K_j, V_j, Q_i, O_i, l_i, m_i are all on chip

            for (int e = t; e < br * bc; e += FA1_THREADS) {         // A1:L9  S_ij = tau Q_i K_j^T
                const int r = e / bc, c = e % bc;
                float s = 0.0f;
                for (int x = 0; x < d; ++x) s += Q_i[r * p + x] * K_j[c * p + x];
                S_ij[r * Bc + c] = masked(causal, i * Br + r, j * Bc + c) ? FL_NEG_INF : tau * s;
            }
            __syncthreads();  // S_ij is complete before the row statistics read it

            for (int r = t; r < br; r += FA1_THREADS) {
                // BEGIN EXERCISE 2.2: A1:L10-L11 for row r. m~_ij = rowmax(S_ij) (use nanmax),
                // P~_ij = exp(S_ij - m~_ij) written over S_ij, l~_ij = rowsum(P~_ij); then m_new[r],
                // l_new[r], and the two factors of A1:L12: keep[r] = l_i e^(m_i - m_new),
                // add[r] = e^(m~_ij - m_new). Subtract safe_max(m), never a bare -inf.
                float m_tilde_ij = FL_NEG_INF;                       // A1:L10  m~_ij = rowmax(S_ij)
                for (int c = 0; c < bc; ++c) m_tilde_ij = nanmax(m_tilde_ij, S_ij[r * Bc + c]);
                float l_tilde_ij = 0.0f;                             //         P~_ij, l~_ij
                for (int c = 0; c < bc; ++c) {
                    const float pv = expf(S_ij[r * Bc + c] - safe_max(m_tilde_ij));
                    S_ij[r * Bc + c] = pv;
                    l_tilde_ij += pv;
                }
                const float mn = nanmax(m_i[r], m_tilde_ij);         // A1:L11
                const float alpha = expf(m_i[r] - safe_max(mn));
                const float beta = expf(m_tilde_ij - safe_max(mn));
                m_new[r] = mn;
                l_new[r] = alpha * l_i[r] + beta * l_tilde_ij;
                keep[r] = l_i[r] * alpha;
                add[r] = beta;
                // END EXERCISE
            }
            __syncthreads();  // P~_ij and the row coefficients are ready for A1:L12

            for (int e = t; e < br * d; e += FA1_THREADS) {          // A1:L12
                const int r = e / d, x = e % d;
                float o = 0.0f;                                      // O_i[r][x] after the step
                // BEGIN EXERCISE 2.1: A1:L12 for element (r, x): o = (keep[r] O_i[r][x] +
                // add[r] (P~_ij V_j)[r][x]) / l_new[r]. P~_ij sits in S_ij (pitch Bc), V_j and O_i
                // in shared memory with pitch p.
                float pv = 0.0f;                                     // (P~_ij V_j)[r][x]
                for (int c = 0; c < bc; ++c) pv += S_ij[r * Bc + c] * V_j[c * p + x];
                o = (keep[r] * O_i[r * p + x] + add[r] * pv) / l_new[r];
                // END EXERCISE
                Oh[(size_t)(i * Br + r) * d + x] = o;                // write O_i to HBM
                TRACE(tr_O[trace_offset(bh, i, j, Tr, Tc, Br, d) + r * d + x] = o);
            }
            for (int r = t; r < br; r += FA1_THREADS) {              // A1:L13
                lh[i * Br + r] = l_new[r];
                mh[i * Br + r] = m_new[r];
                TRACE(tr_m[trace_offset(bh, i, j, Tr, Tc, Br, 1) + r] = m_new[r]);
                TRACE(tr_l[trace_offset(bh, i, j, Tr, Tc, Br, 1) + r] = l_new[r]);
            }
            TRACE(if (t == 0) tr_seq[((size_t)bh * Tr + i) * Tc + j] = seq);
            ++seq;
            __syncthreads();  // O_i, l_i, m_i are in HBM and the tiles are free for the next step
        }
    }
    for (int r = t; r < Nq; r += FA1_THREADS)                        // L = m + log(l), for B1
        L[head_offset(bh, Nq, 1) + r] = safe_max(mh[r]) + logf(lh[r]);
}

extern "C" __global__ void __launch_bounds__(FA1_THREADS)
fa1_backward(const float* __restrict__ Q,   // (B, H, Nq, d)
             const float* __restrict__ K,   // (B, H, Nk, d)
             const float* __restrict__ V,   // (B, H, Nk, d)
             const float* __restrict__ O,   // (B, H, Nq, d)
             const float* __restrict__ dO,  // (B, H, Nq, d)
             const float* __restrict__ L,   // (B, H, Nq) logsumexp from the forward
             float* __restrict__ dQ,        // (B, H, Nq, d), read and written at every step
             float* __restrict__ dK,        // (B, H, Nk, d)
             float* __restrict__ dV,        // (B, H, Nk, d)
             int Nq, int Nk, int d, int Br, int Bc, float tau, int causal,
             float* tr_dQ,                  // (B, H, Tr, Tc, Br, d), FLASHLAB_TRACE builds only
             float* tr_dK,                  // (B, H, Tr, Tc, Bc, d)
             float* tr_dV,                  // (B, H, Tr, Tc, Bc, d)
             long long* tr_seq) {           // (B, H, Tr, Tc)
    extern __shared__ float smem[];
    const int p = d + 1;
    float* K_j = smem;                       // (Bc, d)
    float* V_j = K_j + Bc * p;               // (Bc, d)
    float* dK_j = V_j + Bc * p;              // (Bc, d)  dK~_j
    float* dV_j = dK_j + Bc * p;             // (Bc, d)  dV~_j
    float* Q_i = dV_j + Bc * p;              // (Br, d)
    float* O_i = Q_i + Br * p;               // (Br, d)
    float* dO_i = O_i + Br * p;              // (Br, d)
    float* dQ_i = dO_i + Br * p;             // (Br, d)
    float* P_ij = dQ_i + Br * p;             // (Br, Bc)
    float* dP_ij = P_ij + Br * Bc;           // (Br, Bc), dS_ij overwrites it
    float* L_i = dP_ij + Br * Bc;            // (Br)
    float* D_i = L_i + Br;                   // (Br)

    const int bh = blockIdx.x, t = threadIdx.x;
    const float* Qh = Q + head_offset(bh, Nq, d);
    const float* Oh = O + head_offset(bh, Nq, d);
    const float* dOh = dO + head_offset(bh, Nq, d);
    const float* Lh = L + head_offset(bh, Nq, 1);
    const float* Kh = K + head_offset(bh, Nk, d);
    const float* Vh = V + head_offset(bh, Nk, d);
    float* dQh = dQ + head_offset(bh, Nq, d);
    float* dKh = dK + head_offset(bh, Nk, d);
    float* dVh = dV + head_offset(bh, Nk, d);
    const int Tr = (Nq + Br - 1) / Br, Tc = (Nk + Bc - 1) / Bc;

    for (int e = t; e < Nq * d; e += FA1_THREADS) dQh[e] = 0.0f;    // B1:L1
    for (int e = t; e < Nk * d; e += FA1_THREADS) { dKh[e] = 0.0f; dVh[e] = 0.0f; }
    __syncthreads();  // dQ = 0 is in HBM before step (0, 0) reads dQ_0

    long long seq = 0;
    for (int j = 0; j < Tc; ++j) {                                   // B1:L2
        const int bc = min(Bc, Nk - j * Bc);
        for (int e = t; e < bc * d; e += FA1_THREADS) {              // B1:L3
            const int c = e / d, x = e % d;
            K_j[c * p + x] = Kh[(size_t)(j * Bc + c) * d + x];
            V_j[c * p + x] = Vh[(size_t)(j * Bc + c) * d + x];
            dK_j[c * p + x] = 0.0f;
            dV_j[c * p + x] = 0.0f;
        }
        for (int i = 0; i < Tr; ++i) {                               // B1:L4
            const int br = min(Br, Nq - i * Br);
            for (int e = t; e < br * d; e += FA1_THREADS) {          // B1:L5
                const int r = e / d, x = e % d;
                const size_t g = (size_t)(i * Br + r) * d + x;
                Q_i[r * p + x] = Qh[g]; O_i[r * p + x] = Oh[g];
                dO_i[r * p + x] = dOh[g]; dQ_i[r * p + x] = dQh[g];
            }
            for (int r = t; r < br; r += FA1_THREADS) L_i[r] = Lh[i * Br + r];
            __syncthreads();  // every tile of step (i, j) is on chip

            for (int e = t; e < br * bc; e += FA1_THREADS) {
                const int r = e / bc, c = e % bc;
                float s = 0.0f, dp = 0.0f;
                for (int x = 0; x < d; ++x) {
                    s += Q_i[r * p + x] * K_j[c * p + x];            // B1:L6
                    dp += dO_i[r * p + x] * V_j[c * p + x];          // B1:L9
                }
                P_ij[r * Bc + c] = masked(causal, i * Br + r, j * Bc + c)
                                       ? 0.0f : expf(tau * s - L_i[r]);  // B1:L7
                dP_ij[r * Bc + c] = dp;
            }
            for (int r = t; r < br; r += FA1_THREADS) {              // B1:L10
                float D = 0.0f;
                for (int x = 0; x < d; ++x) D += dO_i[r * p + x] * O_i[r * p + x];
                D_i[r] = D;
            }
            __syncthreads();  // P_ij, dP_ij and D_i are complete

            for (int e = t; e < bc * d; e += FA1_THREADS) {          // B1:L8  dV~_j += P_ij^T dO_i
                const int c = e / d, x = e % d;
                float acc = 0.0f;
                for (int r = 0; r < br; ++r) acc += P_ij[r * Bc + c] * dO_i[r * p + x];
                dV_j[c * p + x] += acc;
            }
            for (int e = t; e < br * bc; e += FA1_THREADS) {         // B1:L11
                const int r = e / bc, c = e % bc;
                dP_ij[r * Bc + c] = P_ij[r * Bc + c] * (dP_ij[r * Bc + c] - D_i[r]);
            }
            __syncthreads();  // dS_ij is complete (it overwrote dP_ij)

            for (int e = t; e < br * d; e += FA1_THREADS) {          // B1:L12
                const int r = e / d, x = e % d;
                float acc = 0.0f;
                for (int c = 0; c < bc; ++c) acc += dP_ij[r * Bc + c] * K_j[c * p + x];
                const float v = dQ_i[r * p + x] + tau * acc;
                dQh[(size_t)(i * Br + r) * d + x] = v;               // write dQ_i to HBM
                TRACE(tr_dQ[trace_offset(bh, i, j, Tr, Tc, Br, d) + r * d + x] = v);
            }
            for (int e = t; e < bc * d; e += FA1_THREADS) {          // B1:L13  dK~_j += tau dS^T Q_i
                const int c = e / d, x = e % d;
                float acc = 0.0f;
                for (int r = 0; r < br; ++r) acc += dP_ij[r * Bc + c] * Q_i[r * p + x];
                dK_j[c * p + x] += tau * acc;
                TRACE(tr_dK[trace_offset(bh, i, j, Tr, Tc, Bc, d) + c * d + x] = dK_j[c * p + x]);
                TRACE(tr_dV[trace_offset(bh, i, j, Tr, Tc, Bc, d) + c * d + x] = dV_j[c * p + x]);
            }
            TRACE(if (t == 0) tr_seq[((size_t)bh * Tr + i) * Tc + j] = seq);
            ++seq;
            __syncthreads();  // dQ_i is in HBM and the step's tiles are free for the next one
        }
        for (int e = t; e < bc * d; e += FA1_THREADS) {              // B1:L15
            const int c = e / d, x = e % d;
            dKh[(size_t)(j * Bc + c) * d + x] = dK_j[c * p + x];
            dVh[(size_t)(j * Bc + c) * d + x] = dV_j[c * p + x];
        }
        __syncthreads();  // K_j, V_j, dK~_j, dV~_j are free before the next j loads over them
    }
}
