"""The CPU backend's runtime (flashlab/cpu/runtime/) against CUDA's semantics, on small kernels
written here: built-in variables, barriers, warp collectives, atomics, shared memory; and every
fault a student makes becomes a message naming the kernel and where, never a hang or a crash."""
import numpy as np
import pytest

from flashlab.cpu import build
from flashlab.cpu.kernels import CpuBackend, KernelFault
from flashlab.launch.errors import KernelCompileError
from flashlab.launch.sources import Source

pytestmark = pytest.mark.cpu_kernel

FULL = np.uint32(0xFFFFFFFF)


def kernel(text: str, name: str = "k", entries: tuple = ()):
    """Kernel `name` of CUDA C `text` (a file called test.cu), compiled for the CPU."""
    src = Source("test.cu", f'#line 1 "test.cu"\n{text}')
    return CpuBackend().compile(src, ("-std=c++17",), entries).get_function(name)


def line_of(text: str, marker: str) -> int:
    return next(n for n, row in enumerate(text.splitlines(), 1) if marker in row)


def poisoned(*shape, dtype=np.float32):
    return np.full(shape, np.nan if np.dtype(dtype).kind == "f" else -7, dtype)


def test_builtin_variables_of_a_3d_grid_and_block():
    src = """
extern "C" __global__ void k(int* out) {
    const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const int i = b * blockDim.x * blockDim.y * blockDim.z + t;
    out[6 * i + 0] = threadIdx.x; out[6 * i + 1] = threadIdx.y; out[6 * i + 2] = threadIdx.z;
    out[6 * i + 3] = blockIdx.x;  out[6 * i + 4] = blockIdx.y;  out[6 * i + 5] = blockIdx.z;
}"""
    out = poisoned(2 * 3 * 2 * 4 * 2 * 3 * 6, dtype=np.int32)
    kernel(src)((2, 3, 2), (4, 2, 3), (out,))
    got = out.reshape(-1, 6)
    want = [(tx, ty, tz, bx, by, bz) for bz in range(2) for by in range(3) for bx in range(2)
            for tz in range(3) for ty in range(2) for tx in range(4)]
    assert got.tolist() == [list(w) for w in want]


def test_warp_shuffles_and_votes_follow_cuda_semantics():
    src = """
extern "C" __global__ void k(float* x, int* i, unsigned* votes) {
    const int t = threadIdx.x, lane = t % 32;
    x[4 * t + 0] = __shfl_xor_sync(0xffffffffu, 1.5f * t, 5);
    x[4 * t + 1] = __shfl_down_sync(0xffffffffu, 1.5f * t, 3);
    x[4 * t + 2] = __shfl_up_sync(0xffffffffu, 1.5f * t, 2);
    x[4 * t + 3] = __shfl_sync(0xffffffffu, 1.5f * t, 7, 16);
    i[t] = __shfl_xor_sync(0xffffffffu, t * 1000, 16, 16);
    votes[3 * t + 0] = __ballot_sync(0xffffffffu, lane % 3 == 0);
    votes[3 * t + 1] = __any_sync(0xffffffffu, t == 40);
    votes[3 * t + 2] = __all_sync(0xffffffffu, lane < 31);
}"""
    x, i, votes = poisoned(64 * 4), poisoned(64, dtype=np.int32), np.zeros(64 * 3, np.uint32)
    kernel(src)((1,), (64,), (x, i, votes))
    t = np.arange(64)
    lane, base = t % 32, t - t % 32
    x = x.reshape(64, 4)
    assert (x[:, 0] == 1.5 * (base + (lane ^ 5))).all()
    down = np.where(lane + 3 < 32, t + 3, t)
    up = np.where(lane - 2 >= 0, t - 2, t)
    assert (x[:, 1] == 1.5 * down).all() and (x[:, 2] == 1.5 * up).all()
    assert (x[:, 3] == 1.5 * (t - t % 16 + 7)).all()  # width 16: lane 7 of each half-warp
    assert (i == t * 1000).all()  # xor 16 leaves a 16-lane segment: the own value
    ballot = sum(1 << n for n in range(32) if n % 3 == 0)
    votes = votes.reshape(64, 3)
    assert (votes[:, 0] == ballot).all()
    assert (votes[:, 1] == (t >= 32)).all() and (votes[:, 2] == 0).all()


