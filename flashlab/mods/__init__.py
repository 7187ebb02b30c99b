"""Attention variants as functions: FlexAttention's mask_mod and score_mod, read once into an
expression and then evaluated by the references (NumPy) or compiled into the kernels (CUDA C).

    from flashlab import mods
    def alibi_like(score, b, h, q_idx, kv_idx):
        return score - slopes[h] * abs(q_idx - kv_idx)      # slopes: a closed-over 1-D array
    m = mods.score_mod(alibi_like)
    m.score(S, b, h, q, kv)      # NumPy, broadcasting index arrays
    m.grad(S, b, h, q, kv)       # d score_mod / d score, for the backward's dS
    print(m.cuda())              # __device__ float fl_score_mod(...) and its derivative

What a function may contain is flashlab.mods.parse's docstring; anything else is a ModError
naming the construct, the file and the line. Built-ins: causal, sliding_window, document,
prefix_lm (masks), alibi, softcap (scores), and and_masks / or_masks to combine masks.

flash_attention(..., window=, mask_mod=, score_mod=) runs them on NumPy arrays through the
float64-capable oracle (flashlab.reference.variants); fa2 (float32) and tc (fp16 / bf16) compile
them into their forward and backward (kernel.KernelVariant: the C in front of kernels/fa2.cu,
FL_MODS, or of kernels/tc.cu and tc90.cu, kernels/tc_mods.cuh; blocks.block_mask: the tiles they
skip; GQA as well). fa2's step-through takes them (reference/fa2.py: forward all, backward the
masks and GQA), and its trace is held to the kernel's (kernel_check.check_kernel).
"""
from __future__ import annotations

import hashlib

import numpy as np

from .emit import PRELUDE, derivative, evaluate, to_c
from .parse import ModError, Node, read

__all__ = ["Mod", "ModError", "PRELUDE", "mask_mod", "score_mod", "causal", "sliding_window",
           "bottom_right",
           "document", "prefix_lm", "alibi", "softcap", "and_masks", "or_masks", "where", "exp", "log",
           "tanh", "sqrt"]

# Elementwise helpers a mod may call by these names (they also work on NumPy arrays, so a mod
# can be tried directly); torch.where, np.exp, math.tanh ... are read the same way.
where, exp, log, tanh, sqrt = np.where, np.exp, np.log, np.tanh, np.sqrt


