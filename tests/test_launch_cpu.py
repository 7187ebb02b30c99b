"""The launch paths of every kernel, on a CPU: flashlab.launch run against a stand-in for CuPy
(tests/fake_cupy.py) whose kernels record each launch. What a GPU run would find out too late:
the registry's launcher runs, the functions it looks up are the ones the variant declares,
every scalar is cast (np.int32 / np.int64 / np.float32), shared memory fits the device, the
caller's `out` buffers are written, traces come back in their algorithm's format, and a
Source (a planted bug, a user's file) is what gets compiled."""
import ml_dtypes
import numpy as np
import pytest

import fake_cupy
from flashlab import course, launch, registry
from flashlab.launch import compiler, plans, prepared, sources
from flashlab.trace import Trace

SMEM = 227 * 1024
SCALARS = (np.int32, np.int64, np.float32)


@pytest.fixture
def gpu(monkeypatch):
    monkeypatch.setenv("FLASHLAB_TC_WGMMA", "1")
    fake = fake_cupy.install(monkeypatch, cc="90", smem_optin=SMEM)
    yield fake
    fake_cupy.uninstall()


def _dtype(kernel, name="bfloat16"):
    spec = registry.get(kernel)
    return np.float32 if spec.takes_dtype("float32") else ml_dtypes.bfloat16


def _run(fake, kernel, B=1, H=2, Nq=130, Nk=200, d=64, causal=True, trace=False, source=None,
         config=None):
    dt = _dtype(kernel)
    q, k, v, do = fake_cupy.arrays(fake, [(B, H, Nq, d), (B, H, Nk, d), (B, H, Nk, d),
                                          (B, H, Nq, d)], dt)
    out = (fake.ndarray((B, H, Nq, d), dt), fake.ndarray((B, H, Nq), np.float32))
    fwd = launch.forward(kernel, q, k, v, causal, trace=trace, out=out, source=source,
                         config=config)
    grads = tuple(fake.ndarray(s, dt) for s in ((B, H, Nq, d), (B, H, Nk, d), (B, H, Nk, d)))
    bwd = launch.backward(kernel, do, q, k, v, *out, causal, trace=trace, out=grads,
                          source=source)
    return out, fwd, grads, bwd


@pytest.mark.parametrize("kernel", registry.names())
def test_every_launch_casts_its_scalars_and_fits_the_device(gpu, kernel):
    out, fwd, grads, bwd = _run(gpu, kernel)
    assert fwd[0] is out[0] and fwd[1] is out[1]  # the caller's (NaN-poisoned) buffers
    assert all(g is o for g, o in zip(bwd, grads))
    spec = registry.get(kernel)
    variant = plans.variant(kernel, 90, 64)
    declared = spec.variants[variant].required()
    assert gpu.launches
    for launch_ in gpu.launches:
        assert launch_["name"].split("<")[0] in declared, launch_["name"]
        assert launch_["smem"] <= SMEM and np.prod(launch_["block"]) <= 1024
        assert all(1 <= g < 2**31 for g in launch_["grid"]) and all(g <= 65535 for g in launch_["grid"][1:])
        for a in launch_["args"]:
            rows = isinstance(a, np.ndarray) and a.dtype == prepared.ROWS_DTYPE and a.size == 1
            address = type(a) is int and fake_cupy.is_address(a)  # a workspace part
            assert isinstance(a, fake_cupy.ndarray) or type(a) in SCALARS or rows or address, \
                (launch_["name"], a)


@pytest.mark.parametrize("kernel", registry.traceable())
def test_trace_mode_compiles_the_trace_build_and_returns_the_algorithms_trace(gpu, kernel):
    _, fwd, _, bwd = _run(gpu, kernel, trace=True)
    spec = registry.get(kernel)
    for direction, tr in (("forward", fwd[-1]), ("backward", bwd[-1])):
        assert isinstance(tr, Trace) and tr.algorithm == spec.algorithm(direction)
        assert tr.label == f"{kernel} {direction}" and (tr.B, tr.H, tr.Nq, tr.Nk) == (1, 2, 130, 200)
    assert all("-DFLASHLAB_TRACE" in c["options"] for c in gpu.compiles)


