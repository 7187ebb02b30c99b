/* fl_abi.h: what Python (flashlab/cpu/kernels.py, through ctypes) hands a kernel entry point.
 * Plain C structs; keep in step with the ctypes mirror in flashlab/cpu/kernels.py. */
#pragma once
#include <stddef.h>
#include <stdint.h>

extern "C" {

typedef struct fl_arg {
    void* data;         /* a buffer: the host array's data; a scalar: a pointer to its value */
    uint64_t bytes;     /* a buffer's size in bytes; a scalar's size */
    const char* name;   /* the kernel parameter's name, for messages */
    char kind;          /* 'p' buffer, 's' scalar */
    char code;          /* element / scalar type: f float, d double, i int32, u uint32,
                           l int64, L uint64, h int16, b int8/bool, c char */
    char pad[6];
} fl_arg;

typedef struct fl_desc {
    const char* kernel;     /* the name the launcher asked for, for messages */
    uint32_t grid[3];
    uint32_t block[3];
    uint64_t smem;          /* dynamic shared memory, bytes */
    int32_t nargs;
    int32_t workers;        /* OS threads that run blocks (>= 1) */
    int32_t racecheck;      /* 1: run twice in two thread orders and compare */
    int32_t stack_kb;       /* each CUDA thread's stack */
    double timeout_s;       /* a launch running longer stops with a message */
    fl_arg* args;
    char* error;            /* out: a message when the entry returns non-zero */
    uint64_t error_size;
    /* out, when a fault stopped a thread: its program counter, for the Python side to turn
       into a file and line (addr2line on the library) */
    uint64_t fault_pc;
    uint64_t fault_lib_offset;
    int32_t fault_kind;     /* FL_FAULT_* below */
    int32_t pad;
} fl_desc;

}  // extern "C"

enum {
    FL_OK = 0,
    FL_FAULT_ARGS = 1,        /* the launch's arguments do not fit the kernel */
    FL_FAULT_BOUNDS = 2,      /* a global or shared access out of bounds */
    FL_FAULT_BARRIER = 3,     /* barrier divergence */
    FL_FAULT_WARP = 4,        /* a warp collective some lanes of the mask never reached */
    FL_FAULT_RACE = 5,        /* results depend on the order threads run in */
    FL_FAULT_TIMEOUT = 6,
    FL_FAULT_SIGNAL = 7,      /* another fault: a bad address, division by zero, stack */
    FL_FAULT_TRAP = 8,        /* assert() or __trap() in the kernel */
    FL_FAULT_LAUNCH = 9,      /* a bad grid, block or shared-memory size */
};
