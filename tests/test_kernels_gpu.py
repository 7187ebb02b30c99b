"""GPU: every kernel equals the float64 oracle on ragged shapes, writes every output element,
matches its step-through tile by tile, and the trace pinpoints each planted bug."""
import numpy as np
import pytest

import flashlab
from flashlab import course, launch
from flashlab.kernel_check import check_kernel
from flashlab.launch import device, plans
from flashlab.reference import naive_attention, naive_attention_backward

from kernel_cases import FA1_ONLY, FP32_KERNELS, PLANTED, SHAPES, case_id, cases, inputs, rel

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("kernel,B,H,Nq,Nk,d,causal",
                         [pytest.param(*c, id=case_id(*c)) for c in cases(SHAPES, FA1_ONLY)])
def test_kernel_equals_float64_oracle_and_writes_every_element(rng, kernel, B, H, Nq, Nk, d, causal):
    import cupy as cp

    q, k, v, do = inputs(rng, B, H, Nq, Nk, d)
    q64, k64, v64, do64 = (x.astype(np.float64) for x in (q, k, v, do))
    o_ref, lse_ref = naive_attention(q64, k64, v64, causal)
    grads_ref = naive_attention_backward(do64, q64, k64, v64, causal)
    gq, gk, gv, gdo = (cp.asarray(x) for x in (q, k, v, do))

    poison = [cp.full((B, H, Nq, d), cp.nan, cp.float32), cp.full((B, H, Nq), cp.nan, cp.float32)]
    o, lse = launch.forward(kernel, gq, gk, gv, causal, out=poison)
    o, lse = o.get(), lse.get()
    assert np.isfinite(o).all() and np.isfinite(lse).all(), "an output element was never written"
    assert rel(o, o_ref) < 2e-5, rel(o, o_ref)
    assert rel(lse, lse_ref) < 2e-6

    poison = [cp.full(s, cp.nan, cp.float32) for s in ((B, H, Nq, d), (B, H, Nk, d), (B, H, Nk, d))]
    grads = launch.backward(kernel, gdo, gq, gk, gv, cp.asarray(o), cp.asarray(lse), causal, out=poison)
    for g, g_ref, name in zip(grads, grads_ref, ("dq", "dk", "dv")):
        g = g.get()
        assert np.isfinite(g).all(), f"{name}: an element was never written"
        assert rel(g, g_ref) < 1e-4, (name, rel(g, g_ref))


@pytest.mark.parametrize("scale", [0.05, 1.0])
@pytest.mark.parametrize("kernel", FP32_KERNELS)
def test_softmax_scale_is_honoured(rng, kernel, scale):
    import cupy as cp

    q, k, v, do = inputs(rng, 1, 2, 90, 70, 32)
    o_ref, _ = naive_attention(*(x.astype(np.float64) for x in (q, k, v)), True, scale)
    o, _ = launch.forward(kernel, cp.asarray(q), cp.asarray(k), cp.asarray(v), True, scale)
    assert rel(o.get(), o_ref) < 2e-5


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kernel", ["fa1", "fa2"])
@pytest.mark.parametrize("Nq,Nk,d", [(150, 97, 32), (97, 150, 64), (130, 130, 128), (600, 470, 64)])
def test_kernel_trace_matches_its_step_through(kernel, direction, causal, Nq, Nk, d):
    div, actual, expected = check_kernel(kernel, direction, B=2, H=1, Nq=Nq, Nk=Nk, d=d,
                                               causal=causal, seed=Nq + d)
    assert div is None, str(div)
    assert (actual.seq >= 0).sum() == (expected.seq >= 0).sum() > 1




def test_every_planted_bug_has_a_test():
    # races (missing-sync) are nondeterministic: compute-sanitizer racecheck is their test
    assert set(PLANTED) == {name for name, b in course.BUGS.items() if not b.race}


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_trace_pinpoints_the_planted_bug(bug):
    import cupy as cp

    direction, causal, step, quantities, line = PLANTED[bug]
    kernel = course.BUGS[bug].kernel
    # at least two K/V blocks with this device's tiles, so there is a rescale to get wrong
    p = plans.plan(kernel, 64, direction, device.device_limits(cp.cuda.Device().id)["smem_optin"])
    N = 2 * max(p["Br"], p["Bc"]) + 17
    div, _, _ = check_kernel(kernel, direction, B=1, H=2, Nq=N, Nk=N, d=64,
                                   causal=causal, bug=bug, seed=7)
    assert div is not None, f"the trace missed bug {bug}"
    assert (div.i, div.j) == step, str(div)
    assert div.quantity in quantities and div.line == line, str(div)
    assert str(div).startswith(f"{kernel} {direction} with bug {bug!r} diverges at step (i={step[0]}, j={step[1]})")
    # and the same kernel without the bug agrees
    clean, _, _ = check_kernel(kernel, direction, B=1, H=2, Nq=N, Nk=N, d=64,
                                     causal=causal, seed=7)
    assert clean is None, str(clean)