def test_barriers_count_and_static_and_dynamic_shared_memory():
    src = """
extern "C" __global__ void k(const float* in, float* out, int* counts) {
    __shared__ float tile[128];
    extern __shared__ float dyn[];
    const int t = threadIdx.x;
    tile[t] = in[blockIdx.x * 128 + t];
    dyn[127 - t] = 2.0f * tile[t];
    const int n = __syncthreads_count(t % 4 == 0);
    out[blockIdx.x * 128 + t] = tile[(t + 1) % 128] + dyn[t];
    counts[blockIdx.x * 3 + 0] = n;
    counts[blockIdx.x * 3 + 1] = __syncthreads_and(t < 200);
    counts[blockIdx.x * 3 + 2] = __syncthreads_or(t == 5);
}"""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(3 * 128).astype(np.float32)
    out, counts = poisoned(3 * 128), poisoned(9, dtype=np.int32)
    kernel(src)((3,), (128,), (x, out, counts), shared_mem=128 * 4)
    xb = x.reshape(3, 128)
    want = np.roll(xb, -1, axis=1) + 2.0 * xb[:, ::-1]
    assert np.array_equal(out.reshape(3, 128), want.astype(np.float32))
    assert counts.tolist() == [32, 1, 1] * 3


def test_atomic_add_from_every_block_and_thread():
    src = """
extern "C" __global__ void k(float* total, int* hits) {
    atomicAdd(total, 0.5f);
    atomicAdd(&hits[threadIdx.x % 4], 1);
}"""
    total, hits = np.zeros(1, np.float32), np.zeros(4, np.int32)
    kernel(src)((37,), (96,), (total, hits))
    assert total[0] == 0.5 * 37 * 96 and hits.tolist() == [37 * 24] * 4


def test_printf_prints_once_although_the_race_check_runs_twice(capfd):
    src = r"""
extern "C" __global__ void k(int* x) {
    if (threadIdx.x == 3) printf("thread %d says %d\n", threadIdx.x, x[0]);
}"""
    kernel(src)((1,), (32,), (np.array([42], np.int32),))
    assert capfd.readouterr().out.count("thread 3 says 42") == 1


def test_barrier_divergence_names_the_kernel_the_barrier_and_the_threads():
    src = """
extern "C" __global__ void k(float* x) {
    if (threadIdx.x < 64) {
        x[threadIdx.x] = 1.0f;
        __syncthreads();  // BARRIER
    }
}"""
    with pytest.raises(KernelFault) as e:
        kernel(src)((1,), (128,), (np.zeros(128, np.float32),))
    msg = str(e.value)
    assert e.value.kind == "barrier-divergence"
    assert f"test.cu:{line_of(src, 'BARRIER')}" in msg and "kernel k" in msg
    assert "threads 0-63 wait" in msg and "threads 64-127 have returned" in msg


def test_threads_at_two_different_barriers_are_divergence():
    src = """
extern "C" __global__ void k(float* x) {
    if (threadIdx.x % 2) __syncthreads();  // ODD
    else __syncthreads();                  // EVEN
}"""
    with pytest.raises(KernelFault) as e:
        kernel(src)((1,), (64,), (np.zeros(1, np.float32),))
    msg = str(e.value)
    assert e.value.kind == "barrier-divergence"
    assert f"test.cu:{line_of(src, 'ODD')}" in msg and f"test.cu:{line_of(src, 'EVEN')}" in msg


def test_a_shuffle_half_the_mask_never_reaches_is_warp_divergence():
    src = """
extern "C" __global__ void k(float* x) {
    if (threadIdx.x < 16) x[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);  // SHFL
}"""
    with pytest.raises(KernelFault) as e:
        kernel(src)((1,), (32,), (np.zeros(32, np.float32),))
    assert e.value.kind == "warp-divergence"
    assert f"test.cu:{line_of(src, 'SHFL')}" in str(e.value) and "lanes 16-31" in str(e.value)


