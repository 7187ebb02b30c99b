/* fl_rt.cpp: the CPU runtime. A thread block of CUDA threads runs as fibers on one OS thread.
 *
 * Every CUDA thread of a block has its own fiber (stack). The scheduler runs the block warp by
 * warp: each lane runs until it reaches a barrier (__syncthreads), a warp collective (a
 * shuffle, a vote, __syncwarp) or the kernel's end, then the next lane runs. A warp collective
 * completes when the last lane of its mask arrives; a barrier when every thread of the block
 * is at it. What cannot complete is a fault with a message: threads at different barriers, or
 * at a barrier that others have returned past (barrier divergence); lanes of a mask that never
 * reach the collective. Workers (OS threads) take blocks from one counter.
 *
 * Memory: every buffer is copied into its own mapping with a guard page after it (its end at
 * the end of a page) and before it, so a read or write out of bounds faults; the signal
 * handler names the buffer and the index. Dynamic shared memory is guarded the same way, each
 * fiber's stack has a guard page, and shared memory starts each block as NaN (0xff bytes).
 *
 * Race check: the launch runs twice with the same inputs, threads, warps and blocks in
 * opposite orders. At every barrier each block's shared memory is hashed in 128-byte chunks; a
 * chunk that differs between the runs was written and read with no barrier between (a race),
 * and the message names the barriers around it and the bytes. Global buffers that no atomic
 * touched must come out bit-identical too.
 *
 * Compiled once per machine into a library that kernel libraries link (flashlab/cpu/build.py).
 * No C++ standard library here: it compiles in well under a second.
 */
#include "fl_abi.h"
#include "fl_fiber.h"
#include "fl_rt_api.h"

#include <dlfcn.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include <new>

namespace fl {

/* A growable array of plain structs. */
template <class T> struct Vec {
    T* p = nullptr;
    size_t n = 0, cap = 0;
    void reserve(size_t k) {
        if (k <= cap) return;
        cap = k < 16 ? 16 : k;
        p = (T*)realloc(p, cap * sizeof(T));
    }
    void push(const T& v) {
        if (n == cap) reserve(cap ? 2 * cap : 16);
        p[n++] = v;
    }
    void resize(size_t k) {
        reserve(k);
        if (k > n) memset((void*)(p + n), 0, (k - n) * sizeof(T));
        n = k;
    }
    void release() {
        free(p);
        p = nullptr;
        n = cap = 0;
    }
    T& operator[](size_t i) { return p[i]; }
    size_t size() const { return n; }
    T* begin() { return p; }
    T* end() { return p + n; }
};

enum State : int { READY, BARRIER, WARP, DONE };

struct Thread {
    uint3 tid;
    int linear, warp, lane, st;
    const char* file;  // where it waits: a barrier or a collective
    int line, op;
    unsigned mask;
    uint64_t val, res;
    int arg, width;
    Fiber fiber;
};

struct Region {
    const char* name;
    void* addr;
    uint64_t bytes;
};
/* the static __shared__ arrays reached on this OS thread: each registers itself once */
static thread_local Vec<Region> statics;

struct Buffer {
    const fl_arg* arg;
    char *map, *data, *initial, *first;  // initial, first: the race check's copies
    size_t map_bytes, bytes, span, elem;
    int atomic;  // an atomic touched it: its bits may depend on the order of adds
};

struct Launch;

struct Worker {
    Launch* L;
    Fiber sched;
    Vec<Thread> threads;
    char* stacks;
    size_t stack_bytes, stacks_map, page;
    char *smem_map, *smem;
    size_t smem_map_bytes;
    uint3 bid;
    unsigned block;
    int smem_atomic;
    size_t rec_pos;
    const char* last_file;  // the barrier that opened the current interval
    int last_line;
    sigjmp_buf jb;
    pthread_t os;
    int active;
    int sig, sig_write;  // a signal, written by the handler and reported after the jump
    uintptr_t sig_addr, sig_pc, sig_sp;
    Thread* sig_thread;
};

static thread_local Worker* W = nullptr;
static thread_local Thread* T = nullptr;

struct Launch {
    fl_desc* d;
    void (*invoke)(void (*)(), void**);
    void (*kfn)();
    const void* marker;
    dim3 grid, block;
    unsigned nblocks, nthreads;
    void** argv;
    Vec<Buffer> bufs;
    unsigned next;
    int failed;
    int pass;   // 0: one run; 1: the race check's first run (records); 2: its second (compares)
    int order;  // 1: threads, warps and blocks in reverse
    Vec<uint64_t>* rec;  // per block: per barrier, its length, its line and its chunk hashes
};

static pthread_mutex_t report_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t launch_mu = PTHREAD_MUTEX_INITIALIZER;

/* ---- faults ------------------------------------------------------------------------------ */

static void ranges(char* out, size_t n, const int* ids, size_t count) {
    size_t k = 0;
    out[0] = 0;
    for (size_t i = 0; i < count && k + 24 < n;) {
        size_t j = i;
        while (j + 1 < count && ids[j + 1] == ids[j] + 1) ++j;
        k += snprintf(out + k, n - k, i ? ", %d" : "%d", ids[i]);
        if (j > i) k += snprintf(out + k, n - k, "-%d", ids[j]);
        i = j + 1;
    }
}

/* The first fault of a launch wins; what other workers hit while stopping is dropped. */
__attribute__((format(printf, 3, 4))) static void report(Launch* L, int kind, const char* fmt, ...) {
    pthread_mutex_lock(&report_mu);
    if (!__atomic_load_n(&L->failed, __ATOMIC_SEQ_CST)) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(L->d->error, L->d->error_size, fmt, ap);
        va_end(ap);
        L->d->fault_kind = kind;
        __atomic_store_n(&L->failed, 1, __ATOMIC_SEQ_CST);
    }
    pthread_mutex_unlock(&report_mu);
}

