/* cuda_cpu.h: the CUDA C that flashlab's fp32 kernels and students' kernels use, for a C++
 * compiler on the CPU. flashlab/cpu/build.py puts `#include "cuda_cpu.h"` before a kernel
 * source and compiles it unchanged (two rewrites, line for line: `extern __shared__ T x[];`
 * becomes a pointer to this block's dynamic shared memory, and a static `__shared__` array
 * registers itself so the race check can see it).
 *
 * Here: the CUDA keywords, the built-in variables (threadIdx, blockIdx, blockDim, gridDim,
 * warpSize), vector types, __syncthreads and its _count/_and/_or forms, the warp collectives
 * with 32-lane _sync semantics (__shfl_sync, __shfl_xor_sync, __shfl_up_sync,
 * __shfl_down_sync, __ballot_sync, __any_sync, __all_sync, __syncwarp, __activemask),
 * atomics, the float intrinsics the kernels call, printf and assert. Not here: inline PTX
 * (asm), half and bfloat16, textures, cooperative groups, tensor cores: those need a GPU.
 */
#pragma once
#define FLASHLAB_CPU 1

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <cmath>
#include <type_traits>
#include <utility>

#include "fl_rt_api.h"

/* ---- keywords ---------------------------------------------------------------------------- */
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define __constant__ static
#define __managed__
#define __align__(n) alignas(n)
#define __grid_constant__

/* ---- built-in variables: the running fiber's ----------------------------------------------- */
#define threadIdx (*fl_thread_idx())
#define blockIdx (*fl_block_idx())
#define blockDim (*fl_block_dim())
#define gridDim (*fl_grid_dim())
#define warpSize 32

