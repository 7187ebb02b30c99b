"""Central differences: the check every op's backward is held to.

For a function f of tensors and a fixed random weighting w of its output, L = sum(w * f(x)) is
one number, and

    dL/dx[i] ~= (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)

with an error of order eps^2 (the eps^1 terms cancel). In float64 with eps = 1e-6 that is about
1e-10 relative to the gradient, far below any mistake a backward formula can make.
"""
from __future__ import annotations

import numpy as np

from .tensor import Tensor, no_grad


def numerical_grad(f, inputs: list, w, index: int, entries, eps: float = 1e-6) -> np.ndarray:
    """Central differences of L = sum(w * f(*inputs)) with respect to inputs[index] at `entries`
    (flat indices). Returns one number per entry."""
    x = inputs[index].data
    flat = x.reshape(-1)  # a view: writing it moves the input
    out = []
    with no_grad():
        for e in entries:
            old = flat[e].copy()
            flat[e] = old + eps
            up = float((f(*inputs).data * w).sum())
            flat[e] = old - eps
            down = float((f(*inputs).data * w).sum())
            flat[e] = old
            out.append((up - down) / (2 * eps))
    return np.array(out)


def grad_check(f, *inputs: Tensor, eps: float = 1e-6, rtol: float = 1e-6, atol: float = 1e-8,
               max_entries: int = 40, seed: int = 0) -> None:
    """Check f's backward against central differences at up to `max_entries` entries of each
    input that requires grad. Raises AssertionError naming the input and the worst entry.

    Inputs must be float64 NumPy tensors (contiguous), so eps-sized steps are representable.
    """
    rng = np.random.default_rng(seed)
    inputs = list(inputs)
    for t in inputs:
        t.grad = None
    out = f(*inputs)
    w = rng.standard_normal(out.shape)  # a random direction: checks every output, not just sums
    (out * Tensor(w)).sum().backward()
    for i, t in enumerate(inputs):
        if not t.requires_grad:
            continue
        if t.grad is None:
            raise AssertionError(f"input {i} {t.shape}: backward produced no gradient")
        n = t.size
        entries = np.arange(n) if n <= max_entries else rng.choice(n, max_entries, replace=False)
        numeric = numerical_grad(f, inputs, w, i, entries, eps)
        analytic = np.asarray(t.grad).reshape(-1)[entries]
        err = np.abs(numeric - analytic)
        bad = err > atol + rtol * np.abs(numeric)
        if bad.any():
            j = int(np.argmax(err - rtol * np.abs(numeric)))
            raise AssertionError(
                f"input {i} {t.shape}: entry {int(entries[j])}: backward gives "
                f"{float(analytic[j])!r}, central differences {float(numeric[j])!r} "
                f"(|diff| {err[j]:.3g})")
