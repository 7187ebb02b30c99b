/* fl_rt_block.h (part of fl_rt.cpp): running one block, the race check's snapshots, the
 * messages for what cannot complete, and the signal handler. */
#pragma once

namespace fl {

/* ---- the race check's shared-memory snapshots ---------------------------------------------- */

static uint64_t mix(uint64_t h, uint64_t w) { return (h ^ w) * 0x100000001b3ull; }

static void hash_chunks(Vec<uint64_t>& out, const char* p, size_t bytes) {
    for (size_t at = 0; at < bytes; at += 128) {
        uint64_t h = 0xcbf29ce484222325ull;
        const size_t end = at + 128 < bytes ? at + 128 : bytes;
        for (size_t k = at; k < end; k += 8) {
            uint64_t w = 0;
            memcpy(&w, p + k, end - k < 8 ? end - k : 8);
            h = mix(h, w);
        }
        out.push(h);
    }
}

/* Where chunk c of a snapshot lies: dynamic shared memory first, then each static array. */
static void name_chunk(char* out, size_t n, Worker* w, size_t c) {
    const size_t smem = w->L->d->smem, dyn = (smem + 127) / 128;
    if (c < dyn) {
        const size_t lo = c * 128, hi = (lo + 128 < smem ? lo + 128 : smem) - 1;
        snprintf(out, n, "bytes %zu-%zu of the dynamic shared memory (floats %zu-%zu of the "
                 "extern __shared__ array)", lo, hi, lo / 4, hi / 4);
        return;
    }
    c -= dyn;
    for (Region& r : statics) {
        const size_t k = (r.bytes + 127) / 128;
        if (c < k) {
            const size_t hi = (c * 128 + 128 < r.bytes ? c * 128 + 128 : r.bytes) - 1;
            snprintf(out, n, "bytes %zu-%zu of __shared__ %s", c * 128, hi, r.name);
            return;
        }
        c -= k;
    }
    snprintf(out, n, "shared memory");
}

/* At a barrier (file:line; file null at the block's end): record, or compare with the record. */
static void snapshot(Worker* w, const char* file, int line) {
    Launch* L = w->L;
    const char* prev_file = w->last_file;
    const int prev_line = w->last_line;
    w->last_file = file;
    w->last_line = line;
    if (!L->pass) return;
    static thread_local Vec<uint64_t> h;
    h.n = 0;
    h.push((uint64_t)line << 1 | (w->smem_atomic ? 1u : 0u));
    w->smem_atomic = 0;
    hash_chunks(h, w->smem, L->d->smem);
    for (Region& r : statics) hash_chunks(h, (const char*)r.addr, r.bytes);
    Vec<uint64_t>& rec = L->rec[w->block];
    if (L->pass == 1) {
        rec.push(h.size());
        for (uint64_t x : h) rec.push(x);
        return;
    }
    char from[200], to[200], what[200];
    if (prev_file) snprintf(from, sizeof from, "the __syncthreads() at %s:%d", prev_file, prev_line);
    else snprintf(from, sizeof from, "the kernel's start");
    if (file) snprintf(to, sizeof to, "the __syncthreads() at %s:%d", file, line);
    else snprintf(to, sizeof to, "the kernel's end");
    if (w->rec_pos >= rec.size() || rec[w->rec_pos] != h.size() ||
        (rec[w->rec_pos + 1] >> 1) != (uint64_t)line) {
        report(L, FL_FAULT_RACE, "race in kernel %s, block (%u, %u, %u): when its threads run in "
               "another order the block reaches its barriers in another sequence (after %s it "
               "next reached %s): a thread's path depends on shared memory that another thread "
               "writes with no barrier between", L->d->kernel, w->bid.x, w->bid.y, w->bid.z,
               from, to);
        return;
    }
    const uint64_t* old = &rec[w->rec_pos + 1];
    const bool atomics = (old[0] & 1u) || (h[0] & 1u);
    for (size_t c = 1; c < h.size() && !atomics; ++c)
        if (old[c] != h[c]) {
            name_chunk(what, sizeof what, w, c - 1);
            report(L, FL_FAULT_RACE, "shared-memory race in kernel %s, block (%u, %u, %u): "
                   "between %s and %s, %s hold different values when the block's threads run "
                   "in another order: a thread reads or writes shared memory that another thread "
                   "writes in the same interval. A __syncthreads() is missing between the write "
                   "and the read", L->d->kernel, w->bid.x, w->bid.y, w->bid.z, from, to, what);
            return;
        }
    w->rec_pos += rec[w->rec_pos] + 1;
}

/* Nothing can run and the block has not finished: say why. */
static void stuck(Worker* w) {
    Launch* L = w->L;
    Vec<Thread>& th = w->threads;
    const int n = (int)th.size();
    int* ids = (int*)malloc(sizeof(int) * n);
    int* others = (int*)malloc(sizeof(int) * n);
    int ni = 0, no = 0;
    char a[256], b[256], there[240];
    const Thread* wait = nullptr;
    for (Thread& t : th)
        if (t.st == WARP) { wait = &t; break; }
    if (wait) {
        for (Thread& x : th)
            if (x.warp == wait->warp) {
                if (x.st == WARP) ids[ni++] = x.lane;
                else if (wait->mask >> x.lane & 1u) others[no++] = x.lane;
            }
        ranges(a, sizeof a, ids, ni);
        ranges(b, sizeof b, others, no);
        const Thread& o = th[wait->warp * 32 + (no ? others[0] : 0)];
        report(L, FL_FAULT_WARP, "warp divergence in kernel %s, block (%u, %u, %u), warp %d: "
               "lanes %s wait at the warp collective at %s:%d (mask 0x%08x), but lanes %s of "
               "that mask %s", L->d->kernel, w->bid.x, w->bid.y, w->bid.z, wait->warp, a,
               wait->file, wait->line, wait->mask, b,
               o.st == DONE ? "have returned" : "wait at a __syncthreads()");
    } else {
        for (Thread& t : th)
            if (t.st == BARRIER) { wait = &t; break; }
        for (Thread& t : th)
            if (t.st == BARRIER && t.line == wait->line && !strcmp(t.file, wait->file)) ids[ni++] = t.linear;
            else others[no++] = t.linear;
        ranges(a, sizeof a, ids, ni);
        ranges(b, sizeof b, others, no);
        const Thread& o = th[others[0]];
        if (o.st == DONE) snprintf(there, sizeof there, "have returned without reaching it");
        else snprintf(there, sizeof there, "wait at the __syncthreads() at %s:%d instead", o.file, o.line);
        report(L, FL_FAULT_BARRIER, "barrier divergence in kernel %s, block (%u, %u, %u): threads "
               "%s wait at the __syncthreads() at %s:%d, threads %s %s. Every thread of a block "
               "must reach the same __syncthreads()", L->d->kernel, w->bid.x, w->bid.y, w->bid.z,
               a, wait->file, wait->line, b, there);
    }
    free(ids);
    free(others);
}

static void run_block(Worker* w, unsigned b) {
    Launch* L = w->L;
    const dim3 g = L->grid;
    w->block = b;
    w->bid = {b % g.x, (b / g.x) % g.y, b / (g.x * g.y)};
    w->rec_pos = 0;
    w->last_file = nullptr;
    w->smem_atomic = 0;
    memset(w->smem, 0xff, L->d->smem);
    for (Region& r : statics) memset(r.addr, 0xff, r.bytes);
    const int n = (int)w->threads.size(), nw = (n + 31) / 32;
    for (int i = 0; i < n; ++i) {
        Thread& t = w->threads[i];
        t.st = READY;
        fiber_init(t.fiber, w->stacks + (size_t)i * (w->stack_bytes + w->page) + w->page,
                   w->stack_bytes, thread_main);
    }
    for (;;) {
        for (int k = 0; k < nw; ++k) {
            const int wp = L->order ? nw - 1 - k : k, left = n - wp * 32;
            const int lanes = left < 32 ? left : 32;
            for (bool ran = true; ran;) {
                ran = false;
                for (int j = 0; j < lanes; ++j) {
                    Thread& t = w->threads[wp * 32 + (L->order ? lanes - 1 - j : j)];
                    if (t.st != READY) continue;
                    ran = true;
                    T = &t;
                    fiber_switch(w->sched, t.fiber);
                    T = nullptr;
                    if (failed(L)) return;
                }
            }
        }
        int done = 0, bar = 0;
        for (Thread& t : w->threads) done += t.st == DONE, bar += t.st == BARRIER;
        if (done == n) { snapshot(w, nullptr, 0); return; }
        if (bar < n) { stuck(w); return; }
        const Thread& f = w->threads[0];
        unsigned count = 0;
        for (Thread& t : w->threads) {
            if (t.line != f.line || t.op != f.op || strcmp(t.file, f.file)) { stuck(w); return; }
            count += (unsigned)t.val;
        }
        for (Thread& t : w->threads) {
            t.res = f.op == SYNC_COUNT ? count : f.op == SYNC_AND ? count == (unsigned)n
                  : f.op == SYNC_OR ? count != 0 : 0;
            t.st = READY;
        }
        snapshot(w, f.file, f.line);
        if (failed(L)) return;
    }
}

/* ---- signals ------------------------------------------------------------------------------ */

static struct sigaction old_actions[65];
static const int kSignals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGUSR2};

