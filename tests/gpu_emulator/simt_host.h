// The CUDA built-ins the kernels of kernels/ use, emulated on the host, so the GPU backend's
// kernels and its Rust driver code run (slowly, exactly) on a machine without a GPU.
//
// A launch runs its blocks one after another on the calling OS thread; all emulator state is
// per OS thread, so launches from different threads run in parallel. Every thread of a block is
// a fiber (its own stack) on that OS thread: the scheduler resumes each fiber in turn until it reaches
// __syncthreads() or returns, so shared memory, barriers and the block reductions behave as on
// a GPU. What a GPU would do silently or undefinedly is an error here: a barrier reached by some
// threads while others returned, a launch whose argument count differs from the kernel's
// parameters, a pointer argument outside every device allocation.
//
// The emulator compiles each kernel program as C++ with this header first and `QWEN_SIMT_HOST`
// defined, which selects the GPU path of kernels/common.cuh; it then appends, per kernel, a
// `simt_launch_<name>` entry point (tests/gpu_emulator/mod.rs). Not emulated: warp-level
// primitives (the kernels use none), concurrency between blocks (they never communicate).
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <type_traits>
#include <utility>

#define QWEN_SIMT_HOST 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
// One block runs at a time per OS thread, so a function-local thread-local static is the
// block's shared memory.
#define __shared__ static thread_local

#define QWEN_SIMT_HIDDEN __attribute__((visibility("hidden")))

struct dim3 {
    unsigned x, y, z;
};

// Not `static`: the scheduler changes them between a fiber's switches, and the compiler must
// reload them after every __syncthreads (an external call).
QWEN_SIMT_HIDDEN thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

// The bit-cast intrinsics, all one memcpy.
template <class To, class From>
static inline To qwen_simt_bits(From x) {
    static_assert(sizeof(To) == sizeof(From), "same size");
    To y;
    memcpy(&y, &x, sizeof y);
    return y;
}
static inline float __int_as_float(int i) { return qwen_simt_bits<float>(i); }
static inline float __uint_as_float(unsigned u) { return qwen_simt_bits<float>(u); }
static inline unsigned __float_as_uint(float f) { return qwen_simt_bits<unsigned>(f); }
static inline int __float_as_int(float f) { return qwen_simt_bits<int>(f); }

namespace simt {

enum State { READY, AT_BARRIER, DONE };

struct Fiber {
    void* sp;  // saved stack pointer (x86-64) while switched out
    State state;
};

const unsigned MAX_THREADS = 1024;
// Per fiber; the kernels' frames are small (a 32-float decode buffer). The lowest page of
// each stack is a guard page, so an overflow faults instead of corrupting a neighbour.
const size_t STACK_BYTES = 64 * 1024;
const size_t PAGE = 4096;

QWEN_SIMT_HIDDEN thread_local Fiber fibers[MAX_THREADS];
// This OS thread's fiber stacks, mapped at its first launch and unmapped when it exits.
struct StackArea {
    char* base = nullptr;
    ~StackArea() {
        if (base) munmap(base, MAX_THREADS * STACK_BYTES);
    }
};
QWEN_SIMT_HIDDEN thread_local StackArea stack_area;
QWEN_SIMT_HIDDEN thread_local unsigned cur;
// The kernel call every fiber of the current launch makes.
QWEN_SIMT_HIDDEN thread_local void (*body)(void*);
QWEN_SIMT_HIDDEN thread_local void* body_ctx;

}  // namespace simt

#if defined(__x86_64__)
// Saves the callee-saved registers on the current stack, stores the stack pointer in *save and
// continues on `next` (a stack this function saved, or a new fiber's prepared one).
extern "C" QWEN_SIMT_HIDDEN void qwen_simt_switch(void** save, void* next);
__asm__(
    ".text\n"
    ".p2align 4\n"
    ".type qwen_simt_switch,@function\n"
    "qwen_simt_switch:\n"
    "  pushq %rbp\n"
    "  pushq %rbx\n"
    "  pushq %r12\n"
    "  pushq %r13\n"
    "  pushq %r14\n"
    "  pushq %r15\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  popq %r15\n"
    "  popq %r14\n"
    "  popq %r13\n"
    "  popq %r12\n"
    "  popq %rbx\n"
    "  popq %rbp\n"
    "  ret\n"
    ".size qwen_simt_switch, .-qwen_simt_switch\n");