def test_naive_has_no_trace_mode(gpu):
    with pytest.raises(ValueError, match="'naive' has no tile steps to trace"):
        _run(gpu, "naive", trace=True)


def test_modules_are_compiled_once_and_the_shared_memory_opt_in_is_made_once(gpu):
    _run(gpu, "fa1")
    compiled = len(gpu.compiles)
    _run(gpu, "fa1")
    assert len(gpu.compiles) == compiled == 1
    assert len(compiler._smem_allowed) == 2  # fa1_forward and fa1_backward, device 0


def test_a_planted_bug_is_the_text_that_gets_compiled(gpu):
    b = course.BUGS["no-rescale"]
    _run(gpu, "fa1", source=course.patched("no-rescale", "fa1"))
    assert b.new in gpu.compiles[0]["code"] and b.old not in gpu.compiles[0]["code"]
    _run(gpu, "fa1")  # ours again: another module
    assert len(gpu.compiles) == 2 and b.old in gpu.compiles[1]["code"]


@pytest.mark.parametrize("variant", ["mma", "wgmma"])
def test_a_users_tc_file_runs_as_the_variant_it_is_a_copy_of(gpu, tmp_path, variant):
    # on compute capability 9.0 a copy of kernels/tc.cu runs as tc.cu (whose headers mention
    # tc90_forward in a comment: a search of the text for that name once took it for tc90.cu)
    (tmp_path / "mine.cu").write_text(sources.ours("tc", variant).text)
    mine = sources.user_file(tmp_path / "mine.cu", "tc")
    _run(gpu, "tc", source=mine)
    want = registry.get("tc").variants[variant].kernels[0][0]
    assert gpu.launches[0]["name"].startswith(want + "<")
    arch = registry.get("tc").variants[variant].arch
    assert all((f"--gpu-architecture={arch}" in c["options"]) == bool(arch) for c in gpu.compiles)


def test_a_tuning_config_picks_its_variant_and_tiles(gpu):
    _run(gpu, "tc", config=dict(BC=64, NWG=1, MINB=4))
    assert gpu.launches[0]["name"] == "tc90_forward<true, 64, 64, 1, 4>"
    assert gpu.launches[0]["block"] == (128,)


def test_source_must_be_a_source(gpu, tmp_path):
    with pytest.raises(TypeError, match="source must be None or a flashlab.launch.sources.Source"):
        _run(gpu, "fa2", source=tmp_path / "mine.cu")


def test_a_second_backend_plugs_into_the_seam(monkeypatch):
    seen = []

    class Backend:
        def compile(self, source, options, name_expressions, arch):
            seen.append((source.name, options, name_expressions, arch))
            return "module"

    monkeypatch.setitem(compiler.BACKENDS, "test", Backend())
    monkeypatch.setattr(compiler, "_modules", {})
    src = sources.ours("fa2")
    assert compiler.get_module(src, True, ("fa2_forward<64, 64, 64>",), backend="test") == "module"
    assert compiler.get_module(src, True, ("fa2_forward<64, 64, 64>",), backend="test") == "module"
    assert seen == [("fa2.cu", ("-std=c++17", "-DFLASHLAB_TRACE"), ("fa2_forward<64, 64, 64>",),
                     None)]