class Mod:
    """One mask_mod (kind "mask") or score_mod (kind "score"): its tree, the closed-over
    arrays it reads, where it was written, and what the backends make of it."""

    def __init__(self, kind: str, tree: Node, arrays: dict, source: str, where_: str,
                 name: str):
        # tree: what parse.read returned (it checked the kind of value returned, at its line)
        self.kind, self.tree, self.source, self.where, self.name = kind, tree, source, where_, name
        self.arrays = {k: v for k, v in arrays.items() if isinstance(v, np.ndarray)}
        self.d_tree = derivative(tree) if kind == "score" else None
        self.offsets, fl, it = {}, [], []
        for key in sorted(self._used()):
            arr = self.arrays[key]
            if np.issubdtype(arr.dtype, np.floating):
                self.offsets[key] = ("f", sum(map(len, fl)))
                fl.append(arr.astype(np.float32))
            else:
                if arr.size and (arr.min() < -2**31 or arr.max() >= 2**31):
                    raise ModError(f"{where_}: {key} holds values past 32-bit ints")
                self.offsets[key] = ("i", sum(map(len, it)))
                it.append(arr.astype(np.int32))
        self.float_data = np.concatenate(fl) if fl else np.zeros(0, np.float32)
        self.int_data = np.concatenate(it) if it else np.zeros(0, np.int32)

    def _used(self) -> set:
        out, todo = set(), [self.tree]
        while todo:
            n = todo.pop()
            if n.op == "array":
                out.add(n.value)
            todo.extend(n.args)
        return out

    @property
    def key(self) -> str:
        """Digest of the expression and the values it reads: what a compiled kernel is cached by."""
        h = hashlib.sha256(repr((self.kind, self.tree)).encode())
        h.update(self.float_data.tobytes())
        h.update(self.int_data.tobytes())
        return h.hexdigest()[:24]

    # -- the references
    def _env(self, b, h, q_idx, kv_idx, score=None) -> dict:
        env = {"b": np.asarray(b), "h": np.asarray(h), "q_idx": np.asarray(q_idx),
               "kv_idx": np.asarray(kv_idx)}
        if score is not None:
            env["score"] = score
        return env

    def mask(self, b, h, q_idx, kv_idx) -> np.ndarray:
        """The mask on broadcasting index arrays: True where the key is visible."""
        if self.kind != "mask":
            raise TypeError(f"{self.name} is a score_mod")
        out = np.asarray(evaluate(self.tree, self._env(b, h, q_idx, kv_idx), self.arrays),
                         dtype=bool)
        return np.broadcast_to(out, np.broadcast(b, h, q_idx, kv_idx).shape).copy()

    def score(self, s, b, h, q_idx, kv_idx):
        """score_mod(s, ...) on an array of scores s and broadcasting index arrays, in s's dtype."""
        return self._on_scores(self.tree, s, b, h, q_idx, kv_idx)

    def grad(self, s, b, h, q_idx, kv_idx):
        """d score_mod / d score at s (what the backward multiplies dS by)."""
        return self._on_scores(self.d_tree, s, b, h, q_idx, kv_idx)

    def _on_scores(self, tree: Node, s, b, h, q_idx, kv_idx):
        if self.kind != "score":
            raise TypeError(f"{self.name} is a mask_mod")
        dt = np.asarray(s).dtype.type
        out = evaluate(tree, self._env(b, h, q_idx, kv_idx, s), self.arrays, dt)
        shape = np.broadcast(s, b, h, q_idx, kv_idx).shape
        return np.broadcast_to(np.asarray(out, dt), shape).copy()

    # -- the kernels
    def cuda(self, f_base: int = 0, i_base: int = 0, fast: bool = False) -> str:
        """The mod as CUDA C: fl_mask_mod(b, h, q_idx, kv_idx, fl_mod_f, fl_mod_i) -> bool, or
        fl_score_mod(score, ...) -> float and fl_score_mod_grad(score, ...) -> float, after
        PRELUDE. fl_mod_f / fl_mod_i: float_data and int_data on the device, starting f_base
        and i_base elements into the buffers (where another mod's data comes first). fast: the
        16-bit kernels' C, after emit.PRELUDE_FAST (emit.to_c's fast)."""
        offsets = {k: (buf, off + (f_base if buf == "f" else i_base))
                   for k, (buf, off) in self.offsets.items()}
        args = "int b, int h, int q_idx, int kv_idx, const float* fl_mod_f, const int* fl_mod_i"
        head = f"/* {self.kind}_mod {self.name}, from {self.where} */\n"
        unused = ("    (void)b; (void)h; (void)q_idx; (void)kv_idx; (void)fl_mod_f; "
                  "(void)fl_mod_i;\n")
        if self.kind == "mask":
            return (head + f"__device__ __forceinline__ bool fl_mask_mod({args}) {{\n{unused}"
                    f"    return {to_c(self.tree, offsets, fast=fast)};\n}}\n")
        out = head
        for name, tree in (("fl_score_mod", self.tree), ("fl_score_mod_grad", self.d_tree)):
            out += (f"__device__ __forceinline__ float {name}(float score, {args}) {{\n"
                    f"{unused}    (void)score;\n    return {to_c(tree, offsets, fast=fast)};\n}}\n")
        return out

    def __repr__(self):
        return f"<{self.kind}_mod {self.name} from {self.where}>"


def _mod(fn, kind: str, name: str | None = None) -> Mod:
    if isinstance(fn, Mod):
        if fn.kind != kind:
            raise ModError(f"{fn.name} is a {fn.kind}_mod, passed as a {kind}_mod")
        return fn
    tree, captured, source, where_ = read(fn, kind)
    return Mod(kind, tree, captured, source, where_, name or fn.__name__)


def mask_mod(fn, name: str | None = None) -> Mod:
    """Read fn(b, h, q_idx, kv_idx) -> bool (True: the key is visible) into a Mod."""
    return _mod(fn, "mask", name)


def score_mod(fn, name: str | None = None) -> Mod:
    """Read fn(score, b, h, q_idx, kv_idx) -> score into a Mod."""
    return _mod(fn, "score", name)


def _combine(op: str, mods, name: str) -> Mod:
    mods = [mask_mod(m) for m in mods]
    if not mods:
        raise ModError(f"{name} needs at least one mask_mod")
    tree, arrays = None, {}
    for i, m in enumerate(mods):
        renames = {k: f"m{i}_{k}" for k in m.arrays}
        t = _rename_arrays(m.tree, renames)
        arrays.update({renames[k]: v for k, v in m.arrays.items()})
        tree = t if tree is None else Node("bin", "bool", op, (tree, t))
    return Mod("mask", tree, arrays, " ".join(m.source for m in mods),
               ", ".join(m.where for m in mods), f"{name}({', '.join(m.name for m in mods)})")


def _rename_arrays(n: Node, renames: dict) -> Node:
    if n.op == "array":
        return Node("array", n.kind, renames[n.value], tuple(_rename_arrays(a, renames)
                                                              for a in n.args))
    if not n.args:
        return n
    return Node(n.op, n.kind, n.value, tuple(_rename_arrays(a, renames) for a in n.args))