/* The faulting thread's program counter and stack pointer, from the signal's context. */
static void signal_regs(void* uc, uintptr_t* pc, uintptr_t* sp) {
    *pc = *sp = 0;
#if defined(__linux__) && defined(__x86_64__)
    const auto& m = ((ucontext_t*)uc)->uc_mcontext;
    *pc = (uintptr_t)m.gregs[REG_RIP], *sp = (uintptr_t)m.gregs[REG_RSP];
#elif defined(__linux__) && defined(__aarch64__)
    const auto& m = ((ucontext_t*)uc)->uc_mcontext;
    *pc = (uintptr_t)m.pc, *sp = (uintptr_t)m.sp;
#elif defined(__APPLE__) && defined(__x86_64__)
    const auto& m = ((ucontext_t*)uc)->uc_mcontext->__ss;
    *pc = (uintptr_t)m.__rip, *sp = (uintptr_t)m.__rsp;
#elif defined(__APPLE__) && defined(__aarch64__)
    const auto& m = ((ucontext_t*)uc)->uc_mcontext->__ss;
    *pc = (uintptr_t)m.__pc, *sp = (uintptr_t)m.__sp;
#else
    (void)uc;
#endif
}

static void on_signal(int sig, siginfo_t* info, void* uc) {
    Worker* w = W;
    if (!w) {  // not a thread of this launch: the handler installed before ours gets it
        struct sigaction& old = old_actions[sig];
        if (old.sa_flags & SA_SIGINFO) {
            if (old.sa_sigaction) old.sa_sigaction(sig, info, uc);
        } else if (old.sa_handler == SIG_DFL) {
            signal(sig, SIG_DFL);
            raise(sig);
        } else if (old.sa_handler != SIG_IGN) {
            old.sa_handler(sig);
        }
        return;
    }
    w->sig = sig;
    w->sig_addr = (uintptr_t)info->si_addr;
    signal_regs(uc, &w->sig_pc, &w->sig_sp);
    w->sig_thread = T;
    w->sig_write = -1;
#if defined(__linux__) && defined(__x86_64__)
    if (sig == SIGSEGV) w->sig_write = (((ucontext_t*)uc)->uc_mcontext.gregs[REG_ERR] & 2) ? 1 : 0;
#endif
    siglongjmp(w->jb, 1);
}

