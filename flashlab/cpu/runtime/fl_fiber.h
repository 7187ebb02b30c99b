/* fl_fiber.h: one stack per CUDA thread, and the switch between them.
 *
 * A fiber is a stack and a saved stack pointer. fl_switch(&from, to) saves the callee-saved
 * registers on the current stack, stores its stack pointer in *from, loads `to` and restores
 * what was saved there: a function call that returns on another stack. On x86-64 (Linux,
 * macOS) that is a few instructions written below; elsewhere (aarch64 Linux and macOS) it is
 * ucontext's swapcontext, slower (it saves the signal mask too) but portable.
 */
#pragma once
#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__) && !defined(FLASHLAB_UCONTEXT)
#define FL_FIBER_ASM 1
#else
#ifndef _XOPEN_SOURCE
#define _XOPEN_SOURCE 700
#endif
#include <ucontext.h>
#endif

namespace fl {

#ifdef FL_FIBER_ASM
#if defined(__APPLE__)
#define FL_SYM(name) "_" #name
#else
#define FL_SYM(name) #name
#endif
extern "C" void fl_switch_stack(void** from_sp, void* to_sp);
extern "C" void fl_fiber_trampoline();
/* Callee-saved registers of the SysV ABI: rbp, rbx, r12-r15 (and the stack pointer). */
asm(".text\n"
    ".globl " FL_SYM(fl_switch_stack) "\n"
#if !defined(__APPLE__)
    ".hidden " FL_SYM(fl_switch_stack) "\n"
#else
    ".private_extern " FL_SYM(fl_switch_stack) "\n"
#endif
    FL_SYM(fl_switch_stack) ":\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n");

struct Fiber {
    void* sp = nullptr;
};

/* A new fiber on [stack, stack + size) that starts in entry(). entry must never return. */
inline void fiber_init(Fiber& f, char* stack, size_t size, void (*entry)()) {
    uintptr_t top = ((uintptr_t)(stack + size)) & ~(uintptr_t)15;
    void** sp = (void**)top;
    *--sp = nullptr;          // entry's own "return address" slot: keeps rsp % 16 == 8 there
    *--sp = (void*)entry;     // fl_switch_stack's ret lands in entry
    for (int i = 0; i < 6; ++i) *--sp = nullptr;  // rbp rbx r12 r13 r14 r15
    f.sp = sp;
}
inline void fiber_switch(Fiber& from, Fiber& to) { fl_switch_stack(&from.sp, to.sp); }

#else  // ucontext

struct Fiber {
    ucontext_t ctx;
};

inline void fiber_init(Fiber& f, char* stack, size_t size, void (*entry)()) {
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = stack;
    f.ctx.uc_stack.ss_size = size;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, entry, 0);
}
inline void fiber_switch(Fiber& from, Fiber& to) { swapcontext(&from.ctx, &to.ctx); }
#endif

}  // namespace fl
