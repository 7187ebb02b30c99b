"""The autodiff layer: every op's backward equals central differences (float64, CPU);
FlashAttention's gradients equal standard attention's; a tiny transformer learns; flash and
standard train to the same losses; bad input gets an error naming the op and the shapes."""
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flashlab.autodiff import Function, Tensor, grad_check, no_grad, tensor
from flashlab.autodiff import tensor_functions as tf
from flashlab.autodiff.data import CharTokenizer, get_batch, load_text
from flashlab.autodiff.nn import Adam, Decoder
from flashlab.autodiff.train import TrainConfig, train
from flashlab.cli import main


def leaf(rng, *shape, low=None):
    x = rng.standard_normal(shape)
    if low is not None:
        x = low + np.abs(x)  # keep away from 0 (Div, Log)
    return tensor(x, requires_grad=True)


# ----------------------------------------------------------------------------- gradient checks

class On:
    """Puts the constants an op test needs on one device, so the same table runs on the GPU
    (tests/test_autodiff_gpu.py): on.t(x) a constant tensor, on.a(x) a raw (integer) array."""

    def __init__(self, device="cpu", dtype=np.float64):
        self.device, self.dtype = device, dtype

    def t(self, x):
        return tensor(x, device=self.device, dtype=self.dtype)

    def a(self, x):
        from flashlab.autodiff.tensor import to_device

        return to_device(np.asarray(x), self.device)


IDS = [[0, 3, 3], [5, 1, 0]]  # repeated ids: their gradients must add up

# name -> (f(on, *tensors), input shapes, options for leaf())
OPS = {
    "neg": (lambda on, a: -a, [(3, 4)], {}),
    "add broadcast": (lambda on, a, b: a + b, [(2, 3, 4), (3, 1)], {}),
    "sub scalar": (lambda on, a: 2.0 - a - 1.5, [(3, 4)], {}),
    "mul broadcast": (lambda on, a, b: a * b, [(2, 1, 4), (3, 4)], {}),
    "div": (lambda on, a, b: a / b, [(3, 4), (4,)], {"low": 0.5}),
    "exp": (lambda on, a: a.exp(), [(3, 4)], {}),
    "log": (lambda on, a: a.log(), [(3, 4)], {"low": 0.5}),
    "gelu": (lambda on, a: a.gelu(), [(5, 6)], {}),
    "matmul batched": (lambda on, a, b: a @ b, [(2, 3, 4, 5), (5, 2)], {}),
    "matmul broadcast batch": (lambda on, a, b: a @ b, [(2, 1, 3, 4), (3, 4, 2)], {}),
    "sum all": (lambda on, a: a.sum(), [(3, 4)], {}),
    "sum axis keepdims": (lambda on, a: a.sum(axis=1, keepdims=True), [(2, 3, 4)], {}),
    "sum axes": (lambda on, a: a.sum(axis=(0, 2)), [(2, 3, 4)], {}),
    "mean axis": (lambda on, a: a.mean(axis=-1), [(2, 3, 4)], {}),
    "mean all": (lambda on, a: a.mean(), [(2, 3, 4)], {}),
    "reshape": (lambda on, a: a.reshape(4, -1) * on.t(np.arange(6.0)), [(2, 3, 4)], {}),
    "permute": (lambda on, a: a.permute(2, 0, 1) * on.t(np.arange(2.0)), [(4, 2, 3)], {}),
    "transpose": (lambda on, a: a.transpose() @ on.t(np.ones((3, 2))), [(2, 3, 3)], {}),
    "softmax last": (lambda on, a: a.softmax(axis=-1), [(3, 5)], {}),
    "softmax axis 0": (lambda on, a: a.softmax(axis=0), [(3, 5)], {}),
    "log_softmax": (lambda on, a: a.log_softmax(axis=-1), [(3, 5)], {}),
    "cross_entropy": (lambda on, a: a.cross_entropy(on.a([[1, 4], [0, 4]])), [(2, 2, 5)], {}),
    "nll": (lambda on, a: a.nll(on.a([2, 0, 1])), [(3, 4)], {}),
    "layer_norm": (lambda on, x, w, b: x.layer_norm(w, b), [(2, 3, 6), (6,), (6,)], {}),
    "embedding": (lambda on, w: w.embedding(on.a(IDS)), [(6, 4)], {}),
    "dropout": (lambda on, a: a.dropout(0.4, generator=np.random.default_rng(7)), [(4, 5)], {}),
    "flash attention": (lambda on, q, k, v: q.flash_attention(k, v), [(1, 2, 5, 4)] * 3, {}),
    "flash attention causal": (lambda on, q, k, v: q.flash_attention(k, v, causal=True),
                               [(1, 2, 5, 4)] * 3, {}),
}