static int failed(Launch* L) { return __atomic_load_n(&L->failed, __ATOMIC_RELAXED); }

static const char* who(char* out, size_t n, Worker* w, Thread* t) {
    snprintf(out, n, "thread (%u, %u, %u) of block (%u, %u, %u)", t ? t->tid.x : 0,
             t ? t->tid.y : 0, t ? t->tid.z : 0, w->bid.x, w->bid.y, w->bid.z);
    return out;
}

/* A fault inside the kernel: report it, end this thread, hand back to the scheduler. */
__attribute__((noreturn)) static void fault_here(int kind, const char* msg) {
    char at[96];
    report(W->L, kind, "%s in kernel %s, %s", msg, W->L->d->kernel, who(at, sizeof at, W, T));
    T->st = DONE;
    fiber_switch(T->fiber, W->sched);
    __builtin_unreachable();
}

__attribute__((format(printf, 2, 3), noreturn)) static void faultf(int kind, const char* fmt, ...) {
    char msg[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fault_here(kind, msg);
}

/* ---- a thread's life --------------------------------------------------------------------- */

static void thread_main() {
    Launch* L = W->L;
    L->invoke(L->kfn, L->argv);
    T->st = DONE;
    fiber_switch(T->fiber, W->sched);
    __builtin_unreachable();
}

static void complete_warp(Worker* w, int warp) {
    Thread* lanes = &w->threads[warp * 32];
    const int left = (int)w->threads.size() - warp * 32, n = left < 32 ? left : 32;
    Thread* first = nullptr;
    for (int i = 0; i < n && !first; ++i)
        if (lanes[i].st == WARP) first = &lanes[i];
    if (!first) return;
    const unsigned part = first->mask & (n == 32 ? 0xffffffffu : ((1u << n) - 1));
    for (int i = 0; i < n; ++i)
        if ((part >> i & 1u) && lanes[i].st != WARP) return;  // not everyone is here yet
    unsigned ballot = 0;
    for (int i = 0; i < n; ++i) {
        Thread& x = lanes[i];
        if (!(part >> i & 1u)) continue;
        if (x.op != first->op || x.mask != first->mask || x.line != first->line ||
            strcmp(x.file, first->file) != 0)
            faultf(FL_FAULT_WARP, "warp divergence: in warp %d lane %d is at the warp collective "
                   "at %s:%d (mask 0x%08x) but lane %d at the one at %s:%d (mask 0x%08x); every "
                   "lane of a mask must reach the same collective", warp, first->lane,
                   first->file, first->line, first->mask, x.lane, x.file, x.line, x.mask);
        if (x.val) ballot |= 1u << i;
    }
    for (int i = 0; i < n; ++i) {
        Thread& x = lanes[i];
        if (!(part >> i & 1u)) continue;
        const int width = x.width, seg = i & ~(width - 1);
        int src = i;
        switch (x.op) {
            case SHFL: src = seg + (x.arg & (width - 1)); break;
            case SHFL_XOR: src = i ^ x.arg; if (src < seg || src >= seg + width) src = i; break;
            case SHFL_UP: src = i - x.arg; if (src < seg) src = i; break;
            case SHFL_DOWN: src = i + x.arg; if (src >= seg + width) src = i; break;
            default: break;
        }
        if (x.op == BALLOT) x.res = ballot;
        else if (x.op == ANY) x.res = ballot != 0;
        else if (x.op == ALL) x.res = ballot == part;
        else if (x.op == SYNCWARP) x.res = 0;
        else if (src >= n || !(part >> src & 1u))
            faultf(FL_FAULT_WARP, "%s:%d: lane %d's shuffle reads lane %d, which is not in the "
                   "mask 0x%08x", x.file, x.line, i, src, x.mask);
        else x.res = lanes[src].val;
    }
    for (int i = 0; i < n; ++i)
        if (part >> i & 1u) lanes[i].st = READY;
}

}  // namespace fl