@pytest.mark.parametrize("kernel", registry.traceable())
def test_check_kernel_holds_the_trace_to_the_registrys_step_through(gpu, kernel, monkeypatch):
    # the fake kernels write nothing real, so only the wiring is checked here: which
    # step-through ran, on which tiles and dtype, and what the traces are called
    from flashlab import kernel_check

    spec = registry.get(kernel)
    calls = []
    real = spec.steps_fn("forward")

    def spy(*args, **kw):
        calls.append((args[0].dtype.name, kw))
        return real(*args, **kw)

    monkeypatch.setattr(type(spec), "steps_fn", lambda self, direction: spy)
    div, actual, expected = kernel_check.check_kernel(kernel, "forward", Nq=70, Nk=90, d=64)
    dtype, kw = calls[0]
    assert (kw["Br"], kw["Bc"]) == (actual.Br, actual.Bc) == (expected.Br, expected.Bc)
    plan = launch.launch_plan(kernel, 0, 64, "forward")
    assert {key: kw[key] for key in spec.step_plan("forward")} == \
        {key: plan[key] for key in spec.step_plan("forward")}
    assert dtype == ("float64" if spec.takes_dtype("float32") else "bfloat16")
    assert actual.label == f"{kernel} forward" and actual.algorithm == spec.algorithm("forward")


def test_check_kernel_turns_a_bug_name_into_the_patched_source(gpu):
    from flashlab import kernel_check

    _, actual, _ = kernel_check.check_kernel("fa1", "backward", Nq=40, bug="dk-no-scale")
    assert actual.label == "fa1 backward with bug 'dk-no-scale'"
    assert any(course.BUGS["dk-no-scale"].new in c["code"] for c in gpu.compiles)