static void install_signals() {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    for (int s : kSignals) sigaction(s, &sa, &old_actions[s]);
}

static void restore_signals() {
    for (int s : kSignals) sigaction(s, &old_actions[s], nullptr);
}

/* What a signal in a worker meant, as a message. */
static void report_signal(Worker* w) {
    Launch* L = w->L;
    char at[96], what[420];
    who(at, sizeof at, w, w->sig_thread);
    const uintptr_t a = w->sig_addr;
    int kind = FL_FAULT_SIGNAL;
    const char* rw = w->sig_write == 1 ? "write to" : w->sig_write == 0 ? "read of" : "access to";
    snprintf(what, sizeof what, "signal %d", w->sig);
    if (w->sig == SIGUSR2) {
        kind = FL_FAULT_TIMEOUT;
        snprintf(what, sizeof what, "the launch ran longer than %.0f s (an endless loop?); "
                 "FLASHLAB_CPU_TIMEOUT sets the limit", L->d->timeout_s);
    } else if (w->sig == SIGFPE) {
        snprintf(what, sizeof what, "an integer division by zero (or INT_MIN / -1)");
    } else if (w->sig == SIGILL) {
        snprintf(what, sizeof what, "an illegal instruction");
    } else {
        const Thread* t = w->sig_thread;
        const uintptr_t bottom = t ? (uintptr_t)w->stacks + (size_t)t->linear * (w->stack_bytes + w->page)
                                       + w->page : 0;
        const bool below = t && w->sig_sp && w->sig_sp < bottom;  // the frame passed its stack
        bool found = false;
        if (below || (a >= (uintptr_t)w->stacks && a < (uintptr_t)w->stacks + w->stacks_map)) {
            snprintf(what, sizeof what, "a stack overflow: the thread's local variables passed "
                     "its %zu KB (FLASHLAB_CPU_STACK_KB sets it)", w->stack_bytes / 1024);
            found = true;
        }
        for (Buffer& b : L->bufs)
            if (!found && a >= (uintptr_t)b.map && a < (uintptr_t)b.map + b.map_bytes) {
                const long long off = (long long)(a - (uintptr_t)b.data);
                const long long idx = off >= 0 ? off / (long long)b.elem
                                               : -((-off + (long long)b.elem - 1) / (long long)b.elem);
                snprintf(what, sizeof what, "out-of-bounds %s %s[%lld]: %s holds %lld elements, "
                         "so the index is %s", rw, b.arg->name, idx, b.arg->name,
                         (long long)(b.bytes / b.elem), idx < 0 ? "below 0" : "past its end");
                kind = FL_FAULT_BOUNDS;
                found = true;
            }
        if (!found && a >= (uintptr_t)w->smem_map && a < (uintptr_t)w->smem_map + w->smem_map_bytes) {
            snprintf(what, sizeof what, "out-of-bounds %s dynamic shared memory at byte %lld: the "
                     "launch gave it %llu bytes (shared_mem)", rw, (long long)(a - (uintptr_t)w->smem),
                     (unsigned long long)L->d->smem);
            kind = FL_FAULT_BOUNDS;
            found = true;
        }
        if (!found)
            snprintf(what, sizeof what, "a %s address 0x%llx that is in none of the launch's "
                     "buffers%s", rw, (unsigned long long)a,
                     a < 4096 ? " (a null pointer)" : " (a wild pointer, or a misaligned vector access)");
    }
    Dl_info info, self;
    if (w->sig_pc && dladdr((void*)w->sig_pc, &info) && dladdr(L->marker, &self) &&
        info.dli_fbase == self.dli_fbase) {
        L->d->fault_pc = w->sig_pc;
        L->d->fault_lib_offset = w->sig_pc - (uintptr_t)info.dli_fbase;
    }
    report(L, kind, "%s in kernel %s, %s", what, L->d->kernel, at);
}

}  // namespace fl