using namespace fl;

extern "C" {

const uint3* fl_thread_idx(void) { return &T->tid; }
const uint3* fl_block_idx(void) { return &W->bid; }
const dim3* fl_block_dim(void) { return &W->L->block; }
const dim3* fl_grid_dim(void) { return &W->L->grid; }
void* fl_dynamic_smem(void) { return W->smem; }
int fl_quiet(void) { return W && W->L->pass == 2; }
int fl_flush(int printed) {
    fflush(stdout);
    return printed;
}
void fl_fault(int kind, const char* message) { fault_here(kind, message); }

int fl_barrier(const char* file, int line, int op, int pred) {
    Thread* t = T;
    t->st = BARRIER;
    t->file = file;
    t->line = line;
    t->op = op;
    t->val = pred != 0;
    fiber_switch(t->fiber, W->sched);
    return (int)t->res;
}

/* The last lane of the mask to arrive completes the collective and goes on without a switch. */
uint64_t fl_warp(int op, const char* file, int line, unsigned mask, uint64_t value, int arg,
                 int width) {
    Thread* t = T;
    if (!(mask >> t->lane & 1u))
        faultf(FL_FAULT_WARP, "%s:%d: lane %d calls a warp collective whose mask 0x%08x leaves "
               "it out", file, line, t->lane, mask);
    t->st = WARP;
    t->op = op;
    t->file = file;
    t->line = line;
    t->mask = mask;
    t->val = value;
    t->arg = arg;
    t->width = width;
    complete_warp(W, t->warp);
    if (t->st == WARP) fiber_switch(t->fiber, W->sched);
    return t->res;
}

unsigned fl_active_mask(void) {
    unsigned m = 0;
    Thread* lanes = &W->threads[T->warp * 32];
    const int n = (int)W->threads.size() - T->warp * 32;
    for (int i = 0; i < 32 && i < n; ++i)
        if (lanes[i].st != DONE) m |= 1u << i;
    return m;
}

void fl_register_shared(const char* name, void* addr, uint64_t bytes) {
    statics.push({name, addr, bytes});
    memset(addr, 0xff, bytes);  // uninitialised shared memory reads as NaN
}

/* An atomic's address: in shared memory it turns the race check off for this barrier interval
 * (the order of float adds changes their bits); a global buffer is left out of the final
 * compare. */
void fl_note_atomic(const void* p) {
    Worker* w = W;
    const char* c = (const char*)p;
    if (c >= w->smem && c < w->smem + w->L->d->smem) { w->smem_atomic = 1; return; }
    for (Region& r : statics)
        if (c >= (const char*)r.addr && c < (const char*)r.addr + r.bytes) { w->smem_atomic = 1; return; }
    for (Buffer& b : w->L->bufs)
        if (c >= b.data && c < b.data + b.span) { __atomic_store_n(&b.atomic, 1, __ATOMIC_RELAXED); return; }
}

}  // extern "C"

#include "fl_rt_block.h"
#include "fl_rt_launch.h"
