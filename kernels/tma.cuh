/* tma.cuh: Hopper's asynchronous copy machinery for warp-specialized kernels (sm_90a):
 *
 *   - the Tensor Memory Accelerator (TMA): one thread asks it for a box of a global tensor
 *     (`cp.async.bulk.tensor`), described by a 128-byte tensor map the host encodes
 *     (cuTensorMapEncodeTiled; flashlab/launch/tma.py) and passes as a __grid_constant__ kernel
 *     parameter. The box lands in shared memory in the map's swizzle; rows outside the tensor
 *     arrive as zeros. The copy runs in the async proxy, as wgmma reads, so no proxy fence is
 *     needed between them;
 *   - mbarriers: 64-bit counters in shared memory with a phase bit. A barrier made for n
 *     arrivals completes its phase when n threads have arrived and every byte announced with
 *     expect_tx has landed; a waiter names the phase (parity) it waits for;
 *   - named barriers (bar.sync / bar.arrive with an id and a thread count): a subset of the
 *     block's warps meet without __syncthreads;
 *   - setmaxnreg: a warpgroup gives registers back to the pool or takes them from it.
 */
#pragma once
#include "tc_common.cuh"

struct __align__(64) CUtensorMap { unsigned long long opaque[16]; };  // cuda.h's, 128 bytes

__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" :: "r"(bar), "r"(count) : "memory");
}
/* after the inits, before any other thread or the TMA unit uses the barriers */
__device__ __forceinline__ void mbar_init_fence() {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
/* this thread arrives and announces `bytes` more bytes the phase waits for */
__device__ __forceinline__ void mbar_expect_tx(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" :: "r"(bar), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void mbar_arrive(u32 bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" :: "r"(bar) : "memory");
}
/* until the barrier's phase of parity `phase` has completed */
__device__ __forceinline__ void mbar_wait(u32 bar, u32 phase) {
    asm volatile("{\n .reg .pred p;\n"
                 "WAIT_%=:\n"
                 " mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
                 " @!p bra WAIT_%=;\n}\n" :: "r"(bar), "r"(phase) : "memory");
}

/* The box at coordinates (c0, c1, c2, c3) (innermost first) of a 4-D tensor map into shared
 * memory at dst (1024-byte aligned for the 128-byte swizzle), counted on barrier bar. */
__device__ __forceinline__ void tma_load4(u32 dst, const CUtensorMap* map, int c0, int c1, int c2,
                                          int c3, u32 bar) {
    asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3, %4, %5}], [%6];\n"
                 :: "r"(dst), "l"(reinterpret_cast<unsigned long long>(map)), "r"(c0), "r"(c1),
                    "r"(c2), "r"(c3), "r"(bar) : "memory");
}
/* The box starting at element c0 of a one-row tensor map (fp32 L, D: a 2-D map (size, 1), no
 * swizzle, dst 128-byte aligned). */
__device__ __forceinline__ void tma_load_row(u32 dst, const CUtensorMap* map, int c0, u32 bar) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, 0}], [%3];\n"
                 :: "r"(dst), "l"(reinterpret_cast<unsigned long long>(map)), "r"(c0), "r"(bar)
                 : "memory");
}
/* Shared memory at src (a box of the map, in its swizzle) added into the global tensor at
 * coordinates (c0, c1, c2, c3) by the TMA unit (fp32 adds; rows outside the tensor are left
 * out), in this thread's bulk group; bulk_commit / bulk_wait_read<N> then wait until at most N
 * groups are still reading shared memory, bulk_wait<N> until they are done. */
__device__ __forceinline__ void tma_reduce_add4(u32 src, const CUtensorMap* map, int c0, int c1,
                                                int c2, int c3) {
    asm volatile("cp.reduce.async.bulk.tensor.4d.global.shared::cta.add.tile.bulk_group"
                 " [%0, {%1, %2, %3, %4}], [%5];\n"
                 :: "l"(reinterpret_cast<unsigned long long>(map)), "r"(c0), "r"(c1), "r"(c2),
                    "r"(c3), "r"(src) : "memory");
}
__device__ __forceinline__ void bulk_commit() {
    asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void bulk_wait_read() {
    asm volatile("cp.async.bulk.wait_group.read %0;\n" :: "n"(N) : "memory");
}
template <int N>
__device__ __forceinline__ void bulk_wait() {
    asm volatile("cp.async.bulk.wait_group %0;\n" :: "n"(N) : "memory");
}
__device__ __forceinline__ void tma_prefetch_map(const CUtensorMap* map) {
    asm volatile("prefetch.tensormap [%0];\n" :: "l"(reinterpret_cast<unsigned long long>(map))
                 : "memory");
}

/* A 32-bit word of shared memory, written and read as the asm says (ordered with the mbarrier
 * operations around it: a value one thread writes before its arrival is seen by a thread after
 * its wait for that phase). */
__device__ __forceinline__ void st_shared_s32(u32 addr, int x) {
    asm volatile("st.shared.b32 [%0], %1;\n" :: "r"(addr), "r"(x) : "memory");
}
__device__ __forceinline__ int ld_shared_s32(u32 addr) {
    int x;
    asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(x) : "r"(addr) : "memory");
    return x;
}

/* Named barrier `id` (1..15; 0 is __syncthreads') for n threads, whole warps: wait there, or
 * only arrive (count this warp in and go on). */
__device__ __forceinline__ void named_sync(int id, int n) {
    asm volatile("bar.sync %0, %1;\n" :: "r"(id), "r"(n) : "memory");
}
__device__ __forceinline__ void named_arrive(int id, int n) {
    asm volatile("bar.arrive %0, %1;\n" :: "r"(id), "r"(n) : "memory");
}

/* This warpgroup's registers per thread from here on (every thread of it executes this). */
template <int R>
__device__ __forceinline__ void regs_dec() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" :: "n"(R));
}
template <int R>
__device__ __forceinline__ void regs_inc() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" :: "n"(R));
}
