"""Prepared calls and strided operands, on a CPU (tests/fake_cupy.py records launches): the
tensor-core kernel reads views of a packed qkv projection in place, with their strides passed
as the kernels' struct Rows; views it cannot read are refused naming the argument; a call's
launches are resolved once per shape and layout, and run with device pointers on a given
stream (what flashlab.torch does per call)."""
import struct
import sys

import ml_dtypes
import numpy as np
import pytest

import fake_cupy
from flashlab import launch
from flashlab.launch import plans, prepared, tc

BF16 = ml_dtypes.bfloat16


@pytest.fixture
def gpu(monkeypatch):
    monkeypatch.setenv("FLASHLAB_TC_WGMMA", "1")
    fake = fake_cupy.install(monkeypatch, cc="90")
    yield fake
    fake_cupy.uninstall()


def _packed(fake, B=2, N=130, H=3, d=64):
    """q, k, v as views of one (B, N, 3, H, d) projection moved to (B, H, N, d), like
    qkv.view(B, N, 3, H, d).unbind(2) then .transpose(1, 2) in torch."""
    qkv = fake.ndarray((B, N, 3, H, d), BF16)
    e = 2  # bytes per element
    strides = (N * 3 * H * d * e, d * e, 3 * H * d * e, e)
    return [qkv.view_of((B, H, N, d), strides, offset_bytes=part * H * d * e)
            for part in range(3)]


def _args_of(fake, name_prefix):
    return [x["args"] for x in fake.launches if x["name"].startswith(name_prefix)]


def test_rows_is_the_kernels_struct_byte_for_byte():
    # kernels/tc_blocks.cuh: struct Rows { long long b, h; int n; } (static_assert there: 24
    # bytes, 8-aligned, n at 16)
    assert prepared.ROWS_DTYPE.itemsize == 24
    assert prepared.rows((11, 22, 33)).tobytes() == struct.pack("<qqi4x", 11, 22, 33)


