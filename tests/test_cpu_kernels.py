"""flashlab's own kernels (kernels/naive.cu, fa1.cu, fa2.cu) on the CPU backend, in CI: each
equals the float64 oracle on ragged shapes and writes every output element, each trace matches
its step-through tile by tile, and every planted bug is found at the step and line where the
GPU finds it (tests/test_kernels_gpu.py holds the same kernels to the same on a GPU)."""
import numpy as np
import pytest

import flashlab
from flashlab import course, launch
from flashlab.cpu import host
from flashlab.cpu.kernels import KernelFault
from flashlab.kernel_check import check_kernel
from flashlab.launch import plans, sources
from flashlab.reference import naive_attention, naive_attention_backward
from kernel_cases import FP32_KERNELS, PLANTED, case_id, cases, inputs, rel

pytestmark = pytest.mark.cpu_kernel

# the GPU suite's shapes less the slowest (N = 300 at every kernel): N = 1, odd N, Nq != Nk both
# ways, every head dim of fa2, fa1's odd head dims
CPU_SHAPES = [
    (1, 2, 1, 1, 16, False), (1, 1, 1, 5, 32, True), (2, 1, 127, 127, 64, False),
    (1, 2, 200, 77, 32, True), (1, 1, 77, 200, 128, True), (1, 2, 130, 70, 96, True),
]
CPU_FA1_ONLY = [(1, 2, 50, 61, 40, True), (1, 1, 33, 17, 1, False)]


@pytest.mark.parametrize("kernel,B,H,Nq,Nk,d,causal",
                         [pytest.param(*c, id=case_id(*c)) for c in cases(CPU_SHAPES, CPU_FA1_ONLY)])
def test_kernel_on_the_cpu_equals_the_float64_oracle_and_writes_every_element(
        rng, kernel, B, H, Nq, Nk, d, causal):
    q, k, v, do = inputs(rng, B, H, Nq, Nk, d)
    q64, k64, v64, do64 = (x.astype(np.float64) for x in (q, k, v, do))
    o_ref, lse_ref = naive_attention(q64, k64, v64, causal)
    grads_ref = naive_attention_backward(do64, q64, k64, v64, causal)
    poison = [np.full((B, H, Nq, d), np.nan, np.float32), np.full((B, H, Nq), np.nan, np.float32)]
    o, lse = launch.forward(kernel, q, k, v, causal, out=poison)
    assert o is poison[0] and np.isfinite(o).all() and np.isfinite(lse).all(), \
        "an output element was never written"
    assert rel(o, o_ref) < 2e-5, rel(o, o_ref)
    assert rel(lse, lse_ref) < 2e-6
    poison = [np.full(s, np.nan, np.float32) for s in ((B, H, Nq, d), (B, H, Nk, d), (B, H, Nk, d))]
    grads = launch.backward(kernel, do, q, k, v, o, lse, causal, out=poison)
    for g, g_ref, name in zip(grads, grads_ref, ("dq", "dk", "dv")):
        assert np.isfinite(g).all(), f"{name}: an element was never written"
        assert rel(g, g_ref) < 1e-4, (name, rel(g, g_ref))


@pytest.mark.parametrize("kernel", FP32_KERNELS)
def test_public_api_backend_cpu_runs_the_kernel_and_honours_the_scale(rng, kernel):
    q, k, v, do = inputs(rng, 1, 2, 90, 70, 32)
    o_ref, lse_ref = naive_attention(*(x.astype(np.float64) for x in (q, k, v)), True, 0.3)
    o, lse = flashlab.flash_attention(q, k, v, True, 0.3, kernel=kernel, return_lse=True,
                                      backend="cpu")
    assert isinstance(o, np.ndarray) and o.dtype == np.float32 and rel(o, o_ref) < 2e-5
    dq, _, _ = flashlab.flash_attention_backward(do, q, k, v, o, lse, True, 0.3, kernel=kernel,
                                                 backend="cpu")
    ref = naive_attention_backward(*(x.astype(np.float64) for x in (do, q, k, v)), True, 0.3)
    assert rel(dq, ref[0]) < 1e-4


def test_the_environment_switch_routes_numpy_to_the_cpu_backend(rng, monkeypatch):
    q, k, v, _ = inputs(rng, 1, 1, 40, 40, 16)
    calls = []
    real = launch.forward
    monkeypatch.setattr(launch, "forward", lambda *a, **kw: calls.append(a[0]) or real(*a, **kw))
    flashlab.flash_attention(q, k, v)
    assert calls == []  # the step-through by default
    monkeypatch.setenv("FLASHLAB_BACKEND", "cpu")
    o = flashlab.flash_attention(q, k, v)
    assert calls == ["fa2"] and rel(o, naive_attention(*(x.astype(float) for x in (q, k, v)))[0]) < 2e-5
    monkeypatch.setenv("FLASHLAB_BACKEND", "gpu")
    with pytest.raises(ValueError, match="FLASHLAB_BACKEND must be 'reference' or 'cpu', got 'gpu'"):
        flashlab.flash_attention(q, k, v)