@pytest.mark.parametrize("index,shown", [("threadIdx.x + 1", "x[64]"), ("(int)threadIdx.x - 1", "x[-1]")])
def test_an_out_of_bounds_write_names_the_buffer_and_the_index(index, shown):
    src = f"""
extern "C" __global__ void k(const float* in, float* x) {{
    x[{index}] = in[threadIdx.x];  // WRITE
}}"""
    with pytest.raises(KernelFault) as e:
        kernel(src)((1,), (64,), (np.ones(64, np.float32), np.zeros(64, np.float32)))
    msg = str(e.value)
    assert e.value.kind == "out-of-bounds" and shown in msg and "x holds 64 elements" in msg
    assert "kernel k" in msg
    if build.shutil.which("addr2line"):
        assert e.value.where == f"test.cu:{line_of(src, 'WRITE')}", msg


def test_an_out_of_bounds_read_of_a_ragged_buffer_is_found():
    # 63 floats: not a whole number of 16-byte units, the end still faults or is caught
    src = """
extern "C" __global__ void k(const float* in, float* x) {
    x[threadIdx.x] = in[threadIdx.x + 2];
}"""
    with pytest.raises(KernelFault) as e:
        kernel(src)((1,), (63,), (np.ones(63, np.float32), np.zeros(63, np.float32)))
    assert e.value.kind == "out-of-bounds" and "in[" in str(e.value)


def test_reading_past_the_dynamic_shared_memory_is_out_of_bounds():
    src = """
extern "C" __global__ void k(float* x) {
    extern __shared__ float s[];
    s[threadIdx.x] = 1.0f;
    __syncthreads();
    x[threadIdx.x] = s[threadIdx.x + 32];
}"""
    with pytest.raises(KernelFault) as e:
        kernel(src)((1,), (32,), (np.zeros(32, np.float32),), shared_mem=32 * 4)
    assert e.value.kind == "out-of-bounds" and "dynamic shared memory" in str(e.value)


RACE = """
extern "C" __global__ void k(const float* in, float* out) {
    extern __shared__ float s[];
    s[threadIdx.x] = in[threadIdx.x];
    %s
    out[threadIdx.x] = s[(threadIdx.x + 1) %% 64];
    __syncthreads();  // AFTER
}"""


def test_a_missing_syncthreads_is_a_race_named_by_its_barriers():
    src = RACE % "// (no barrier here)"
    with pytest.raises(KernelFault) as e:
        kernel(src)((1,), (64,), (np.arange(64, dtype=np.float32), np.zeros(64, np.float32)),
                    shared_mem=64 * 4)
    msg = str(e.value)
    assert e.value.kind == "race"
    assert "the kernel's start" in msg or "race on global memory" in msg, msg


def test_the_same_kernel_with_its_barrier_raises_nothing():
    out = np.zeros(64, np.float32)
    kernel(RACE % "__syncthreads();")((1,), (64,), (np.arange(64, dtype=np.float32), out),
                                      shared_mem=64 * 4)
    assert (out == (np.arange(64) + 1) % 64).all()


def test_a_shared_race_between_two_barriers_names_both():
    src = """
extern "C" __global__ void k(float* out) {
    __shared__ float s[64];
    s[threadIdx.x] = threadIdx.x;
    __syncthreads();  // FIRST
    s[threadIdx.x] = s[(threadIdx.x + 1) % 64] + 1.0f;
    __syncthreads();  // SECOND
    out[threadIdx.x] = s[threadIdx.x];
}"""
    with pytest.raises(KernelFault) as e:
        kernel(src)((1,), (64,), (np.zeros(64, np.float32),))
    msg = str(e.value)
    assert e.value.kind == "race" and "__shared__ s" in msg
    assert f"test.cu:{line_of(src, 'FIRST')}" in msg and f"test.cu:{line_of(src, 'SECOND')}" in msg


def test_two_blocks_writing_one_element_is_a_race_on_global_memory():
    src = """
extern "C" __global__ void k(float* out) {
    if (threadIdx.x == 0) out[0] = blockIdx.x;
}"""
    with pytest.raises(KernelFault) as e:
        kernel(src)((4,), (32,), (np.zeros(1, np.float32),))
    assert e.value.kind == "race" and "out[0]" in str(e.value)