@pytest.mark.parametrize("name", list(OPS))
def test_every_op_backward_equals_central_differences(name, rng):
    f, shapes, opts = OPS[name]
    on = On()
    grad_check(lambda *ts: f(on, *ts), *[leaf(rng, *s, **opts) for s in shapes])


@pytest.mark.parametrize("attention", ["flash", "standard"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("Nq, Nk", [(7, 7), (5, 9)])
def test_attention_backward_equals_central_differences(attention, causal, Nq, Nk, rng):
    q, k, v = leaf(rng, 2, 2, Nq, 4), leaf(rng, 2, 2, Nk, 4), leaf(rng, 2, 2, Nk, 4)
    f = ((lambda q, k, v: q.flash_attention(k, v, causal=causal)) if attention == "flash"
         else (lambda q, k, v: q.standard_attention(k, v, causal=causal)))
    grad_check(f, q, k, v, max_entries=20)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(1, 3), min_size=1, max_size=3), st.data())
def test_broadcasting_ops_on_random_shapes(shape, data):
    # b takes a random suffix of a's shape with some axes set to 1: every broadcast pattern
    cut = data.draw(st.integers(0, len(shape)))
    b_shape = [1 if data.draw(st.booleans()) else n for n in shape[cut:]]
    rng = np.random.default_rng(len(shape) * 10 + cut)
    a, b = leaf(rng, *shape), leaf(rng, *b_shape, low=0.5)
    op = data.draw(st.sampled_from(["add", "mul", "div"]))
    f = {"add": lambda a, b: a + b, "mul": lambda a, b: a * b, "div": lambda a, b: a / b}[op]
    grad_check(f, a, b, max_entries=12)
    grad_check(lambda b, a: f(a, b), b, a, max_entries=12)  # broadcast on the left too


def test_a_whole_decoder_backward_equals_central_differences():
    model = Decoder(vocab=7, seq=5, dim=8, layers=1, heads=2, attention="flash", seed=3)
    ids = np.array([[1, 2, 3, 4, 0], [6, 5, 5, 1, 2]])
    targets = np.roll(ids, -1, axis=1)
    params = model.parameters()

    def loss(*ps):  # the parameters are the model's own tensors, moved in place by grad_check
        return model.loss(ids, targets)

    grad_check(loss, *params, max_entries=4, rtol=1e-5)


# ----------------------------------------------------------------------------- FlashAttention


@pytest.mark.parametrize("causal", [False, True])
def test_flash_attention_function_gradients_equal_standard_attentions(causal, rng):
    B, H, N, d = 2, 3, 70, 16  # N ragged for the reference's default tiles
    base = [rng.standard_normal((B, H, N, d)) for _ in range(3)]
    do = rng.standard_normal((B, H, N, d))
    outs = {}
    for kind in ("flash", "standard"):
        q, k, v = (tensor(x.copy(), requires_grad=True) for x in base)
        o = getattr(q, f"{kind}_attention")(k, v, causal=causal)
        (o * tensor(do)).sum().backward()
        outs[kind] = [o.data, q.grad, k.grad, v.grad]
    for name, a, b in zip(("o", "dq", "dk", "dv"), outs["flash"], outs["standard"]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=name)


def test_flash_attention_saves_no_n_by_n_matrix_but_standard_attention_does(rng):
    N, d = 40, 8
    q, k, v = (leaf(rng, 1, 2, N, d) for _ in range(3))

    def saved_shapes(out):
        shapes, stack, seen = [], [out], set()
        while stack:
            t = stack.pop()
            if t.history is None or id(t) in seen:
                continue
            seen.add(id(t))
            shapes += [tuple(x.shape) for x in t.history.ctx.saved_values if hasattr(x, "shape")]
            stack += [x for x in t.history.inputs if isinstance(x, Tensor)]
        return shapes

    flash = saved_shapes(q.flash_attention(k, v, causal=True))
    standard = saved_shapes(q.standard_attention(k, v, causal=True))
    assert (1, 2, N) in flash  # the logsumexp L
    assert not any(s[-2:] == (N, N) for s in flash)
    assert any(s[-2:] == (N, N) for s in standard)  # P