def test_bad_cpu_inputs_name_the_argument_and_the_fix(rng):
    q, k, v, _ = inputs(rng, 1, 1, 16, 16, 32)
    with pytest.raises(ValueError, match="kernel 'tc' cannot run on the CPU backend: it uses inline PTX"):
        flashlab.flash_attention(q, k, v, kernel="tc", backend="cpu")
    with pytest.raises(TypeError, match=r"q has dtype float64; kernel 'fa1' on the CPU takes float32"):
        launch.forward("fa1", *(x.astype(np.float64) for x in (q, k, v)))
    with pytest.raises(ValueError, match=r"k is not contiguous.*ascontiguousarray\(k\)"):
        launch.forward("fa2", q, np.asfortranarray(k), v)
    with pytest.raises(ValueError, match=r"head_dim 40 is not supported by kernel 'fa2'"):
        x = np.zeros((1, 1, 8, 40), np.float32)
        launch.forward("fa2", x, x, x)
    with pytest.raises(ValueError, match="backend must be one of auto, reference, cpu, gpu"):
        flashlab.flash_attention(q, k, v, backend="tpu")
    with pytest.raises(TypeError, match="backend='gpu' takes CuPy arrays"):
        flashlab.flash_attention(q, k, v, backend="gpu")


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kernel", ["fa1", "fa2"])
@pytest.mark.parametrize("Nq,Nk,d", [(150, 97, 32), (97, 150, 64)])
def test_kernel_trace_on_the_cpu_matches_its_step_through(kernel, direction, causal, Nq, Nk, d):
    div, actual, expected = check_kernel(kernel, direction, B=2, H=1, Nq=Nq, Nk=Nk, d=d,
                                         causal=causal, seed=Nq + d, backend="cpu")
    assert div is None, str(div)
    assert (actual.seq >= 0).sum() == (expected.seq >= 0).sum() > 1


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_the_cpu_trace_pinpoints_each_planted_bug_where_the_gpu_does(bug):
    direction, causal, step, quantities, line = PLANTED[bug]
    kernel = course.BUGS[bug].kernel
    p = plans.plan(kernel, 64, direction, host.LIMITS["smem_optin"])
    N = 2 * max(p["Br"], p["Bc"]) + 17  # two K/V blocks at least, as on the GPU
    div, _, _ = check_kernel(kernel, direction, B=1, H=2, Nq=N, Nk=N, d=64, causal=causal,
                             bug=bug, seed=7, backend="cpu")
    assert div is not None, f"the trace missed bug {bug}"
    assert (div.i, div.j) == step and div.quantity in quantities and div.line == line, str(div)
    clean, _, _ = check_kernel(kernel, direction, B=1, H=2, Nq=N, Nk=N, d=64, causal=causal,
                               seed=7, backend="cpu")
    assert clean is None, str(clean)


def test_the_planted_race_is_found_between_the_barriers_around_the_removed_one():
    bug = course.BUGS["missing-sync"]
    text = (sources.kernel_dir() / "fa1.cu").read_text()
    removed = next(n for n, row in enumerate(text.splitlines(), 1) if bug.old in row)
    q = np.random.default_rng(0).standard_normal((1, 1, 150, 64)).astype(np.float32)
    with pytest.raises(KernelFault) as e:
        launch.forward("fa1", q, q, q, source=course.patched("missing-sync", "fa1"))
    msg = str(e.value)
    assert e.value.kind == "race" and "kernel fa1_forward" in msg, msg
    barriers = [int(x) for x in __import__("re").findall(r"fa1\.cu:(\d+)", msg)]
    assert len(barriers) == 2 and barriers[0] < removed < barriers[1], (removed, msg)
    launch.forward("fa1", q, q, q)  # and ours raises nothing


def test_a_users_copy_of_a_kernel_runs_from_its_own_file(rng, tmp_path):
    (tmp_path / "mine.cu").write_text(sources.ours("fa2").text)
    q, k, v, _ = inputs(rng, 1, 2, 70, 70, 32)
    mine = launch.forward("fa2", q, k, v, True, source=sources.user_file(tmp_path / "mine.cu", "fa2"))[0]
    assert np.array_equal(mine, launch.forward("fa2", q, k, v, True)[0])


# barriers whose removal no thread order can turn into a race: a later barrier orders the same
# accesses (fa1's first barriers: each thread first reads a foreign element after the step's
# load barrier), or only lanes of one warp share the data and a shuffle orders them (fa2's P~:
# the CPU backend's warp collectives synchronize their lanes, so a missing __syncwarp between
# shuffles is the one race it cannot see)
REDUNDANT = {
    "the initial O, l, m are in HBM before step (0, 0) reads them",
    "dQ = 0 is in HBM before step (0, 0) reads dQ_0",
    "K_j, V_j, dK~_j, dV~_j are free before the next j loads over them",
    "P~ is complete before anyone multiplies it by V_j",
}


def _barriers():
    for kernel in FP32_KERNELS:
        for n, row in enumerate(sources.ours(kernel).text.split("\n")):
            if row.strip().startswith("__syncthreads();"):
                why = row.split("//", 1)[1].strip() if "//" in row else f"line {n}"
                yield pytest.param(kernel, n, why, id=f"{kernel}-{why[:40]}")


@pytest.mark.parametrize("kernel,index,why", list(_barriers()))
def test_every_barrier_removed_from_our_kernels_is_found_as_a_race(kernel, index, why):
    src = sources.ours(kernel)
    rows = src.text.split("\n")
    rows[index] = "/* barrier removed */"
    broken = sources.Source(src.name, "\n".join(rows), src.variant, origin=f"{kernel} less {why!r}")
    rng = np.random.default_rng(index)
    q, k, v, do = (rng.standard_normal((1, 2, 150, 64)).astype(np.float32) for _ in range(4))
    try:
        o, lse = launch.forward(kernel, q, k, v, source=broken)
        launch.backward(kernel, do, q, k, v, o, lse, source=broken)
    except KernelFault as e:
        assert why not in REDUNDANT, f"{why!r} was thought redundant, but: {e}"
        assert e.kind == "race", str(e)
        return
    assert why in REDUNDANT, f"removing the barrier {why!r} of {kernel} went unseen"
