/* fl_rt_api.h: what a kernel library calls in the runtime library (fl_rt.cpp). The runtime is
 * compiled once per machine and cached; a kernel's translation unit includes only this, the
 * ABI and cuda_cpu.h, so that it compiles in a fraction of a second. */
#pragma once
#include "fl_abi.h"

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
        : x(x_), y(y_), z(z_) {}
};

namespace fl {
enum Op : int { SYNC, SYNC_COUNT, SYNC_AND, SYNC_OR, SHFL, SHFL_XOR, SHFL_UP, SHFL_DOWN,
                BALLOT, ANY, ALL, SYNCWARP };
}

extern "C" {

typedef struct fl_param {
    int32_t pointer;  /* 1: a pointer parameter (a buffer) */
    char code;        /* its (pointee's) type, as fl_arg.code; '?' for any other type */
    char pad[3];
    uint64_t size;    /* sizeof the (pointee) type */
} fl_param;

/* the running CUDA thread's built-in variables */
const uint3* fl_thread_idx(void);
const uint3* fl_block_idx(void);
const dim3* fl_block_dim(void);
const dim3* fl_grid_dim(void);

/* __syncthreads and its _count/_and/_or forms (op), at file:line */
int fl_barrier(const char* file, int line, int op, int pred);
/* a warp collective: a shuffle (value as 64 bits), a vote or __syncwarp */
uint64_t fl_warp(int op, const char* file, int line, unsigned mask, uint64_t value, int arg,
                 int width);
unsigned fl_active_mask(void);

void* fl_dynamic_smem(void);
void fl_register_shared(const char* name, void* addr, uint64_t bytes);
void fl_note_atomic(const void* addr);
int fl_quiet(void);  /* 1 while the race check's second run runs: printf stays quiet */
int fl_flush(int printed);
__attribute__((noreturn)) void fl_fault(int kind, const char* message);

/* one launch: the entry point of each kernel calls this (cuda_cpu.h's fl::run) */
int fl_launch(fl_desc* d, void (*invoke)(void (*)(), void**), void (*kernel)(),
              const fl_param* params, int nparams, const void* marker);
}