def test_flash_attention_node_calls_the_flashlab_api(monkeypatch, rng):
    import flashlab.api as api

    calls = []
    real_f, real_b = api.flash_attention, api.flash_attention_backward
    monkeypatch.setattr(api, "flash_attention",
                        lambda *a, **kw: calls.append(("forward", kw)) or real_f(*a, **kw))
    monkeypatch.setattr(api, "flash_attention_backward",
                        lambda *a, **kw: calls.append(("backward", kw)) or real_b(*a, **kw))
    q, k, v = (leaf(rng, 1, 1, 6, 4) for _ in range(3))
    q.flash_attention(k, v, causal=True).sum().backward()
    assert calls == [("forward", {"causal": True, "return_lse": True}),
                     ("backward", {"causal": True})]


# ----------------------------------------------------------------------------- the engine


def test_gradients_add_up_over_every_use_and_in_leaves_across_calls(rng):
    x = leaf(rng, 3)
    y = x * x + x * 3.0 + x  # dy/dx = 2x + 4
    y.sum().backward()
    np.testing.assert_allclose(x.grad, 2 * x.data + 4)
    (x * 2.0).sum().backward()  # a second graph: leaves accumulate, as in torch
    np.testing.assert_allclose(x.grad, 2 * x.data + 6)


def test_a_deep_chain_does_not_hit_the_recursion_limit():
    x = tensor(np.ones(2), requires_grad=True)
    y = x
    for _ in range(3000):
        y = y * 1.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad, np.ones(2))


def test_no_grad_records_no_graph(rng):
    x = leaf(rng, 2, 2)
    with no_grad():
        y = (x @ x).softmax()
    assert y.history is None and not y.requires_grad


def test_a_user_defined_function_plugs_in(rng):
    class Cube(Function):
        @staticmethod
        def forward(ctx, a):
            ctx.save_for_backward(a)
            return a ** 3

        @staticmethod
        def backward(ctx, grad):
            (a,) = ctx.saved_values
            return (3 * a * a * grad,)

    grad_check(lambda a: Cube.apply(a), leaf(rng, 4))


# ----------------------------------------------------------------------------- bad input


def test_shapes_that_cannot_broadcast_name_the_op_and_the_shapes():
    a, b = tensor(np.ones((2, 3))), tensor(np.ones((4,)))
    for op, f in (("Add", lambda: a + b), ("Mul", lambda: a * b), ("Div", lambda: a / b)):
        with pytest.raises(ValueError, match=re.escape(f"{op}: shapes (2, 3) and (4,) cannot "
                                                       "broadcast")):
            f()


def test_shapes_that_cannot_multiply_name_the_op_and_the_shapes():
    with pytest.raises(ValueError, match=re.escape("MatMul: cannot multiply shapes (2, 3) and "
                                                   "(4, 5)")):
        tensor(np.ones((2, 3))) @ tensor(np.ones((4, 5)))
    with pytest.raises(ValueError, match="MatMul: both operands need at least 2 axes"):
        tensor(np.ones(3)) @ tensor(np.ones((3, 2)))
    with pytest.raises(ValueError, match=re.escape("Reshape: cannot reshape (2, 3)")):
        tensor(np.ones((2, 3))).reshape(4, 2)
    with pytest.raises(ValueError, match="LayerNorm: weight has shape"):
        tensor(np.ones((2, 3))).layer_norm(tensor(np.ones(4)), tensor(np.ones(3)))
    with pytest.raises(ValueError, match="NLLLoss: targets of shape"):
        tensor(np.ones((2, 3))).cross_entropy(np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=re.escape("Embedding: ids must lie in 0..3")):
        tensor(np.ones((4, 2))).embedding(np.array([1, 4]))


def test_backward_twice_on_a_freed_graph_says_retain_graph(rng):
    x = leaf(rng, 2, 3)
    w = leaf(rng, 3, 4)
    loss = (x @ w).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match=r"Sum \(output \(\)\): graph freed .* pass "
                                           r"retain_graph=True"):
        loss.backward()


def test_retain_graph_allows_a_second_backward(rng):
    x = leaf(rng, 2, 3)
    loss = x.exp().sum()
    loss.backward(retain_graph=True)
    first = x.grad.copy()
    loss.backward()
    np.testing.assert_allclose(x.grad, 2 * first)


class _FakeCupyArray:
    """Looks like a CuPy array to the device check (type module 'cupy...'), without CuPy."""

    __module__ = "cupy._core.core"

    def __init__(self, shape):
        self.shape, self.dtype = shape, np.dtype(np.float32)

        class _Dev:
            id = 0
        self.device = _Dev()


def test_mixing_numpy_and_cupy_tensors_names_the_op_shapes_and_devices():
    a = tensor(np.ones((2, 3)))
    with pytest.raises(TypeError, match=re.escape(
            "MatMul: inputs are on different devices (input 0 (2, 3) on cpu, input 1 (3, 4) on "
            "gpu:0)")):
        tf.MatMul.apply(a, Tensor(_FakeCupyArray((3, 4))))