/* ---- vector types ------------------------------------------------------------------------ */
struct alignas(8) float2 { float x, y; };
struct float3 { float x, y, z; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct int3 { int x, y, z; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(8) uint2 { unsigned int x, y; };
struct alignas(16) uint4 { unsigned int x, y, z, w; };
struct alignas(16) double2 { double x, y; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float3 make_float3(float x, float y, float z) { return {x, y, z}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return {x, y, z}; }

/* ---- barriers and warp collectives ------------------------------------------------------- */
#define __syncthreads() fl_barrier(__FILE__, __LINE__, ::fl::SYNC, 0)
#define __syncthreads_count(p) fl_barrier(__FILE__, __LINE__, ::fl::SYNC_COUNT, (p))
#define __syncthreads_and(p) fl_barrier(__FILE__, __LINE__, ::fl::SYNC_AND, (p))
#define __syncthreads_or(p) fl_barrier(__FILE__, __LINE__, ::fl::SYNC_OR, (p))

namespace fl {
__attribute__((noreturn, format(printf, 2, 3))) inline void fault(int kind, const char* fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fl_fault(kind, msg);
}
template <class V> inline V shuffle(int op, const char* f, int l, unsigned mask, V v, int arg,
                                    int width = 32) {
    static_assert(sizeof(V) <= 8, "a shuffle moves at most 64 bits");
    if (width < 1 || width > 32 || (width & (width - 1)))
        fault(FL_FAULT_WARP, "%s:%d: shuffle width %d is not a power of 2 from 1 to 32", f, l,
              width);
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(V));
    bits = fl_warp(op, f, l, mask, bits, arg, width);
    V out;
    memcpy(&out, &bits, sizeof(V));
    return out;
}
inline unsigned vote(int op, const char* f, int l, unsigned mask, int pred) {
    return (unsigned)fl_warp(op, f, l, mask, pred != 0, 0, 32);
}
inline void syncwarp(const char* f, int l, unsigned mask = 0xffffffffu) {
    fl_warp(SYNCWARP, f, l, mask, 0, 0, 32);
}
}  // namespace fl

#define __shfl_sync(...) ::fl::shuffle(::fl::SHFL, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_xor_sync(...) ::fl::shuffle(::fl::SHFL_XOR, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_up_sync(...) ::fl::shuffle(::fl::SHFL_UP, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_down_sync(...) ::fl::shuffle(::fl::SHFL_DOWN, __FILE__, __LINE__, __VA_ARGS__)
#define __ballot_sync(mask, p) ::fl::vote(::fl::BALLOT, __FILE__, __LINE__, (mask), (p))
#define __any_sync(mask, p) (::fl::vote(::fl::ANY, __FILE__, __LINE__, (mask), (p)) != 0)
#define __all_sync(mask, p) (::fl::vote(::fl::ALL, __FILE__, __LINE__, (mask), (p)) != 0)
#define __syncwarp(...) ::fl::syncwarp(__FILE__, __LINE__, ##__VA_ARGS__)
#define __activemask() fl_active_mask()

/* ---- atomics (real ones: blocks may run on several OS threads) --------------------------- */
namespace fl {
template <class V, class F> inline V atomic_update(V* p, F f) {
    fl_note_atomic(p);
    typedef typename std::conditional<sizeof(V) == 8, uint64_t, uint32_t>::type Bits;
    static_assert(sizeof(V) == sizeof(Bits), "atomics on 4- and 8-byte values");
    Bits* q = (Bits*)p;
    Bits old = __atomic_load_n(q, __ATOMIC_RELAXED), want;
    V was, now;
    do {
        memcpy(&was, &old, sizeof(V));
        now = f(was);
        memcpy(&want, &now, sizeof(V));
    } while (!__atomic_compare_exchange_n(q, &old, want, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
    return was;
}
}  // namespace fl
template <class V> inline V atomicAdd(V* p, V v) { return fl::atomic_update(p, [v](V x) { return x + v; }); }
template <class V> inline V atomicSub(V* p, V v) { return fl::atomic_update(p, [v](V x) { return x - v; }); }
template <class V> inline V atomicExch(V* p, V v) { return fl::atomic_update(p, [v](V) { return v; }); }
template <class V> inline V atomicMax(V* p, V v) { return fl::atomic_update(p, [v](V x) { return x < v ? v : x; }); }
template <class V> inline V atomicMin(V* p, V v) { return fl::atomic_update(p, [v](V x) { return v < x ? v : x; }); }
template <class V> inline V atomicAnd(V* p, V v) { return fl::atomic_update(p, [v](V x) { return x & v; }); }
template <class V> inline V atomicOr(V* p, V v) { return fl::atomic_update(p, [v](V x) { return x | v; }); }
template <class V> inline V atomicXor(V* p, V v) { return fl::atomic_update(p, [v](V x) { return x ^ v; }); }
template <class V> inline V atomicCAS(V* p, V cmp, V v) {
    return fl::atomic_update(p, [cmp, v](V x) { return x == cmp ? v : x; });
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

/* ---- arithmetic -------------------------------------------------------------------------- */
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline unsigned min(int a, unsigned b) { return min((unsigned)a, b); }
inline unsigned min(unsigned a, int b) { return min(a, (unsigned)b); }
inline unsigned max(int a, unsigned b) { return max((unsigned)a, b); }
inline unsigned max(unsigned a, int b) { return max(a, (unsigned)b); }
inline long long min(int a, long long b) { return min((long long)a, b); }
inline long long min(long long a, int b) { return min(a, (long long)b); }
inline long long max(int a, long long b) { return max((long long)a, b); }
inline long long max(long long a, int b) { return max(a, (long long)b); }

using std::isfinite;
using std::isinf;
using std::isnan;
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __powf(float a, float b) { return powf(a, b); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }
inline int __float2int_rn(float x) { return (int)lrintf(x); }
inline int __float2int_rz(float x) { return (int)x; }
inline float __int2float_rn(int x) { return (float)x; }
inline float __int_as_float(int x) { float f; memcpy(&f, &x, 4); return f; }
inline int __float_as_int(float x) { int i; memcpy(&i, &x, 4); return i; }
inline float __uint_as_float(unsigned x) { float f; memcpy(&f, &x, 4); return f; }
inline unsigned __float_as_uint(float x) { unsigned i; memcpy(&i, &x, 4); return i; }
inline double __longlong_as_double(long long x) { double f; memcpy(&f, &x, 8); return f; }
inline long long __double_as_longlong(double x) { long long i; memcpy(&i, &x, 8); return i; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __brev(unsigned x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    return __builtin_bswap32(x);
}
template <class V> inline V __ldg(const V* p) { return *p; }
inline long long clock64() {
    timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000ll + t.tv_nsec;
}
inline void __nanosleep(unsigned) {}

/* ---- printf (once: the race check's second run is quiet), assert, __trap ----------------- */
#define printf(...) (fl_quiet() ? 0 : fl_flush(printf(__VA_ARGS__)))
#undef assert
#define assert(e) \
    ((e) ? (void)0 : ::fl::fault(FL_FAULT_TRAP, "%s:%d: assert(%s) failed", __FILE__, __LINE__, #e))
#define __trap() ::fl::fault(FL_FAULT_TRAP, "%s:%d: __trap()", __FILE__, __LINE__)

/* ---- the entry points: fl::run(desc, &kernel) checks and unpacks the arguments ------------ */
namespace fl {
template <class V> constexpr char code_of() {
    typedef typename std::remove_cv<V>::type U;
    if (std::is_same<U, float>::value) return 'f';
    if (std::is_same<U, double>::value) return 'd';
    if (std::is_same<U, bool>::value) return 'b';
    if (std::is_integral<U>::value) {
        const bool s = std::is_signed<U>::value;
        switch (sizeof(U)) {
            case 1: return s ? 'b' : 'B';
            case 2: return s ? 'h' : 'H';
            case 4: return s ? 'i' : 'u';
            case 8: return s ? 'l' : 'L';
        }
    }
    return '?';
}
template <class P> constexpr fl_param param() {
    if constexpr (std::is_pointer<P>::value) {
        typedef typename std::remove_pointer<P>::type E;
        typedef typename std::conditional<std::is_void<E>::value, char, E>::type S;
        return {1, std::is_void<E>::value ? '?' : code_of<E>(), {0, 0, 0}, sizeof(S)};
    } else {
        return {0, code_of<P>(), {0, 0, 0}, sizeof(P)};
    }
}
template <class P> inline P unpack(void* p) {
    if constexpr (std::is_pointer<P>::value) return (P)p;
    else return *(P*)p;
}
template <class... P, size_t... I> inline void call(void (*k)(P...), void** a, std::index_sequence<I...>) {
    k(unpack<P>(a[I])...);
}
template <class... P> void invoke(void (*k)(), void** a) {
    call((void (*)(P...))k, a, std::index_sequence_for<P...>());
}
template <class... P> inline int run(fl_desc* d, void (*k)(P...), const void* marker) {
    static const fl_param params[sizeof...(P) + 1] = {param<P>()..., {0, 0, {0, 0, 0}, 0}};
    return fl_launch(d, &invoke<P...>, (void (*)())k, params, (int)sizeof...(P), marker);
}
struct SharedRegistration {
    SharedRegistration(const char* name, void* addr, uint64_t bytes) {
        fl_register_shared(name, addr, bytes);
    }
};
}  // namespace fl