def test_a_variant_compiles_into_fa2s_source_and_its_buffers_follow_causal(gpu):
    from flashlab import mods
    from flashlab.mods.kernel import KernelVariant

    q, k, v = fake_cupy.arrays(gpu, [(2, 3, 130, 64)] * 3)
    kv = KernelVariant.of((32, 0), mods.document(np.arange(130) // 40), mods.softcap(5.0))
    launch.forward("fa2", q, k, v, True, variant=kv)
    (compiled,) = gpu.compiles
    assert compiled["code"].startswith("#define FL_MODS") and "fl_mask_mod" in compiled["code"]
    (run,) = gpu.launches
    args = run["args"]
    assert type(args[8]) is np.int32 and int(args[8]) == 1          # causal
    assert (int(args[9]), int(args[10])) == (3, 3)                   # H, H_kv: bh's b and h
    floats, ints, tiles = args[11:14]
    assert all(isinstance(a, fake_cupy.ndarray) for a in (floats, ints, tiles))
    assert ints.shape == (130 + 1,) and tiles.dtype == np.uint8      # doc ids (and one spare)
    assert (int(args[14]), int(args[15])) == (1, 1)                  # shared by every head
    with pytest.raises(ValueError, match=r"kernel 'fa1' does not take attention variants yet "
                                         r"\(fa2, tc do\)"):
        launch.forward("fa1", q, k, v, variant=kv)


def test_a_variant_compiles_into_tcs_sources_with_its_ranges_and_gqa(gpu, monkeypatch):
    # tc's variant arguments follow its Rows (TC_MOD_PARAMS, kernels/tc_mods.cuh): H_kv, the
    # closed-over arrays, the tile flags and the range of tiles per query block (forward) or
    # per key block (backward), the block mask's batch and head extents
    from flashlab import mods
    from flashlab.launch import tc as launch_tc
    from flashlab.mods.kernel import KernelVariant

    B, H, Hkv, N, d = 2, 4, 2, 300, 64
    q, do = fake_cupy.arrays(gpu, [(B, H, N, d)] * 2, ml_dtypes.bfloat16)
    k, v = fake_cupy.arrays(gpu, [(B, Hkv, N, d)] * 2, ml_dtypes.bfloat16)
    kv = KernelVariant.of((32, 0), None, mods.softcap(5.0))
    o, lse = launch.forward("tc", q, k, v, variant=kv)
    (compiled,) = gpu.compiles
    head = compiled["code"].split("#line 1")[0]
    assert {"#define FL_MODS", "#define FL_SCORE"} <= set(head.split("\n"))
    assert "tanh.approx.f32" in head  # the 16-bit kernels' mods: MUFU exp, log, tanh
    (run,) = gpu.launches
    assert run["name"].startswith("tc90_forward<true, 64,")
    args = run["args"]
    assert int(args[10]) == H and int(args[15]) == Hkv               # H, then H_kv after the Rows
    tiles, ranges = args[18], args[19]
    Tr = -(-N // 128)  # tc90's forward tiles at d = 64: 128 query rows, 64 keys
    assert tiles.shape == (1, 1, Tr, -(-N // 64)) and ranges.shape == (1, 1, Tr, 2)
    assert (int(args[20]), int(args[21])) == (1, 1)                  # shared by every head
    dk, dv = (gpu.ndarray((B, Hkv, N, d), ml_dtypes.bfloat16) for _ in range(2))
    sums = []
    monkeypatch.setattr(launch_tc, "sum_groups", lambda full, out, n: sums.append((full, out, n)))
    launch.backward("tc", do, q, k, v, o, lse, variant=kv, out=(gpu.ndarray(q.shape, q.dtype),
                                                                dk, dv))
    main = next(r for r in gpu.launches[1:] if r["name"].startswith("tc90_backward"))
    assert main["args"][7].shape == (B, H, N, d)  # GQA: dK per query head, summed after
    assert [(f.shape, out, n) for f, out, n in sums] == [((B, H, N, d), dk, Hkv),
                                                          ((B, H, N, d), dv, Hkv)]
    assert int(main["args"][21]) == Hkv                              # after six Rows
    assert main["args"][25].shape[2] == -(-N // 128)                 # a range per key block


def test_the_ladders_forward_is_persistent_where_heads_have_few_query_blocks():
    from flashlab.launch.tc_ws import PERSIST_MAX_TR, TILES, grid_blocks

    auto = TILES[128]
    assert auto["PERSIST"] is None
    assert grid_blocks(32 * 64, 32, 132, auto) == 132             # N = 4k: one block per SM
    assert grid_blocks(33 * 16, 33, 132, auto) == 33 * 16         # past it: a block per tile
    assert grid_blocks(8 * 4, 8, 132, auto) == 32                 # fewer tiles than SMs
    assert grid_blocks(128 * 16, 128, 132, dict(auto, PERSIST=1)) == 132
    assert grid_blocks(8 * 64, 8, 132, dict(auto, PERSIST=0)) == 8 * 64
    assert grid_blocks(20, 5, 132, dict(auto, BLOCKS=3)) == 3
    assert PERSIST_MAX_TR * 128 == 4096


@pytest.mark.parametrize("bad, error, words", [
    (dict(d=96), ValueError, "head dim d must be one of"),
    (dict(dtype=np.float32), TypeError, "takes float16 or bfloat16"),
    (dict(Hkv=3), ValueError, "H_kv dividing q's H"),
    (dict(cc="80"), ValueError, "compute capability 9.0"),
])
def test_the_ladders_forward_names_a_bad_argument(gpu, monkeypatch, bad, error, words):
    # the same checks as every launch (check_qkv, check_device_inputs), then its own
    from flashlab.launch import tc_ws

    if "cc" in bad:
        fake_cupy.uninstall()
        fake_cupy.install(monkeypatch, cc=bad["cc"], smem_optin=SMEM)
    d, Hkv, dt = bad.get("d", 64), bad.get("Hkv", 2), bad.get("dtype", ml_dtypes.bfloat16)
    import cupy

    q = cupy.ndarray((1, 4, 16, d), dt)
    k = cupy.ndarray((1, Hkv, 16, d), dt)
    with pytest.raises(error, match=words):
        tc_ws.forward(q, k, k)



@pytest.mark.parametrize("bad, error, words", [
    (dict(d=96), ValueError, "head dim d must be one of"),
    (dict(lse=(1, 4, 15)), ValueError, "lse must have shape"),
    (dict(do=np.float16), ValueError, "do has dtype"),
    (dict(lse_dtype=ml_dtypes.bfloat16), TypeError, "lse"),
    (dict(cc="80"), ValueError, "compute capability 9.0"),
])
def test_the_ladders_backward_names_a_bad_argument(gpu, monkeypatch, bad, error, words):
    from flashlab.launch import tc_ws

    if "cc" in bad:
        fake_cupy.uninstall()
        fake_cupy.install(monkeypatch, cc=bad["cc"], smem_optin=SMEM)
    import cupy

    d = bad.get("d", 64)
    q = cupy.ndarray((1, 4, 16, d), ml_dtypes.bfloat16)
    do = cupy.ndarray(q.shape, bad.get("do", ml_dtypes.bfloat16))
    lse = cupy.ndarray(bad.get("lse", (1, 4, 16)), bad.get("lse_dtype", np.float32))
    with pytest.raises(error, match=words):
        tc_ws.backward(do, q, q, q, q, lse)

def _ladder_launch_stand_ins(gpu, monkeypatch):
    """What the fake CuPy lacks for tc_ws's launches: tensor maps (cuda-bindings), CuPy's
    argument pointers, zeros / ascontiguousarray; the maps come back tagged with what they
    map and their box."""
    import types

    from flashlab.launch import tc_ws

    made = []

    def tagged(kind):
        def make(x, box, *rest):
            made.append((kind, x, box))
            return np.full(16, len(made) - 1, np.uint64)  # the map's place in `made`
        return make

    monkeypatch.setattr(tc_ws, "tensor_map", tagged("tile"))
    monkeypatch.setattr(tc_ws, "flat_map", tagged("row"))
    gpu.cuda.function = types.SimpleNamespace(CPointer=lambda address: ("by address", address))
    gpu.zeros = lambda shape, dtype=np.float32: gpu.ndarray(shape, dtype, fill=0)
    gpu.ascontiguousarray = lambda x: x
    return made


@pytest.mark.parametrize("d, Hkv", [(128, 4), (64, 2)])
def test_the_ladders_backward_launches_what_its_kernel_takes(gpu, monkeypatch, d, Hkv):
    # kernels/tc90_ws_bwd.cu's arguments in order: seven tensor maps (Q, K, V, dO by 64-column
    # boxes of BR or 128 rows; L, D as rows of BR + 4 floats; dQ's fp32 accumulator), then dQacc,
    # dK, dV (per query head with GQA, summed after), sizes, and the Rows of dK, dV; between the
    # D pre-pass and dQ's rounding; 384 threads, a block per key block and head
    from flashlab.launch import tc_ws

    made = _ladder_launch_stand_ins(gpu, monkeypatch)
    sums = []
    monkeypatch.setattr(tc_ws, "sum_groups", lambda full, out, n: sums.append((full.shape, out, n)))
    B, H, N = 2, 4, 300
    q, do, o = fake_cupy.arrays(gpu, [(B, H, N, d)] * 3, ml_dtypes.bfloat16)
    k, v = fake_cupy.arrays(gpu, [(B, Hkv, N, d)] * 2, ml_dtypes.bfloat16)
    lse = gpu.ndarray((B, H, N), np.float32)
    dq, dk, dv = tc_ws.backward(do, q, k, v, o, lse, causal=True)
    dot, main, rnd = gpu.launches
    t = tc_ws.BACKWARD_TILES[d]
    assert dot["name"] == "tc_backward_dot<true>" and rnd["name"] == "tc_backward_dq<true>"
    assert main["name"] == f"tc90ws_backward<true, {d}, {t['BR']}, 2, 1>"
    assert main["grid"] == (-(-N // 128) * B * H,) and main["block"] == (384,)
    assert main["smem"] == tc_ws.backward_smem_bytes(d, t["BR"], 2, 1) <= SMEM
    # the maps are passed by address, in the order they were made
    assert [a[0] for a in main["args"][:7]] == ["by address"] * 7
    assert [(kind, x.shape, box) for kind, x, box in made] == [
        ("tile", q.shape, t["BR"]), ("tile", k.shape, 128), ("tile", v.shape, 128),
        ("tile", do.shape, t["BR"]), ("row", lse.shape, t["BR"] + 4),
        ("row", (B, H, N), t["BR"] + 4), ("tile", (B, H, N, d), t["BR"])]
    assert made[5][1].dtype == np.float32 and made[6][1].dtype == np.float32
    assert main["args"][7] is dot["args"][3]  # the accumulator the pre-pass zeroes ...
    assert rnd["args"][0] is dot["args"][3] and rnd["args"][1] is dq  # ... is what dQ rounds
    assert made[6][1] is dot["args"][3]  # and what the writer's map adds into
    assert [int(x) for x in main["args"][10:12]] == [N, N]
    assert int(main["args"][13]) == 1 and int(main["args"][17]) == H // Hkv  # causal, G
    if Hkv == H:
        assert main["args"][8] is dk and main["args"][9] is dv and not sums
    else:  # GQA: per query head first, then each group's sum
        assert main["args"][8].shape == (B, H, N, d)
        assert sums == [((B, H, N, d), dk, Hkv), ((B, H, N, d), dv, Hkv)]


@pytest.mark.parametrize("config, threads, rows, counter", [
    (None, 384, 128, False), (dict(PERSIST=1, DYN=1), 384, 128, True),
    (dict(NC=3, PP=0), 512, 192, False)])
def test_the_ladders_forward_launches_its_rung(gpu, monkeypatch, config, threads, rows, counter):
    # three tensor maps (Q's boxes as tall as the block's query rows), o, lse, sizes, o's Rows,
    # and the dynamic turns' counter: a zeroed int where the turns are dynamic, else null
    from flashlab.launch import tc_ws

    made = _ladder_launch_stand_ins(gpu, monkeypatch)
    q = gpu.ndarray((2, 4, 4000, 64), ml_dtypes.bfloat16)  # more tiles than multiprocessors
    tc_ws.forward(q, q, q, causal=True, config=config)
    (run,) = gpu.launches
    t = {**tc_ws.TILES[64], **(config or {})}
    assert run["name"] == tc_ws.instance(True, 64, config) and run["block"] == (threads,)
    tiles = -(-4000 // rows) * 8
    assert run["grid"] == (min(tiles, 132),)  # N <= 4k: persistent blocks
    assert run["smem"] == tc_ws.smem_bytes(64, t["BC"], t["ST"], t["NC"])
    assert [(x.shape, box) for _, x, box in made] == [(q.shape, rows), (q.shape, 128), (q.shape, 128)]
    nxt = run["args"][-1]
    if counter:
        assert nxt.shape == (1,) and nxt.dtype == np.int32 and nxt.filled == 0
    else:
        assert int(nxt) == 0


def test_the_ladders_backward_says_when_its_tiles_do_not_fit(gpu, monkeypatch):
    from flashlab.launch import tc_ws

    _ladder_launch_stand_ins(gpu, monkeypatch)
    q = gpu.ndarray((1, 2, 256, 64), ml_dtypes.bfloat16)
    lse = gpu.ndarray((1, 2, 256), np.float32)
    with pytest.raises(ValueError, match="233288 bytes of shared memory .* allows 232448"):
        tc_ws.backward(q, q, q, q, q, lse, config=dict(ST=3))  # 3 stages and dQ's buffer
def test_the_ladders_forward_takes_gqa_and_strided_views(gpu):
    from flashlab.launch import tc_ws

    import cupy

    q = cupy.ndarray((2, 4, 300, 128), ml_dtypes.bfloat16)
    k = cupy.ndarray((2, 1, 200, 128), ml_dtypes.bfloat16)
    dims, device = tc_ws._check(q, k, k, True, None)
    assert (dims.kv_heads, dims.Nk, dims.causal, device) == (1, 200, True, 0)
    assert dims.scale == pytest.approx(128 ** -0.5)
    packed = cupy.ndarray((1, 300, 3, 4, 64), ml_dtypes.bfloat16)  # heads moved forward: strided
    view = cupy.ndarray((1, 4, 300, 64), ml_dtypes.bfloat16,
                        strides=(packed.strides[0], packed.strides[3], packed.strides[1], 2))
    assert tc_ws._check(view, view, view, False, None)[0].d == 64