def test_public_entry_points_route_cupy_to_kernels(rng):
    import cupy as cp

    cc = int(cp.cuda.Device().compute_capability)
    assert flashlab.available_kernels() == ["naive", "fa1", "fa2"] + (["tc"] if cc >= 80 else [])
    q, k, v, do = inputs(rng, 1, 2, 100, 100, 64)
    gq, gk, gv, gdo = (cp.asarray(x) for x in (q, k, v, do))
    o, lse = flashlab.flash_attention(gq, gk, gv, causal=True, return_lse=True)
    assert isinstance(o, cp.ndarray) and lse.dtype == np.float32
    o_np, lse_np = flashlab.flash_attention(q, k, v, causal=True, return_lse=True)  # NumPy reference
    assert rel(o.get(), o_np) < 2e-5 and lse_np.dtype == np.float32  # float32 on both paths
    dq, dk, dv = flashlab.flash_attention_backward(gdo, gq, gk, gv, o, lse, causal=True)
    ref = naive_attention_backward(*(x.astype(np.float64) for x in (do, q, k, v)), True)
    assert rel(dk.get(), ref[1]) < 1e-4
    # d = 40: auto falls back to fa1
    q40 = cp.asarray(rng.standard_normal((1, 1, 33, 40)).astype(np.float32))
    assert flashlab.flash_attention(q40, q40, q40).shape == (1, 1, 33, 40)


def test_bad_gpu_inputs_name_the_argument_and_the_fix(rng):
    import cupy as cp

    q, k, v, _ = inputs(rng, 1, 2, 64, 64, 64)
    gq, gk, gv = (cp.asarray(x) for x in (q, k, v))
    with pytest.raises(TypeError, match=r"q, v are CuPy arrays but k are not"):
        flashlab.flash_attention(gq, k, gv)
    with pytest.raises(TypeError, match=r"k must be a NumPy or CuPy array of shape \(B, H, N, d\), got list"):
        flashlab.flash_attention(gq, k.tolist(), gv)
    with pytest.raises(TypeError, match=r"q must be a NumPy or CuPy array .* got tuple"):
        flashlab.flash_attention(tuple(q.tolist()), gk, gv)
    o, lse = flashlab.flash_attention(gq, gk, gv, return_lse=True)
    with pytest.raises(TypeError, match=r"lse must be a NumPy or CuPy array of shape \(B, H, N\), got list"):
        flashlab.flash_attention_backward(o, gq, gk, gv, o, lse.get().tolist())
    for kw, err, msg in [({"causal": "false"}, TypeError, r"causal must be True or False, got 'false'"),
                         ({"softmax_scale": "0.5"}, TypeError, r"softmax_scale must be a real number"),
                         ({"softmax_scale": True}, TypeError, r"softmax_scale must be a real number"),
                         ({"softmax_scale": float("nan")}, ValueError, r"softmax_scale must be finite")]:
        for kernel in ("auto",) + FP32_KERNELS:
            with pytest.raises(err, match=msg):
                flashlab.flash_attention(gq, gk, gv, kernel=kernel, **kw)
            with pytest.raises(err, match=msg):
                flashlab.flash_attention_backward(o, gq, gk, gv, o, lse, kernel=kernel, **kw)
    with pytest.raises(TypeError, match=r"q has dtype float64; kernel 'fa2' takes float32"):
        flashlab.flash_attention(gq.astype(cp.float64), gk.astype(cp.float64), gv.astype(cp.float64), kernel="fa2")
    with pytest.raises(ValueError, match=r"k is not contiguous.*ascontiguousarray\(k\)"):
        launch.forward("fa2", gq, cp.asfortranarray(gk), gv)
    with pytest.raises(ValueError, match=r"head_dim 40 is not supported by kernel 'fa2'"):
        g40 = cp.zeros((1, 1, 8, 40), cp.float32)
        launch.forward("fa2", g40, g40, g40)
    with pytest.raises(ValueError, match=r"q has N = 0"):
        launch.forward("fa1", gq[:, :, :0].copy(), gk, gv)
    with pytest.raises(ValueError, match=r"k and v must have the same number of keys"):
        launch.forward("naive", gq, gk, gv[:, :, :10].copy())
    with pytest.raises(ValueError, match=r"kernel must be one of"):
        flashlab.flash_attention(gq, gk, gv, kernel="fa9")
    with pytest.raises(ValueError, match="'naive' has no tile steps to trace"):
        launch.forward("naive", gq, gk, gv, trace=True)


