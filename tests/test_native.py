"""flashlab.native (flashlab.torch's C++ launch path) on any machine with PyTorch and a C++
compiler: prepared calls made into the extension's plans and run on CPU tensors with a stand-in
for cuLaunchKernel that records every launch, so the argument blocks, the buffers' addresses,
the workspace carving, the dO copy and the autograd node are checked without a GPU. (On a GPU,
tests/test_torch_op_gpu.py runs the real kernels through it.)"""
import ctypes

import numpy as np
import pytest

from flashlab.launch.prepared import Prepared, Slot, Step, rows

torch = pytest.importorskip("torch")
native = pytest.importorskip("flashlab.native")

u = ctypes.c_uint
LAUNCH = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, u, u, u, u, u, u, u, ctypes.c_void_p,
                          ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)


class _Func:
    def __init__(self, ptr):
        self.ptr = ptr


@pytest.fixture
def ext(monkeypatch):
    mod = native.module()
    if mod is None:
        pytest.skip(f"flashlab.native did not build: {native.why_not()}")
    launches = []

    def record(func, gx, gy, gz, bx, by, bz, smem, stream, params, extra):
        # the argument block lives for the call only (the driver copies it): copied here,
        # 24 bytes of each argument (the largest, a Rows), ARGS[func] arguments
        launches.append({"func": func, "grid": (gx, gy, gz), "block": (bx, by, bz),
                         "smem": smem, "params": [ctypes.string_at(params[i], 24)
                                                  for i in range(ARGS[func])]})
        return 0

    callback = LAUNCH(record)
    address = ctypes.cast(callback, ctypes.c_void_p).value
    # no context to make current on CPU tensors (plan(context=0)): the two ctx functions unused
    monkeypatch.setitem(native._state, "driver", ([address, 0, 0], None))
    mod.launches, mod.keep = launches, callback
    return mod


ARGS = {0xF00D: 9, 1: 5, 2: 11, 3: 3}  # arguments of each test launch, by function handle


def _u64(params, i):
    return int(np.frombuffer(params[i][:8], np.uint64)[0])


def _bytes(params, i, n):
    return params[i][:n]


def _forward_call():
    args = (*(Slot(n) for n in ("q", "k", "v", "o", "lse")), np.int32(-7), np.float32(0.125),
            rows((11, 22, 33)), np.int64(2**40 + 5))
    return Prepared("tc", [Step(_Func(0xF00D), (3, 2), (128,), 4096, args, "fwd")],
                    describe="test")


def test_a_forward_plan_launches_with_the_tensors_addresses_and_the_constants(ext):
    plan = native.plan(ext, _forward_call(), native.FORWARD_BUFFERS, context=0)
    q, k, v = (torch.randn(2, 3, 40, 64) for _ in range(3))
    o, lse = ext.forward(plan, q, k, v)
    (run,) = ext.launches
    assert run["func"] == 0xF00D and run["grid"] == (3, 2, 1) and run["block"] == (128, 1, 1)
    assert run["smem"] == 4096
    p = run["params"]
    assert [_u64(p, i) for i in range(5)] == [x.data_ptr() for x in (q, k, v, o, lse)]
    assert _bytes(p, 5, 4) == np.int32(-7).tobytes() and _bytes(p, 6, 4) == np.float32(0.125).tobytes()
    assert _bytes(p, 7, 24) == rows((11, 22, 33)).tobytes()
    assert _u64(p, 8) == 2**40 + 5
    assert o.shape == q.shape and o.is_contiguous() and lse.shape == (2, 3, 40)
    assert lse.dtype == torch.float32


def test_o_and_the_gradients_take_heads_inside_rows_for_transposed_views(ext):
    qkv = torch.randn(2, 40, 3, 4, 64)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    o, _ = ext.forward(native.plan(ext, _forward_call(), native.FORWARD_BUFFERS, context=0), q, k, v)
    assert o.stride() == (40 * 4 * 64, 64, 4 * 64, 1)