namespace simt {
QWEN_SIMT_HIDDEN thread_local void* sched_sp;

[[noreturn]] static void fiber_entry() {
    body(body_ctx);
    fibers[cur].state = DONE;
    qwen_simt_switch(&fibers[cur].sp, sched_sp);
    __builtin_trap();
}

static void fiber_init(unsigned i) {
    void** sp = (void**)(stack_area.base + (i + 1) * STACK_BYTES);
    *--sp = nullptr;                      // fiber_entry's return address: it never returns
    *--sp = (void*)&fiber_entry;          // where the first switch's `ret` goes
    for (int r = 0; r < 6; ++r) *--sp = nullptr;  // rbp rbx r12..r15
    fibers[i].sp = sp;
    fibers[i].state = READY;
}

static inline void resume(unsigned i) { qwen_simt_switch(&sched_sp, fibers[i].sp); }
static inline void yield_to_scheduler() { qwen_simt_switch(&fibers[cur].sp, sched_sp); }
}  // namespace simt
#else
#include <ucontext.h>
namespace simt {
QWEN_SIMT_HIDDEN thread_local ucontext_t sched_ctx, fiber_ctx[MAX_THREADS];

static void fiber_entry() {
    body(body_ctx);
    fibers[cur].state = DONE;
}

static void fiber_init(unsigned i) {
    getcontext(&fiber_ctx[i]);
    fiber_ctx[i].uc_stack.ss_sp = stack_area.base + i * STACK_BYTES + PAGE;
    fiber_ctx[i].uc_stack.ss_size = STACK_BYTES - PAGE;
    fiber_ctx[i].uc_link = &sched_ctx;
    makecontext(&fiber_ctx[i], fiber_entry, 0);
    fibers[i].state = READY;
}

static inline void resume(unsigned i) { swapcontext(&sched_ctx, &fiber_ctx[i]); }
static inline void yield_to_scheduler() { swapcontext(&fiber_ctx[cur], &sched_ctx); }
}  // namespace simt
#endif

static inline void __syncthreads() {
    simt::fibers[simt::cur].state = simt::AT_BARRIER;
    __asm__ volatile("" ::: "memory");
    simt::yield_to_scheduler();
    __asm__ volatile("" ::: "memory");
}