def and_masks(*mods) -> Mod:
    """Visible where every mask says visible (document & causal, ...)."""
    return _combine("&", mods, "and_masks")


def or_masks(*mods) -> Mod:
    """Visible where any mask says visible."""
    return _combine("|", mods, "or_masks")


# ---------------------------------------------------------------- built-ins

def _offset(offset) -> int:
    if not isinstance(offset, (int, np.integer)) or isinstance(offset, bool):
        raise ValueError(f"offset must be an int (bottom_right(Nq, Nk) gives Nk - Nq), got "
                         f"{offset!r}")
    return int(offset)


def bottom_right(Nq: int, Nk: int) -> int:
    """The offset that aligns query Nq - 1 with key Nk - 1 (FlashAttention's causal and
    window_size for Nq != Nk): causal(offset=bottom_right(Nq, Nk)). flashlab's own causal flag
    and window= are top-left (query i and key i are the same position), as torch's is_causal."""
    return int(Nk) - int(Nq)


def causal(offset: int = 0) -> Mod:
    """Causal: query i sees keys 0 .. i + offset. offset 0 is top-left, as torch's is_causal
    and flashlab's causal flag; offset bottom_right(Nq, Nk) is FlashAttention's alignment."""
    off = _offset(offset)
    if off == 0:
        def causal_mask(b, h, q_idx, kv_idx):
            return kv_idx <= q_idx
        return mask_mod(causal_mask, "causal")

    def causal_shifted(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + off
    return mask_mod(causal_shifted, f"causal(offset={off})")


def sliding_window(left: int, right: int = 0, offset: int = 0) -> Mod:
    """Query i sees keys i + offset - left .. i + offset + right; -1: unbounded on that side.
    sliding_window(w, 0) is causal with a window of w keys before the query. offset 0 is
    top-left (flash_attention's window=); bottom_right(Nq, Nk) gives FlashAttention's
    window_size alignment."""
    for name, v in (("left", left), ("right", right)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < -1:
            raise ValueError(f"sliding_window: {name} must be an int >= -1 (-1: unbounded), "
                             f"got {v!r}")
    left, right, off = int(left), int(right), _offset(offset)
    if left < 0 and right < 0:
        def window(b, h, q_idx, kv_idx):
            return q_idx == q_idx
    elif left < 0:
        def window(b, h, q_idx, kv_idx):
            return kv_idx - (q_idx + off) <= right
    elif right < 0:
        def window(b, h, q_idx, kv_idx):
            return (q_idx + off) - kv_idx <= left
    else:
        def window(b, h, q_idx, kv_idx):
            return ((q_idx + off) - kv_idx <= left) & (kv_idx - (q_idx + off) <= right)
    name = f"sliding_window({left}, {right}" + (f", offset={off})" if off else ")")
    return mask_mod(window, name)


def document(doc_ids) -> Mod:
    """Packed sequences: a query sees only keys of its own document. doc_ids: one id per
    position (1-D), as torch.repeat_interleave(cu_seqlens diffs) gives."""
    doc = np.asarray(doc_ids)
    if doc.ndim != 1 or not np.issubdtype(doc.dtype, np.integer):
        raise ValueError(f"document: doc_ids must be a 1-D array of ints, got shape {doc.shape} "
                         f"{doc.dtype}")

    def same_document(b, h, q_idx, kv_idx):
        return doc[q_idx] == doc[kv_idx]
    return mask_mod(same_document, "document")


def prefix_lm(prefix: int) -> Mod:
    """Keys 0 .. prefix - 1 are visible to every query; after them, causal."""
    prefix = int(prefix)

    def prefix_mask(b, h, q_idx, kv_idx):
        return (kv_idx < prefix) | (kv_idx <= q_idx)
    return mask_mod(prefix_mask, f"prefix_lm({prefix})")


def alibi(slopes) -> Mod:
    """ALiBi: score + slopes[h] * (kv_idx - q_idx), a bias that grows with the distance (for
    keys before the query, with positive slopes, a penalty)."""
    slope = np.asarray(slopes, dtype=np.float64)
    if slope.ndim != 1:
        raise ValueError(f"alibi: slopes must be 1-D (one per head), got shape {slope.shape}")

    def alibi_bias(score, b, h, q_idx, kv_idx):
        return score + slope[h] * (kv_idx - q_idx)
    return score_mod(alibi_bias, "alibi")


def softcap(cap: float) -> Mod:
    """Gemma-2's logit softcapping: cap * tanh(score / cap)."""
    cap = float(cap)
    if not cap > 0:
        raise ValueError(f"softcap: cap must be > 0, got {cap}")

    def soft_cap(score, b, h, q_idx, kv_idx):
        return cap * tanh(score / cap)
    return score_mod(soft_cap, f"softcap({cap:g})")