def _backward_call():
    names = native.BACKWARD_BUFFERS
    dot = Step(_Func(1), (10,), (256,), 0, (Slot("do"), Slot("o"), Slot("Dvec"), Slot("dq_acc"),
                                            np.int32(1)), "dot")
    main = Step(_Func(2), (2, 6), (256,), 1000, tuple(Slot(n) for n in names[1:]) +
                (Slot("Dvec"), Slot("dq_acc"), np.int32(2)), "main")
    rnd = Step(_Func(3), (5, 6), (256,), 0, (Slot("dq_acc"), Slot("dq"), np.int32(3)), "dq")
    return Prepared("tc", [dot, main, rnd], workspace={"Dvec": 100, "dq_acc": 1000},
                    describe="test")


def test_the_autograd_node_runs_the_backward_plan_with_its_workspace_parts(ext):
    q, k, v = (torch.randn(1, 2, 40, 64, requires_grad=True) for _ in range(3))
    fwd = native.plan(ext, _forward_call(), native.FORWARD_BUFFERS, context=0)
    bwd = native.plan(ext, _backward_call(), native.BACKWARD_BUFFERS, (5120, 2560, 64, 1), context=0)
    assert bwd.workspace == 256 + 1024  # two parts, each on 256 bytes
    o = ext.attention(q, k, v, fwd, bwd)
    assert o.requires_grad and len(ext.launches) == 1
    do = torch.randn(1, 2, 40, 64)
    o.backward(do)
    dot, main, rnd = ext.launches[1:]
    assert (dot["func"], main["func"], rnd["func"]) == (1, 2, 3)
    assert _u64(dot["params"], 0) == do.data_ptr()  # the layout prepared for: read in place
    assert _u64(main["params"], 0) == q.data_ptr() and _u64(main["params"], 1) == k.data_ptr()
    ws = _u64(dot["params"], 2)
    assert _u64(dot["params"], 3) == ws + 256 == _u64(main["params"], 9)
    assert _u64(rnd["params"], 0) == ws + 256
    assert q.grad.shape == q.shape and k.grad.shape == k.shape and v.grad.shape == v.shape
    assert _u64(main["params"], 5) == q.grad.data_ptr() and _u64(main["params"], 6) == k.grad.data_ptr()
    assert _u64(rnd["params"], 1) == q.grad.data_ptr()


def test_a_do_of_another_layout_is_copied_into_the_prepared_one(ext):
    q, k, v = (torch.randn(1, 2, 40, 64, requires_grad=True) for _ in range(3))
    fwd = native.plan(ext, _forward_call(), native.FORWARD_BUFFERS, context=0)
    bwd = native.plan(ext, _backward_call(), native.BACKWARD_BUFFERS, (5120, 2560, 64, 1), context=0)
    o = ext.attention(q, k, v, fwd, bwd)
    do = torch.randn(1, 40, 2, 64).transpose(1, 2)  # heads inside rows: not the prepared layout
    o.backward(do)
    assert _u64(ext.launches[1]["params"], 0) != do.data_ptr()  # a copy, as (B, H, N, d)


def test_no_gradient_no_node(ext):
    q, k, v = (torch.randn(1, 2, 40, 64) for _ in range(3))
    fwd = native.plan(ext, _forward_call(), native.FORWARD_BUFFERS, context=0)
    bwd = native.plan(ext, _backward_call(), native.BACKWARD_BUFFERS, (5120, 2560, 64, 1), context=0)
    o = ext.attention(q, k, v, fwd, bwd)
    assert not o.requires_grad and o.grad_fn is None


def test_a_constant_the_plan_cannot_pass_is_refused():
    with pytest.raises(TypeError, match="a constant argument of type str"):
        native.const_bytes("x")
    with pytest.raises(TypeError, match="ndarray"):
        native.const_bytes(np.zeros(3, np.int32))