def test_nan_input_propagates_like_the_oracle(rng):
    import cupy as cp

    q, k, v, _ = inputs(rng, 1, 1, 70, 70, 64)
    q[0, 0, 5, 3] = np.nan
    o_ref, _ = naive_attention(*(x.astype(np.float64) for x in (q, k, v)))
    for kernel in FP32_KERNELS:
        o, _ = launch.forward(kernel, *(cp.asarray(x) for x in (q, k, v)))
        np.testing.assert_array_equal(np.isnan(o.get()), np.isnan(o_ref), err_msg=kernel)


def test_racecheck_reports_the_planted_race(tmp_path):
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if shutil.which("compute-sanitizer") is None:
        pytest.skip("compute-sanitizer is not on PATH")
    script = tmp_path / "race.py"
    script.write_text(
        "import sys; import cupy as cp\n"
        "from flashlab import course, launch\n"
        "q = cp.random.default_rng(0).standard_normal((1, 1, 300, 64), dtype=cp.float32)\n"
        "bug = course.patched(sys.argv[1], 'fa1') if len(sys.argv) > 1 else None\n"
        "launch.forward('fa1', q, q, q, source=bug)\n"
        "cp.cuda.Device().synchronize()\n")
    # the script's folder, not the repository, is sys.path[0] in the child: put this checkout
    # first on PYTHONPATH so it imports without flashlab installed
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}

    def hazards(*bug):
        out = subprocess.run(["compute-sanitizer", "--tool", "racecheck", sys.executable, str(script), *bug],
                             capture_output=True, text=True, timeout=300, cwd=root, env=env)
        line = [l for l in (out.stdout + out.stderr).splitlines() if "RACECHECK SUMMARY" in l]
        assert line, out.stdout[-2000:] + out.stderr[-2000:]
        return line[0]
    assert "0 hazards" in hazards()
    assert "0 hazards" not in hazards("missing-sync")


def test_the_old_launcher_alias_takes_bug_names_and_paths(rng, tmp_path):
    # flashlab.cuda_kernel_ops (kept for scripts) turns bug= and source=path into a Source
    import cupy as cp

    from flashlab import cuda_kernel_ops as ops
    from flashlab.launch import sources

    q, k, v, _ = (cp.asarray(x) for x in inputs(rng, 1, 2, 200, 200, 64))
    planted = launch.forward("fa1", q, k, v, source=course.patched("no-rescale", "fa1"))[0]
    assert bool((ops.forward("fa1", q, k, v, bug="no-rescale")[0] == planted).all())
    (tmp_path / "mine.cu").write_text(sources.ours("fa2").text)
    ours = launch.forward("fa2", q, k, v, True)[0]
    assert bool((ops.forward("fa2", q, k, v, True, source=tmp_path / "mine.cu")[0] == ours).all())


@pytest.mark.cpu_kernel
@pytest.mark.parametrize("kernel", FP32_KERNELS)
@pytest.mark.parametrize("B,H,Nq,Nk,d,causal", [(1, 2, 200, 77, 32, True), (2, 1, 130, 130, 64, False)])
def test_the_cpu_backend_agrees_with_the_gpu(rng, kernel, B, H, Nq, Nk, d, causal):
    # the same CUDA C on both: different tiles (the GPU's shared memory against the CPU
    # backend's 64 KB), so agreement to fp32 roundoff, not bits
    import cupy as cp

    q, k, v, do = inputs(rng, B, H, Nq, Nk, d)
    o_cpu, lse_cpu = launch.forward(kernel, q, k, v, causal)
    gpu = [cp.asarray(x) for x in (q, k, v, do)]
    o_gpu, lse_gpu = launch.forward(kernel, *gpu[:3], causal)
    assert rel(o_cpu, o_gpu.get()) < 2e-5 and rel(lse_cpu, lse_gpu.get()) < 2e-6
    g_cpu = launch.backward(kernel, do, q, k, v, o_cpu, lse_cpu, causal)
    g_gpu = launch.backward(kernel, gpu[3], *gpu[:3], o_gpu, lse_gpu, causal)
    for a, b, name in zip(g_cpu, g_gpu, ("dq", "dk", "dv")):
        assert rel(a, b.get()) < 1e-4, (name, rel(a, b.get()))