namespace simt {

// Validates a pointer argument: non-zero when `p` lies inside a device allocation.
typedef int (*PtrCheck)(const void* ctx, const void* p);

static int ensure_stacks(char* err, size_t n) {
    if (stack_area.base) return 0;
    void* m = mmap(nullptr, MAX_THREADS * STACK_BYTES, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
        snprintf(err, n, "cannot map fiber stacks");
        return 1;
    }
    for (unsigned i = 0; i < MAX_THREADS; ++i) mprotect((char*)m + i * STACK_BYTES, PAGE, PROT_NONE);
    stack_area.base = (char*)m;
    return 0;
}

// Runs every thread of the current block to completion, barrier phase by barrier phase.
static int run_block(unsigned nt, char* err, size_t n) {
    for (unsigned i = 0; i < nt; ++i) fiber_init(i);
    unsigned done = 0;
    while (done < nt) {
        unsigned arrived = 0, finished = 0;
        for (unsigned i = 0; i < nt; ++i) {
            if (fibers[i].state == DONE) continue;
            fibers[i].state = READY;
            cur = i;
            threadIdx.x = i % blockDim.x;
            threadIdx.y = (i / blockDim.x) % blockDim.y;
            threadIdx.z = i / (blockDim.x * blockDim.y);
            resume(i);
            if (fibers[i].state == DONE) ++finished;
            else ++arrived;
        }
        done += finished;
        if (arrived && finished) {
            snprintf(err, n,
                     "block (%u, %u, %u): %u thread(s) returned while %u waited at __syncthreads "
                     "(a barrier every thread must reach)",
                     blockIdx.x, blockIdx.y, blockIdx.z, finished, arrived);
            return 1;
        }
    }
    return 0;
}

static int run_grid(const unsigned* g, char* err, size_t n) {
    gridDim = dim3{g[0], g[1], g[2]};
    blockDim = dim3{g[3], g[4], g[5]};
    unsigned long long nt = (unsigned long long)g[3] * g[4] * g[5];
    if (!g[0] || !g[1] || !g[2] || nt == 0 || nt > MAX_THREADS || g[4] > 1024 || g[5] > 64 ||
        g[1] > 65535 || g[2] > 65535) {
        snprintf(err, n, "invalid launch: grid (%u, %u, %u), block (%u, %u, %u)", g[0], g[1], g[2],
                 g[3], g[4], g[5]);
        return 1;
    }
    if (ensure_stacks(err, n)) return 1;
    for (unsigned z = 0; z < g[2]; ++z)
        for (unsigned y = 0; y < g[1]; ++y)
            for (unsigned x = 0; x < g[0]; ++x) {
                blockIdx = dim3{x, y, z};
                if (run_block((unsigned)nt, err, n)) return 1;
            }
    return 0;
}

template <class... Ts>
struct Call {
    void (*f)(Ts...);
    void** args;
};

template <class... Ts, size_t... I>
static void invoke(void (*f)(Ts...), void** a, std::index_sequence<I...>) {
    f(*static_cast<Ts*>(a[I])...);
}

template <class... Ts>
static void run_call(void* c) {
    Call<Ts...>* k = static_cast<Call<Ts...>*>(c);
    invoke(k->f, k->args, std::index_sequence_for<Ts...>{});
}

template <class T>
static int check_arg(void* slot, int i, PtrCheck ok, const void* ctx, char* err, size_t n) {
    if (std::is_pointer<T>::value) {
        const void* p = *static_cast<const void* const*>(slot);
        if (p && !ok(ctx, p)) {
            snprintf(err, n, "argument %d (%p) points outside every device allocation", i, p);
            return 1;
        }
    }
    return 0;
}

template <class... Ts, size_t... I>
static int check_args(void** a, PtrCheck ok, const void* ctx, char* err, size_t n,
                      std::index_sequence<I...>) {
    int bad = 0;
    int each[] = {0, (bad = bad || check_arg<Ts>(a[I], (int)I, ok, ctx, err, n))...};
    (void)each;
    return bad;
}

// A launch of kernel `f` with `nargs` argument pointers (as cuLaunchKernel takes them) over the
// grid and block extents g[0..6].
template <class... Ts>
static int launch(void (*f)(Ts...), void** args, int nargs, const unsigned* g, PtrCheck ok,
                  const void* ctx, char* err, size_t n) {
    if (nargs != (int)sizeof...(Ts)) {
        snprintf(err, n, "the kernel takes %d argument(s), the launch passed %d", (int)sizeof...(Ts),
                 nargs);
        return 1;
    }
    if (check_args<Ts...>(args, ok, ctx, err, n, std::index_sequence_for<Ts...>{})) return 1;
    Call<Ts...> c{f, args};
    body = run_call<Ts...>;
    body_ctx = &c;
    return run_grid(g, err, n);
}

}  // namespace simt

// Appended after the kernels, once per kernel: extern "C" int simt_launch_<name>(...).
#define QWEN_SIMT_ENTRY(name)                                                                    \
    extern "C" int simt_launch_##name(void** args, int nargs, const unsigned* g,                 \
                                      simt::PtrCheck ok, const void* ctx, char* err, size_t n) { \
        return simt::launch(&name, args, nargs, g, ok, ctx, err, n);                             \
    }