def test_a_packed_qkv_view_runs_tc_in_place_with_its_strides(gpu):
    B, N, H, d = 2, 130, 3, 64
    q, k, v = _packed(gpu, B, N, H, d)
    assert not q.flags.c_contiguous
    o, lse = launch.forward("tc", q, k, v, causal=True)
    (args,) = _args_of(gpu, "tc90_forward")
    assert args[0] is q and args[1] is k and args[2] is v and args[3] is o and args[4] is lse
    rows = [a for a in args if isinstance(a, np.ndarray)]
    packed = (N * 3 * H * d, d, 3 * H * d)
    assert [tuple(int(r[f][0]) for f in "bhn") for r in rows] == [packed] * 3 + [(H * N * d, N * d, d)]
    assert int(args[10]) == H  # heads per batch: Rows.head(bh, H) splits bh into b and h

    # the backward reads the same views, and a strided dO (a transposed (B, N, H, d) gradient)
    grad = gpu.ndarray((B, N, H, d), BF16)
    do = grad.view_of((B, H, N, d), (N * H * d * 2, d * 2, H * d * 2, 2))
    launch.backward("tc", do, q, k, v, o, lse, causal=True)
    (main,) = _args_of(gpu, "tc90_backward")
    assert main[0] is q and main[3] is do
    main_rows = [tuple(int(r[f][0]) for f in "bhn") for r in main if isinstance(r, np.ndarray)]
    contiguous = (H * N * d, N * d, d)  # the CuPy API's dk, dv (and dq) are fresh arrays
    assert main_rows == [packed] * 3 + [(N * H * d, d, H * d)] + [contiguous] * 2
    (dot,) = _args_of(gpu, "tc_backward_dot")
    assert dot[0] is do and dot[1] is o
    (rnd,) = _args_of(gpu, "tc_backward_dq")
    assert int(rnd[2]) == N * d // 8 and int(rnd[3]) == d  # a head's threads, 8 columns each
    assert tuple(int(rnd[5][f][0]) for f in "bhn") == contiguous and int(rnd[6]) == H
    (launched,) = [r for r in gpu.launches if r["name"].startswith("tc_backward_dq")]
    assert launched["grid"] == (-(-N * d // 8 // 256), B * H)


@pytest.mark.parametrize("why,strides,offset", [
    ("row stride not on 16 bytes", (130 * 196 * 2, 64 * 2, 196 * 2, 2), 0),
    ("last dim not contiguous", (130 * 64 * 3 * 4, 64 * 4, 64 * 4, 4), 0),
    ("first row not on 16 bytes", (130 * 64 * 3 * 2, 130 * 64 * 2, 64 * 2, 2), 2),
])
def test_a_view_tc_cannot_read_in_place_is_refused_naming_it(gpu, why, strides, offset):
    base = gpu.ndarray((2, 3, 130, 64 * 2 + 8), BF16)
    q = base.view_of((2, 3, 130, 64), strides, offset_bytes=offset)
    k, v = (gpu.ndarray((2, 3, 130, 64), BF16) for _ in range(2))
    with pytest.raises(ValueError, match=r"^q \(shape \(2, 3, 130, 64\), strides .*kernel 'tc' "
                                         r"cannot read in place.*cupy.ascontiguousarray\(q\)"):
        launch.forward("tc", q, k, v)
    assert not gpu.launches


def test_the_fp32_kernels_still_take_contiguous_arrays_only(gpu):
    base = gpu.ndarray((1, 130, 3, 2, 64), np.float32)
    q = base.view_of((1, 2, 130, 64), (130 * 384 * 4, 64 * 4, 384 * 4, 4))
    k, v = (gpu.ndarray((1, 2, 130, 64)) for _ in range(2))
    with pytest.raises(ValueError, match=r"q is not contiguous .*cupy.ascontiguousarray\(q\)"):
        launch.forward("fa2", q, k, v)
    with pytest.raises(ValueError, match=r"q is not contiguous .*cupy.ascontiguousarray\(q\)"):
        launch.prepare_forward("fa2", q, k, v, gpu.ndarray((1, 2, 130, 64)))
    with pytest.raises(ValueError, match=r"kernel 'fa1' has no prepared calls \(kernels that "
                                         r"have: fa2, tc\)"):
        launch.prepare_forward("fa1", k, k, v, gpu.ndarray((1, 2, 130, 64)))


def test_fa2_refuses_an_input_off_its_16_byte_loads_naming_it(gpu):
    # fa2 reads q, k, v, dO four floats at a time: a contiguous view 4 bytes into another array
    # would fault on the GPU; it is refused first, naming the argument and the fix
    base = gpu.ndarray((1 * 2 * 130 * 64 + 1,))
    k = gpu.ndarray((1, 2, 130, 64), ptr=base.data.ptr + 4)
    q, v = (gpu.ndarray((1, 2, 130, 64)) for _ in range(2))
    for call in (lambda: launch.forward("fa2", q, k, v),
                 lambda: launch.prepare_forward("fa2", q, k, v, gpu.ndarray((1, 2, 130, 64)))):
        with pytest.raises(ValueError, match=r"^k starts 4 bytes past a 16-byte boundary .*kernel "
                                             r"'fa2' reads rows 16 bytes at a time: pass k.copy\(\)"):
            call()
    launch.forward("fa1", q, k, v)  # fa1 reads floats one at a time: taken


def _same_constants(a, b):
    return len(a) == len(b) and all(x is y or (isinstance(x, np.generic) and x == y)
                                    for x, y in zip(a, b))


@pytest.mark.parametrize("causal", [False, True])
def test_fa2s_prepared_calls_launch_what_the_cupy_api_launches(gpu, causal):
    # flashlab.torch's float32 path: the same kernels, grids and constants as launch.forward
    # and launch.backward, the buffers by name, D's vector in the workspace
    B, H, N, d = 2, 3, 130, 64
    q, k, v, o, do = (gpu.ndarray((B, H, N, d)) for _ in range(5))
    lse = gpu.ndarray((B, H, N))
    launch.forward("fa2", q, k, v, causal=causal)
    launch.backward("fa2", do, q, k, v, o, lse, causal=causal)
    api = list(gpu.launches)
    gpu.launches.clear()
    fwd = launch.prepare_forward("fa2", q, k, v, o, causal=causal)
    back = launch.prepare_backward("fa2", do, q, k, v, o, lse, causal=causal)
    assert launch.prepare_forward("fa2", q, k, v, o, causal=causal) is fwd  # once per shape
    assert back.workspace_bytes == 256 * -(-B * H * N * 4 // 256)
    dq, dk, dv = (gpu.ndarray((B, H, N, d)) for _ in range(3))
    fwd.run({"q": q, "k": k, "v": v, "o": o, "lse": lse})
    back.run({"do": do, "q": q, "k": k, "v": v, "o": o, "lse": lse, "dq": dq, "dk": dk,
              "dv": dv}, workspace=0x10000)
    ran = gpu.launches
    assert [(x["name"], x["grid"], x["block"], x["smem"]) for x in ran] == \
        [(x["name"], x["grid"], x["block"], x["smem"]) for x in api]
    assert [x["name"] for x in ran] == ["fa2_forward<64, 64, 64>", "fa2_backward_dot",
                                        "fa2_backward<64, 64, 64>"]
    (f_api, dot_api, main_api), (f, dot, main) = api, ran
    assert f["args"][:5] == (q, k, v, o, lse) and _same_constants(f["args"][5:], f_api["args"][5:])
    assert dot["args"][:4] == (do, o, 0x10000, dq)  # the pre-pass zeroes dq (no fill)
    assert _same_constants(dot["args"][4:], dot_api["args"][4:])
    assert main["args"][:9] == (q, k, v, do, lse, 0x10000, dq, dk, dv)
    assert _same_constants(main["args"][9:], main_api["args"][9:])
    assert main_api["args"][6] is dot_api["args"][3]
    assert np.isnan(main_api["args"][6].filled)  # as allocated: no fill(0), the pre-pass zeroes


def test_a_call_is_prepared_once_per_shape_and_layout(gpu):
    q, k, v = (gpu.ndarray((1, 2, 200, 64), BF16) for _ in range(3))
    launch.forward("tc", q, k, v)
    launch.forward("tc", *(gpu.ndarray((1, 2, 200, 64), BF16) for _ in range(3)))
    assert len(tc._cache) == 1 and len(gpu.compiles) == 1 and len(gpu.launches) == 2
    launch.forward("tc", *_packed(gpu, 1, 200, 2, 64))  # another layout: another call
    launch.forward("tc", q, k, v, causal=True)          # another mask: another call
    assert len(tc._cache) == 3 and len(gpu.compiles) == 1
    o = gpu.ndarray((1, 2, 200, 64), BF16)
    first = launch.prepare_forward("tc", q, k, v, o)
    assert launch.prepare_forward("tc", q, k, v, o) is first


def test_a_prepared_call_runs_with_device_pointers_on_the_given_stream(gpu):
    q, k, v, o = (gpu.ndarray((1, 2, 200, 64), BF16) for _ in range(4))
    call = launch.prepare_forward("tc", q, k, v, o, causal=True)
    assert not gpu.launches  # prepared, not run
    ptrs = {"q": 0x1000, "k": 0x2000, "v": 0x3000, "o": 0x4000, "lse": 0x5000}
    call.run(ptrs, prepared.StreamPtr(0xABC))
    (run,) = gpu.launches
    assert run["args"][:5] == (0x1000, 0x2000, 0x3000, 0x4000, 0x5000)
    assert run["stream"].ptr == 0xABC
    with pytest.raises(KeyError, match="prepared tc call needs buffer 'lse'"):
        call.run({n: p for n, p in ptrs.items() if n != "lse"})

    do = gpu.ndarray((1, 2, 200, 64), BF16)
    lse = gpu.ndarray((1, 2, 200), np.float32)
    back = launch.prepare_backward("tc", do, q, k, v, o, lse, causal=True)
    names = [s.label.split("<")[0] for s in back.steps]
    assert names == ["tc_backward_dot", "tc90_backward", "tc_backward_dq"]
    # one workspace: D (2 heads x 200 rows, fp32) then dQ's fp32 accumulator, 256-byte aligned
    assert back.carve(0x10000) == {"Dvec": 0x10000, "dq_acc": 0x10000 + 1792}
    assert back.workspace_bytes == 1792 + 2 * 200 * 64 * 4
    with pytest.raises(ValueError, match="needs a workspace of"):
        back.run({})
    gpu.launches.clear()
    bufs = {n: 0x100 * (i + 1) for i, n in enumerate(("do", "q", "k", "v", "o", "lse", "dq",
                                                        "dk", "dv"))}
    back.run(bufs, prepared.StreamPtr(7), workspace=0x10000)
    dot, main, rnd = gpu.launches
    assert dot["args"][:4] == (bufs["do"], bufs["o"], 0x10000, 0x10000 + 1792)
    assert main["args"][5:7] == (0x10000, 0x10000 + 1792) and rnd["args"][1] == bufs["dq"]


def test_a_prepared_backward_writes_gradients_with_the_strides_given(gpu):
    # flashlab.torch's dq, dk, dv for a packed qkv projection: heads inside rows, as q's view
    B, N, H, d = 2, 130, 3, 64
    q, k, v = _packed(gpu, B, N, H, d)
    do, o = (gpu.ndarray((B, H, N, d), BF16) for _ in range(2))
    lse = gpu.ndarray((B, H, N), np.float32)
    rows_of = [gpu.ndarray((B, N, H, d), BF16).view_of((B, H, N, d), (N * H * d * 2, d * 2,
                                                                      H * d * 2, 2))
               for _ in range(3)]
    back = launch.prepare_backward("tc", do, q, k, v, o, lse, causal=True, grads=rows_of)
    _, main, rnd = back.steps
    heads_inside = (N * H * d, d, H * d)
    dk_dv = [tuple(int(r[f][0]) for f in "bhn") for r in main.args if isinstance(r, np.ndarray)]
    assert dk_dv[-2:] == [heads_inside] * 2
    assert tuple(int(rnd.args[5][f][0]) for f in "bhn") == heads_inside
    plain = launch.prepare_backward("tc", do, q, k, v, o, lse, causal=True)
    assert plain is not back  # another layout of the gradients: another call
    with pytest.raises(ValueError, match=r"dk must be a bfloat16 array of shape \(2, 3, 130, 64\)"):
        launch.prepare_backward("tc", do, q, k, v, o, lse,
                                grads=(rows_of[0], gpu.ndarray((B, H, N, 32), BF16), rows_of[2]))
    odd = gpu.ndarray((B, H, N, d + 4), BF16).view_of((B, H, N, d), (H * N * (d + 4) * 2,
                                                                     N * (d + 4) * 2,
                                                                     (d + 4) * 2, 2))
    with pytest.raises(ValueError, match=r"^dv \(shape .*cannot read in place"):
        launch.prepare_backward("tc", do, q, k, v, o, lse, grads=(rows_of[0], rows_of[1], odd))


def test_a_launchers_step_puts_its_buffers_first():
    step = prepared.Step(None, (1,), (32,), 0, (prepared.Slot("q"), np.int32(3),
                                                prepared.Slot("o")), "k<1>")
    with pytest.raises(ValueError, match="k<1>: buffer slots must come before the constants"):
        prepared.Prepared("tc", [step])


def test_the_stand_in_holds_where_real_cupy_was_imported_first(gpu, monkeypatch):
    # a GPU machine running the whole suite imports CuPy before these tests install their
    # stand-in: its submodules stay in sys.modules and must not leak into the stand-in's calls
    import types

    real = types.ModuleType("cupy.cuda.function")
    real.CPointer = real.CIntptr = lambda *a: pytest.fail("the real CuPy's argument types used")
    monkeypatch.setitem(sys.modules, "cupy.cuda", types.SimpleNamespace(function=real))
    monkeypatch.setitem(sys.modules, "cupy.cuda.function", real)
    q, k, v = _packed(gpu)
    launch.forward("tc", q, k, v, causal=True)
    (args,) = _args_of(gpu, "tc90_forward")
    assert sum(isinstance(a, np.ndarray) for a in args) == 4  # the Rows, as given


@pytest.mark.parametrize("causal", [False, True])
def test_every_constant_of_a_tc_call_is_one_the_native_plan_can_pass(gpu, causal):
    # flashlab.native packs each prepared step's constants as bytes: NumPy scalars and Rows
    # records as themselves, the untraced build's trace stand-ins (CuPy arrays) as addresses
    from flashlab import native

    q, k, v = _packed(gpu, 2, 130, 3, 64)
    o = gpu.ndarray((2, 3, 130, 64), BF16)
    lse = gpu.ndarray((2, 3, 130), np.float32)
    fwd = launch.prepare_forward("tc", q, k, v, o, causal=causal)
    back = launch.prepare_backward("tc", o, q, k, v, o, lse, causal=causal)
    seen = 0
    for step in fwd.steps + back.steps:
        for c in step.split()[1]:
            b = native.const_bytes(c)
            if isinstance(c, fake_cupy.ndarray):
                assert b == np.uint64(c.data.ptr).tobytes()
                seen += 1
            else:
                assert b == np.asarray(c).tobytes()
    assert seen > 0  # the trace stand-ins are among them


@pytest.mark.parametrize("cc,limit,d,qs", [("80", 166912, 64, 2), ("80", 166912, 128, 2),
                                           ("86", 101376, 64, 2), ("86", 101376, 96, 2),
                                           ("86", 101376, 128, 2), ("90", 232448, 64, 3)])
def test_tc_backward_takes_smaller_tiles_where_the_gpu_has_less_shared_memory(monkeypatch, cc,
                                                                              limit, d, qs):
    # an A100 (163 KB opt-in) and sm_86 / sm_89 (99 KB) against the table made on the H200
    from flashlab.launch import plans

    monkeypatch.setenv("FLASHLAB_TC_WGMMA", "0")  # kernels/tc.cu, the source these GPUs run
    fake = fake_cupy.install(monkeypatch, cc=cc, smem_optin=limit)
    try:
        q, k, v, do, o = (fake.ndarray((1, 2, 200, d), BF16) for _ in range(5))
        launch.backward("tc", do, q, k, v, o, fake.ndarray((1, 2, 200), np.float32), causal=True)
        (main,) = [x for x in fake.launches if x["name"].startswith("tc_backward<")]
        assert main["smem"] <= limit and main["name"].endswith(f", {qs}>")
        table = plans.tc_plan(d, "backward", variant="mma")
        assert (main["smem"] == table["smem"]) == (limit == 232448)
    finally:
        fake_cupy.uninstall()


def test_tc_where_no_tile_fits_says_what_to_do(monkeypatch):
    fake = fake_cupy.install(monkeypatch, cc="86", smem_optin=101376)
    try:
        x = [fake.ndarray((1, 2, 200, 256), BF16) for _ in range(5)]
        launch.forward("tc", *x[:3])  # d = 256 forward: 96 KB fits
        with pytest.raises(ValueError, match=r"kernel 'tc' at head_dim 256 needs 139776 bytes of "
                                             r"shared memory per block; this GPU allows 101376: "
                                             r"use kernel='fa2' or 'fa1' on float32 inputs"):
            launch.backward("tc", *x, fake.ndarray((1, 2, 200), np.float32))
    finally:
        fake_cupy.uninstall()


@pytest.mark.parametrize("kernel,dtype", [("tc", BF16), ("fa2", np.float32)])
def test_a_variant_with_gqa_prepares_what_the_cupy_api_launches(gpu, monkeypatch, kernel,
                                                                 dtype):
    # flashlab.torch's window= and enable_gqa=: the variant's build and arguments (its arrays
    # by address in a native plan), k and v with fewer heads; the backward's dk, dv per query
    # head, summed by the caller
    from flashlab.launch import fa2
    from flashlab.mods.kernel import KernelVariant

    for launcher in (tc, fa2):  # the CuPy API's group sums (a CuPy kernel the stand-in lacks)
        monkeypatch.setattr(launcher, "sum_groups", lambda full, out, kv_heads: None)

    variant = KernelVariant.of(window=(40, 0))
    B, H, Hkv, N, d = 1, 4, 2, 130, 64
    q, o, do = (gpu.ndarray((B, H, N, d), dtype) for _ in range(3))
    k, v = (gpu.ndarray((B, Hkv, N, d), dtype) for _ in range(2))
    lse = gpu.ndarray((B, H, N), np.float32)
    launch.forward(kernel, q, k, v, causal=True, variant=variant)
    launch.backward(kernel, do, q, k, v, o, lse, causal=True, variant=variant)
    api = list(gpu.launches)
    gpu.launches.clear()
    with pytest.raises(ValueError, match="heads"):  # fewer heads need the variant
        launch.prepare_forward(kernel, q, k, v, o, causal=True)
    fwd = launch.prepare_forward(kernel, q, k, v, o, causal=True, variant=variant)
    per_head = [gpu.ndarray((B, H, N, d), dtype) for _ in range(3)]
    back = launch.prepare_backward(kernel, do, q, k, v, o, lse, causal=True, variant=variant,
                                   grads=per_head)
    fwd.run({"q": q, "k": k, "v": v, "o": o, "lse": lse})
    back.run({"do": do, "q": q, "k": k, "v": v, "o": o, "lse": lse, "dq": per_head[0],
              "dk": per_head[1], "dv": per_head[2]}, workspace=0x10000)
    ran = gpu.launches
    assert [x["name"] for x in ran] == [x["name"] for x in api]
    main = next(x for x in ran if x["name"].split("<")[0].endswith("_forward"))
    main_api = next(x for x in api if x["name"].split("<")[0].endswith("_forward"))
    arrays = [a for a in main["args"] if isinstance(a, fake_cupy.ndarray)]
    assert main["args"][:5] == (q, k, v, o, lse)
    assert arrays[5:] == [a for a in main_api["args"] if isinstance(a, fake_cupy.ndarray)][5:]
    assert any(a.dtype == np.uint8 for a in arrays[5:])  # the block mask, one byte per tile
    assert any("#define FL_MODS" in (c["code"] or "") for c in gpu.compiles)
    bwd = next(x for x in ran if x["name"].split("<")[0].endswith("_backward"))
    assert all(any(a is g for a in bwd["args"]) for g in per_head[1:])  # dk, dv per query head


def test_a_t4_runs_the_turing_build_as_compute_75_ptx_in_float16(monkeypatch):
    # a T4 (compute capability 7.5, 64 KB of shared memory): tc.cu's float16 build for
    # compute_75 with its tiles, no switch needed; bfloat16 and the other head dims are not
    # there ('auto' runs fa2 on float32 copies), and tc refuses bfloat16 naming what to pass
    from flashlab import registry

    monkeypatch.delenv(registry.TURING_FORCE, raising=False)
    fake = fake_cupy.install(monkeypatch, cc="75", smem_optin=65536)
    try:
        x = [fake.ndarray((1, 2, 200, 64), np.float16) for _ in range(5)]
        assert registry.for_auto("float16", 64, 75) == ("tc",)
        assert registry.for_auto("float16", 128, 75) == ("tc",)
        assert registry.for_auto("bfloat16", 64, 75) == ()  # auto: fa2 on float32 copies
        assert registry.for_auto("float16", 96, 75) == ()
        assert plans.variant("tc", 75, 64) == "turing"
        launch.forward("tc", *x[:3], causal=True)
        launch.backward("tc", *x, fake.ndarray((1, 2, 200), np.float32), causal=True)
        assert all("--gpu-architecture=compute_75" in c["options"] for c in fake.compiles)
        names = [r["name"] for r in fake.launches]
        assert "tc_forward<false, 64, 64, 4, 2, 64>" in names
        assert "tc_backward<false, 64, 32, 64, 4, 2, 2, 2, 2>" in names
        assert all(r["smem"] <= 65536 for r in fake.launches)
        b = [fake.ndarray((1, 2, 200, 64), BF16) for _ in range(3)]
        with pytest.raises(RuntimeError, match=r"kernel 'tc' does not run bfloat16 at head dim "
                                               r"64 on this GPU: on compute capability 7.5 "
                                               r"kernel 'tc' takes float16 at head dims 64, 128 "
                                               r"only \(the others need 8.0\+\); use "
                                               r"kernel='auto'"):
            launch.forward("tc", *b)
        with pytest.raises(RuntimeError, match=r"does not run float16 at head dim 96"):
            launch.forward("tc", *[fake.ndarray((1, 2, 200, 96), np.float16) for _ in range(3)])
    finally:
        fake_cupy.uninstall()


def test_newer_gpus_run_the_turing_build_only_when_forced(monkeypatch):
    # FLASHLAB_TC_TURING=1 puts it first wherever it fits (how the H200 tests it); float16
    # at 64 and 128 only, so d = 96 keeps the GPU's own; bfloat16 is refused by the launcher
    from flashlab import registry

    monkeypatch.delenv(registry.TURING_FORCE, raising=False)
    assert (plans.variant("tc", 86, 64), plans.variant("tc", 90, 64)) == ("mma", "wgmma")
    monkeypatch.setenv(registry.TURING_FORCE, "1")
    assert (plans.variant("tc", 86, 64), plans.variant("tc", 90, 128)) == ("turing", "turing")
    assert plans.variant("tc", 90, 96) == "mma"
    fake = fake_cupy.install(monkeypatch, cc="90")
    try:
        b = [fake.ndarray((1, 2, 200, 64), BF16) for _ in range(3)]
        with pytest.raises(ValueError, match=r"variant 'turing' here, which takes float16 only, "
                                             r"not bfloat16: pass float16 inputs"):
            launch.forward("tc", *b)
    finally:
        fake_cupy.uninstall()