def test_an_endless_loop_stops_at_the_timeout(monkeypatch):
    monkeypatch.setenv("FLASHLAB_CPU_TIMEOUT", "1")
    src = """
extern "C" __global__ void k(volatile int* flag) {
    while (flag[0] == 0) { }
}"""
    with pytest.raises(KernelFault) as e:
        kernel(src)((1,), (32,), (np.zeros(1, np.int32),))
    assert e.value.kind == "timeout" and "longer than 1 s" in str(e.value)


def test_assert_division_by_zero_and_stack_overflow_are_messages(monkeypatch):
    src = """
extern "C" __global__ void k(int* x, int n) {
    assert(x[threadIdx.x] < n);  // ASSERT
}"""
    with pytest.raises(KernelFault) as e:
        kernel(src)((1,), (32,), (np.arange(32, dtype=np.int32), np.int32(10)))
    assert e.value.kind == "assert" and f"test.cu:{line_of(src, 'ASSERT')}" in str(e.value)
    src = """
extern "C" __global__ void k(int* x, int n) { x[threadIdx.x] = x[threadIdx.x] / n; }"""
    with pytest.raises(KernelFault) as e:
        kernel(src)((1,), (32,), (np.arange(32, dtype=np.int32), np.int32(0)))
    assert "division by zero" in str(e.value)
    src = """
extern "C" __global__ void k(float* x) {
    volatile float big[200000];
    big[threadIdx.x * 1000] = 1.0f;
    x[threadIdx.x] = big[threadIdx.x];
}"""
    monkeypatch.setenv("FLASHLAB_CPU_STACK_KB", "64")
    with pytest.raises(KernelFault) as e:
        kernel(src)((1,), (32,), (np.zeros(32, np.float32),))
    assert "stack overflow" in str(e.value)


def test_arguments_that_do_not_fit_the_parameters_are_named():
    src = """
extern "C" __global__ void k(const float* q, float* out, int n) { }"""
    k = kernel(src)
    with pytest.raises(KernelFault, match=r"argument 0 \(q\).*float32 pointer.*float64 array"):
        k((1,), (32,), (np.zeros(4), np.zeros(4, np.float32), np.int32(4)))
    with pytest.raises(KernelFault, match=r"argument 2 \(n\).*int32.*float32"):
        k((1,), (32,), (np.zeros(4, np.float32), np.zeros(4, np.float32), np.float32(4)))
    with pytest.raises(KernelFault, match=r"takes 3 arguments, but the launch passed 2"):
        k((1,), (32,), (np.zeros(4, np.float32), np.zeros(4, np.float32)))
    with pytest.raises(KernelFault, match=r"block \(2048, 1, 1\) is not a CUDA block"):
        k((1,), (2048,), (np.zeros(4, np.float32), np.zeros(4, np.float32), 4))


def test_inline_ptx_is_refused_with_its_line_and_a_compile_error_names_the_students_line():
    src = """
extern "C" __global__ void k(float* x) {
    asm volatile("bar.sync 0;");  // PTX
}"""
    with pytest.raises(build.CpuUnsupported, match=rf"test.cu:{line_of(src, 'PTX')}: .*inline PTX"):
        kernel(src)
    src = """
extern "C" __global__ void k(float* x) {
    x[0] = undefined_thing;  // TYPO
}"""
    with pytest.raises(KernelCompileError, match=rf"test.cu:{line_of(src, 'TYPO')}:.*undefined_thing"):
        kernel(src)


def test_a_second_module_of_the_same_source_loads_the_cached_library(monkeypatch):
    src = """
extern "C" __global__ void k(float* x) { x[threadIdx.x] = 2.0f * threadIdx.x; }"""
    kernel(src)
    monkeypatch.setattr(build, "_compile", lambda *a: pytest.fail("compiled again"))
    x = poisoned(32)
    kernel(src)((1,), (32,), (x,))
    assert (x == 2.0 * np.arange(32)).all()


def test_template_kernels_compile_one_instance_at_a_time():
    src = """
template <int N> __global__ void k(float* x) { x[threadIdx.x] = N; }"""
    for n in (3, 5):
        x = poisoned(32)
        kernel(src, f"k<{n}>", (f"k<{n}>",))((1,), (32,), (x,))
        assert (x == n).all()