def test_backward_of_a_non_scalar_needs_a_gradient(rng):
    with pytest.raises(RuntimeError, match=re.escape("shape (2, 2): call loss.sum().backward()")):
        (leaf(rng, 2, 2) * 2.0).backward()


# ----------------------------------------------------------------------------- training


def test_adam_minimises_a_quadratic():
    x = tensor(np.array([3.0, -2.0]), requires_grad=True)
    opt = Adam([x], lr=0.1)
    for _ in range(300):
        opt.zero_grad()
        ((x - 1.0) * (x - 1.0)).sum().backward()
        opt.step()
    np.testing.assert_allclose(x.data, [1.0, 1.0], atol=1e-2)


def test_tokenizer_round_trips_the_shipped_text():
    text = load_text()
    assert 50_000 < len(text) < 300_000 and text.startswith("THE SONNETS")
    tok = CharTokenizer(text)
    assert tok.decode(tok.encode(text[:500])) == text[:500]
    x, y = get_batch(tok.encode(text), 3, 10, np.random.default_rng(0))
    assert x.shape == y.shape == (3, 10) and (x[:, 1:] == y[:, :-1]).all()


TINY = dict(steps=12, batch=4, seq=32, layers=1, heads=2, dim=32, lr=1e-2, sample=0)


@pytest.mark.parametrize("attention", ["flash", "standard"])
def test_a_few_training_steps_lower_the_loss_on_cpu(attention):
    r = train(TrainConfig(attention=attention, **TINY))
    assert np.isfinite(r.losses).all()
    assert np.mean(r.losses[-3:]) < r.losses[0] - 0.3  # from ln(62) = 4.13
    assert r.peak_memory > 0 and r.seconds_per_step > 0


def test_flash_and_standard_train_to_the_same_losses_with_the_same_seed():
    cfg = dict(TINY, steps=10, layers=2, heads=4, dim=32, dropout=0.1)
    flash = train(TrainConfig(attention="flash", **cfg)).losses
    standard = train(TrainConfig(attention="standard", **cfg)).losses
    np.testing.assert_allclose(flash, standard, rtol=1e-8)
    assert flash[-1] < flash[0]


def test_cli_train_prints_losses_time_memory_and_a_sample(capsys):
    code = main(["train", "--steps", "4", "--batch", "2", "--seq", "16", "--layers", "1",
                 "--heads", "2", "--dim", "16", "--sample", "30"])
    out = capsys.readouterr().out
    assert code == 0
    assert re.search(r"step +1/4  loss 4\.1\d+", out) and re.search(r"step +4/4  loss", out)
    assert "time per step:" in out and "ms (mean of steps 2..4)" in out
    assert "peak memory:" in out and "tracemalloc" in out
    sample = out.split("temperature 0.8):\n")[1]
    assert len(sample.rstrip("\n")) >= 25  # 30 characters, some of them newlines


def test_cli_train_compare_prints_both_curves(capsys):
    code = main(["train", "--compare", "--steps", "3", "--batch", "2", "--seq", "16",
                 "--layers", "1", "--heads", "2", "--dim", "16", "--sample", "0"])
    out = capsys.readouterr().out
    assert code == 0
    assert "flash loss" in out and "standard loss" in out
    worst = float(re.search(r"largest relative difference over 3 steps: (\S+)", out).group(1))
    assert worst < 1e-8


def test_cli_train_errors(capsys):
    from flashlab.launch.device import gpu_available

    assert main(["train", "--dim", "30", "--heads", "4"]) == 2
    assert "--dim 30 must be a multiple of --heads 4" in capsys.readouterr().err
    assert main(["train", "--steps", "0"]) == 2
    capsys.readouterr()
    if not gpu_available():
        assert main(["train", "--device", "gpu"]) == 1
        assert "needs CuPy and a CUDA GPU" in capsys.readouterr().err


def test_tensor_functions_gathers_the_op_modules():
    from pathlib import Path

    from flashlab.autodiff import attention, elementwise, layers, shapes

    for mod in (attention, elementwise, layers, shapes):
        assert len(Path(mod.__file__).read_text().splitlines()) < 500
    assert tf.FlashAttention is attention.FlashAttention
    assert tf.standard_attention is attention.standard_attention  # the teaching pair, together
    assert tf.Add is elementwise.Add and tf.LayerNorm is layers.LayerNorm and tf.Sum is shapes.Sum
    assert all(hasattr(tf, name) for name in tf.__all__)
