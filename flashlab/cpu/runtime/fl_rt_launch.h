/* fl_rt_launch.h (part of fl_rt.cpp): workers, the watchdog, guarded buffers, and fl_launch:
 * check the arguments against the kernel's parameters, copy the buffers into guarded memory,
 * run every block (twice, in opposite orders, for the race check), copy the results back. */
#pragma once

namespace fl {

/* An mmap'd [guard][data pages][guard] whose data ends at the end of its pages (rounded up to
 * `align`), so an access past the end faults; or, at_start, whose data starts its pages, so an
 * access below index 0 faults. Each guard is as large as the data and at least 1 MB (address
 * space only), so an index that is off by a whole row or a whole tile faults too. The rest of
 * the data pages reads 0xff. */
static size_t guard_bytes(size_t pages, size_t page) {
    const size_t g = pages > ((size_t)1 << 20) ? pages : ((size_t)1 << 20);
    return (g + page - 1) / page * page;
}

static bool guarded(char** map, size_t* map_bytes, char** data, size_t bytes, size_t align,
                    size_t page, bool at_start = false) {
    size_t span = (bytes + align - 1) / align * align;
    if (span == 0) span = align;
    const size_t pages = (span + page - 1) / page * page, guard = guard_bytes(pages, page);
    *map_bytes = pages + 2 * guard;
    void* m = mmap(nullptr, *map_bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (m == MAP_FAILED) return false;
    *map = (char*)m;
    if (mprotect(*map + guard, pages, PROT_READ | PROT_WRITE) != 0) {
        munmap(m, *map_bytes);
        return false;
    }
    *data = at_start ? *map + guard : *map + guard + pages - span;
    memset(*map + guard, 0xff, pages);
    return true;
}

static bool worker_setup(Worker* w, Launch* L) {
    w->L = L;
    w->page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t kb = L->d->stack_kb > 16 ? (size_t)L->d->stack_kb : 16;
    w->stack_bytes = (kb * 1024 + w->page - 1) / w->page * w->page;
    w->stacks_map = (size_t)L->nthreads * (w->stack_bytes + w->page);
    void* m = mmap(nullptr, w->stacks_map, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return false;
    w->stacks = (char*)m;
    for (unsigned i = 0; i < L->nthreads; ++i)  // a guard page below each stack
        mprotect(w->stacks + (size_t)i * (w->stack_bytes + w->page), w->page, PROT_NONE);
    if (!guarded(&w->smem_map, &w->smem_map_bytes, &w->smem, L->d->smem, 16, w->page)) return false;
    w->threads.resize(L->nthreads);
    const dim3 bd = L->block;
    for (unsigned i = 0; i < L->nthreads; ++i) {
        Thread& t = w->threads[i];
        t.linear = (int)i;
        t.tid = {i % bd.x, (i / bd.x) % bd.y, i / (bd.x * bd.y)};
        t.warp = (int)i / 32;
        t.lane = (int)i % 32;
    }
    return true;
}

static void worker_free(Worker* w) {
    if (w->stacks) munmap(w->stacks, w->stacks_map);
    if (w->smem_map) munmap(w->smem_map, w->smem_map_bytes);
    w->threads.release();
}

static void* worker_run(void* arg) {
    Worker* w = (Worker*)arg;
    Launch* L = w->L;
    static thread_local char alt[64 * 1024];  // the signal handler's stack
    stack_t ss, old_ss;
    ss.ss_sp = alt;
    ss.ss_size = sizeof alt;
    ss.ss_flags = 0;
    sigaltstack(&ss, &old_ss);
    W = w;
    w->os = pthread_self();
    __atomic_store_n(&w->active, 1, __ATOMIC_SEQ_CST);
    if (sigsetjmp(w->jb, 1) == 0) {
        for (;;) {
            if (failed(L)) break;
            const unsigned k = __atomic_fetch_add(&L->next, 1u, __ATOMIC_RELAXED);
            if (k >= L->nblocks) break;
            run_block(w, L->order ? L->nblocks - 1 - k : k);
        }
    } else {
        report_signal(w);
    }
    __atomic_store_n(&w->active, 0, __ATOMIC_SEQ_CST);
    W = nullptr;
    T = nullptr;
    sigaltstack(&old_ss, nullptr);
    return nullptr;
}

struct Watch {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int finished;
    Launch* L;
    Worker* ws;
    int n;
};

static void* watchdog(void* arg) {
    Watch* wd = (Watch*)arg;
    timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    const double t = wd->L->d->timeout_s > 0 ? wd->L->d->timeout_s : 1e9;
    until.tv_sec += (time_t)t;
    until.tv_nsec += (long)((t - (double)(time_t)t) * 1e9);
    if (until.tv_nsec >= 1000000000L) until.tv_sec += 1, until.tv_nsec -= 1000000000L;
    pthread_mutex_lock(&wd->mu);
    while (!wd->finished)
        if (pthread_cond_timedwait(&wd->cv, &wd->mu, &until) != 0) break;
    if (!wd->finished)
        for (int i = 0; i < wd->n; ++i)
            if (__atomic_load_n(&wd->ws[i].active, __ATOMIC_SEQ_CST)) pthread_kill(wd->ws[i].os, SIGUSR2);
    pthread_mutex_unlock(&wd->mu);
    return nullptr;
}

/* One run of every block on `workers` OS threads (the caller's own when 1), with a watchdog. */
static void run_all(Launch* L, int workers) {
    L->next = 0;
    Worker* ws = (Worker*)calloc(workers, sizeof(Worker));
    for (int i = 0; i < workers; ++i)
        if (!worker_setup(&ws[i], L)) {
            report(L, FL_FAULT_LAUNCH, "kernel %s: out of memory for %u thread stacks of %d KB",
                   L->d->kernel, L->nthreads, L->d->stack_kb);
            for (int k = 0; k < workers; ++k) worker_free(&ws[k]);
            free(ws);
            return;
        }
    Watch wd = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, L, ws, workers};
    pthread_t dog;
    pthread_create(&dog, nullptr, watchdog, &wd);
    if (workers == 1) {
        worker_run(&ws[0]);
    } else {
        pthread_t* os = (pthread_t*)calloc(workers, sizeof(pthread_t));
        for (int i = 0; i < workers; ++i) pthread_create(&os[i], nullptr, worker_run, &ws[i]);
        for (int i = 0; i < workers; ++i) pthread_join(os[i], nullptr);
        free(os);
    }
    pthread_mutex_lock(&wd.mu);
    wd.finished = 1;
    pthread_cond_signal(&wd.cv);
    pthread_mutex_unlock(&wd.mu);
    pthread_join(dog, nullptr);
    for (int i = 0; i < workers; ++i) worker_free(&ws[i]);
    free(ws);
}

/* ---- arguments ------------------------------------------------------------------------------ */

static const char* type_name(char c) {
    switch (c) {
        case 'f': return "float32"; case 'd': return "float64"; case 'i': return "int32";
        case 'u': return "uint32"; case 'l': return "int64"; case 'L': return "uint64";
        case 'h': return "int16"; case 'H': return "uint16"; case 'b': return "int8 or bool";
        case 'B': return "uint8"; case 'I': return "a Python int"; case 'F': return "a Python float";
    }
    return "another type";
}

__attribute__((format(printf, 3, 4))) static int arg_error(fl_desc* d, int i, const char* fmt, ...) {
    char why[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    snprintf(d->error, d->error_size, "kernel %s, argument %d (%s): %s", d->kernel, i,
             d->args[i].name, why);
    return d->fault_kind = FL_FAULT_ARGS;
}

/* A scalar argument as its parameter's type (a Python int or float converts). */
static int scalar(fl_desc* d, int i, const fl_param& p, uint64_t* out) {
    const fl_arg& a = d->args[i];
    const bool fp = p.code == 'f' || p.code == 'd';
    *out = 0;
    if (a.code == 'I' || a.code == 'F') {
        long long iv = 0;
        double fv = 0;
        if (a.code == 'I') memcpy(&iv, a.data, 8), fv = (double)iv;
        else memcpy(&fv, a.data, 8);
        if (a.code == 'F' && !fp)
            return arg_error(d, i, "the kernel takes %s but the launch passed a Python float",
                             type_name(p.code));
        if (p.code == 'f') { float f = (float)fv; memcpy(out, &f, 4); }
        else if (p.code == 'd') memcpy(out, &fv, 8);
        else memcpy(out, &iv, p.size);  // little-endian: the low bytes
        return 0;
    }
    if (a.code != p.code || a.bytes != p.size)
        return arg_error(d, i, "the kernel takes %s but the launch passed %s", type_name(p.code),
                         type_name(a.code));
    memcpy(out, a.data, p.size);
    return 0;
}

static int launch_checks(fl_desc* d, const fl_param* params, int nparams) {
    if (d->nargs != nparams) {
        snprintf(d->error, d->error_size, "kernel %s takes %d arguments, but the launch passed %d",
                 d->kernel, nparams, d->nargs);
        return d->fault_kind = FL_FAULT_ARGS;
    }
    for (int i = 0; i < nparams; ++i) {
        const fl_arg& a = d->args[i];
        const fl_param& p = params[i];
        if (p.pointer && a.kind != 'p')
            return arg_error(d, i, "the kernel takes a pointer (%s*) but the launch passed a "
                             "scalar (%s)", type_name(p.code), type_name(a.code));
        if (!p.pointer && a.kind != 's')
            return arg_error(d, i, "the kernel takes a scalar (%s) but the launch passed an array",
                             type_name(p.code));
        if (p.pointer && p.code != '?' && a.code != p.code)
            return arg_error(d, i, "the kernel takes a %s pointer but the launch passed a %s "
                             "array", type_name(p.code), type_name(a.code));
    }
    const unsigned *b = d->block, *g = d->grid;
    if (!b[0] || !b[1] || !b[2] || (unsigned long long)b[0] * b[1] * b[2] > 1024 || b[2] > 64) {
        snprintf(d->error, d->error_size, "kernel %s: block (%u, %u, %u) is not a CUDA block (1 "
                 "to 1024 threads, z at most 64)", d->kernel, b[0], b[1], b[2]);
        return d->fault_kind = FL_FAULT_LAUNCH;
    }
    if (!g[0] || !g[1] || !g[2] || g[1] > 65535 || g[2] > 65535 || g[0] > 0x7fffffffu) {
        snprintf(d->error, d->error_size, "kernel %s: grid (%u, %u, %u) is not a CUDA grid (x "
                 "below 2^31, y and z at most 65535, none 0)", d->kernel, g[0], g[1], g[2]);
        return d->fault_kind = FL_FAULT_LAUNCH;
    }
    if (d->smem > 227 * 1024) {
        snprintf(d->error, d->error_size, "kernel %s: %llu bytes of dynamic shared memory; no GPU "
                 "gives a block more than 227 KB", d->kernel, (unsigned long long)d->smem);
        return d->fault_kind = FL_FAULT_LAUNCH;
    }
    return 0;
}

/* A write into the bytes around a buffer that no guard page covers: its index, or false. */
static bool slack_written(const Buffer& b, size_t page, long long* index) {
    const size_t pages = (b.span + page - 1) / page * page, g = guard_bytes(pages, page);
    for (const char* p = b.map + g; p < b.data; ++p)
        if ((unsigned char)*p != 0xff) {
            *index = -(((long long)(b.data - p) + (long long)b.elem - 1) / (long long)b.elem);
            return true;
        }
    for (const char* p = b.data + b.bytes; p < b.map + b.map_bytes - g; ++p)
        if ((unsigned char)*p != 0xff) {
            *index = (long long)(p - b.data) / (long long)b.elem;
            return true;
        }
    return false;
}

/* A write the guard pages missed (into the bytes around a buffer in its pages): a fault. */
static bool written_around(Launch* L, size_t page) {
    for (Buffer& b : L->bufs) {
        long long idx;
        if (b.map && slack_written(b, page, &idx)) {
            report(L, FL_FAULT_BOUNDS, "out-of-bounds write to %s[%lld] in kernel %s: %s holds "
                   "%llu elements", b.arg->name, idx, L->d->kernel, b.arg->name,
                   (unsigned long long)(b.bytes / b.elem));
            return true;
        }
    }
    return false;
}

static void race_on_globals(Launch* L) {
    for (Buffer& b : L->bufs) {
        if (b.atomic || !memcmp(b.first, b.data, b.bytes)) continue;
        size_t k = 0;
        while (k < b.bytes && b.first[k] == b.data[k]) ++k;
        const size_t e = k / b.elem;
        char one[64] = "one value", two[64] = "another";
        if (b.arg->code == 'f') {
            float x, y;
            memcpy(&x, b.first + e * 4, 4);
            memcpy(&y, b.data + e * 4, 4);
            snprintf(one, sizeof one, "%.9g", x);
            snprintf(two, sizeof two, "%.9g", y);
        }
        report(L, FL_FAULT_RACE, "race on global memory in kernel %s: %s[%zu] is %s when the "
               "threads and blocks run in one order and %s in another: two threads (or blocks) "
               "write one element, or one reads what another writes, with no barrier between",
               L->d->kernel, b.arg->name, e, one, two);
        return;
    }
}

}  // namespace fl

extern "C" int fl_launch(fl_desc* d, void (*invoke)(void (*)(), void**), void (*kernel)(),
                         const fl_param* params, int nparams, const void* marker) {
    d->fault_kind = 0;
    d->fault_pc = d->fault_lib_offset = 0;
    if (d->error_size) d->error[0] = 0;
    if (int e = launch_checks(d, params, nparams)) return e;
    Launch L;
    memset((void*)&L, 0, sizeof L);
    L.d = d;
    L.invoke = invoke;
    L.kfn = kernel;
    L.marker = marker;
    L.grid = dim3(d->grid[0], d->grid[1], d->grid[2]);
    L.block = dim3(d->block[0], d->block[1], d->block[2]);
    L.nblocks = d->grid[0] * d->grid[1] * d->grid[2];
    L.nthreads = d->block[0] * d->block[1] * d->block[2];
    uint64_t* scalars = (uint64_t*)calloc(nparams + 1, 8);
    L.argv = (void**)calloc(nparams + 1, sizeof(void*));
    L.bufs.reserve(nparams + 1);
    int* whichs = (int*)malloc(sizeof(int) * (nparams + 1));  // each argument's buffer, or -1
    for (int i = 0; i <= nparams; ++i) whichs[i] = -1;
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    int rc = 0;
    for (int i = 0; i < nparams && !rc; ++i) {
        const fl_arg& a = d->args[i];
        if (!params[i].pointer) {
            rc = scalar(d, i, params[i], &scalars[i]);
            L.argv[i] = &scalars[i];
            continue;
        }
        int& which = whichs[i];
        for (size_t k = 0; k < L.bufs.size(); ++k)  // one copy of an array passed twice
            if (L.bufs[k].arg->data == a.data && L.bufs[k].bytes == a.bytes) which = (int)k;
        if (which < 0) {
            Buffer b;
            memset((void*)&b, 0, sizeof b);
            b.arg = &a;
            b.bytes = a.bytes;
            b.elem = params[i].size ? params[i].size : 1;
            b.span = a.bytes ? (a.bytes + 15) / 16 * 16 : 16;  // as guarded() lays it out
            if (!guarded(&b.map, &b.map_bytes, &b.data, a.bytes, 16, page)) {
                snprintf(d->error, d->error_size, "kernel %s: out of memory copying %s (%llu "
                         "bytes)", d->kernel, a.name, (unsigned long long)a.bytes);
                rc = d->fault_kind = FL_FAULT_LAUNCH;
                break;
            }
            memcpy(b.data, a.data, a.bytes);
            which = (int)L.bufs.size();
            L.bufs.push(b);
        }
        L.argv[i] = L.bufs[which].data;
    }
    if (!rc) {
        int workers = d->workers < 1 ? 1 : d->workers;
        if ((unsigned)workers > L.nblocks) workers = (int)L.nblocks;
        // the race check compares two runs in opposite block orders: only one worker keeps each
        // run's order what it says (with two, the last writer of an element is up to timing)
        if (d->racecheck) workers = 1;
        pthread_mutex_lock(&launch_mu);  // one launch at a time: the signal handlers are global
        install_signals();
        if (d->racecheck) {
            for (Buffer& b : L.bufs) {
                b.initial = (char*)malloc(b.bytes + 1);
                memcpy(b.initial, b.data, b.bytes);
            }
            L.rec = (Vec<uint64_t>*)calloc(L.nblocks, sizeof(Vec<uint64_t>));
            L.pass = 1;
            run_all(&L, workers);
            if (!failed(&L)) {  // (a write below a buffer faults in the second run, with its line)
                for (Buffer& b : L.bufs) {  // the second run's buffers start their pages
                    b.first = (char*)malloc(b.bytes + 1);
                    memcpy(b.first, b.data, b.bytes);
                    munmap(b.map, b.map_bytes);
                    if (!guarded(&b.map, &b.map_bytes, &b.data, b.bytes, 16, page, true)) {
                        report(&L, FL_FAULT_LAUNCH, "kernel %s: out of memory", d->kernel);
                        b.map = nullptr;
                        break;
                    }
                    memcpy(b.data, b.initial, b.bytes);
                }
                for (int i = 0; i < nparams; ++i)
                    if (whichs[i] >= 0) L.argv[i] = L.bufs[whichs[i]].data;
                L.pass = 2;
                L.order = 1;
                if (!failed(&L)) run_all(&L, workers);
                if (!failed(&L)) race_on_globals(&L);
            }
            for (unsigned k = 0; k < L.nblocks; ++k) L.rec[k].release();
            free(L.rec);
        } else {
            run_all(&L, workers);
        }
        restore_signals();
        pthread_mutex_unlock(&launch_mu);
        rc = failed(&L) ? d->fault_kind : 0;
    }
    if (!rc && written_around(&L, page)) rc = d->fault_kind;
    for (Buffer& b : L.bufs) {
        if (!rc) memcpy(b.arg->data, b.data, b.bytes);
        if (b.map) munmap(b.map, b.map_bytes);
        free(b.initial);
        free(b.first);
    }
    L.bufs.release();
    free(whichs);
    free(L.argv);
    free(scalars);
    return rc;
}
