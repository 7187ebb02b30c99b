"""Standard attention (A0) with the variants of the attention-variants issue: GQA / MQA,
sliding windows, mask_mod and score_mod (flashlab.mods). In float64 it is the oracle the
variant kernels will be held to; it materialises S and P.

    o, lse = variant_attention(q, k, v, window=(256, 0), score_mod=mods.softcap(30.0))

- GQA: k and v have H_kv heads, H_kv dividing q's H; query head h reads key/value head
  h // (H / H_kv), and dK, dV sum over the H / H_kv query heads of a group.
- window=(left, right): query i sees keys i - left .. i + right, -1 unbounded on that side.
  Like causal it is top-left aligned (query i and key i are the same position, whatever Nq and
  Nk are), as torch's is_causal is; FlashAttention's window_size is bottom-right aligned.
- causal, window and mask_mod all hide keys; a key is visible where all of them let it be.
  score_mod changes the visible scores S = softmax_scale q k^T before the softmax; it sees the
  scaled score, as FlexAttention's does.
- A row that no key is visible to has O = 0 and lse = -inf, and no NaN (its gradients are 0).
- stored="float16" / "bfloat16": the same attention as a framework runs it unfused in 16 bits
  (16-bit inputs; every matrix it stores, S, P, O, dP, dS and the gradients, rounded to that
  dtype; products and the softmax in float32): the yardstick of FlashAttention's test rule
  for the variants (flashlab.lowp.within_fa_rule), as lowp.naive_lowp_forward is without one.
"""
from __future__ import annotations

import numpy as np

from .. import lowp
from ..checks import check_array, check_flag, check_scale
from ..mods import Mod, causal as causal_mod, mask_mod as as_mask, score_mod as as_score
from ..mods import sliding_window


def _check(q, k, v, causal, softmax_scale, window, mask_mod, score_mod):
    sq, sk, sv = check_array("q", q), check_array("k", k), check_array("v", v)
    B, H, Nq, d = sq
    if sk != sv:
        raise ValueError(f"k and v must have one shape: got k {sk}, v {sv}")
    if sk[0] != B or sk[3] != d:
        raise ValueError(f"k and v must be (B, H_kv, Nk, d) with q's B and d: q {sq}, k {sk}")
    if H % sk[1]:
        raise ValueError(f"q has {H} heads and k, v have {sk[1]}: GQA needs H_kv dividing H "
                         f"(query head h reads key/value head h // (H / H_kv))")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype: got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    masks = []
    if check_flag("causal", causal):
        masks.append(causal_mod())
    if window is not None:
        if not isinstance(window, (tuple, list)) or len(window) != 2:
            raise ValueError(f"window must be (left, right), -1 for unbounded, got {window!r}")
        masks.append(sliding_window(*window))
    if mask_mod is not None:
        masks.append(as_mask(mask_mod))
    score = as_score(score_mod) if score_mod is not None else None
    return (B, H, sk[1], Nq, sk[2], d), check_scale(softmax_scale, d), masks, score


def _indices(B, H, Nq, Nk):
    return (np.arange(B)[:, None, None, None], np.arange(H)[None, :, None, None],
            np.arange(Nq)[None, None, :, None], np.arange(Nk)[None, None, None, :])


def _visible(masks: list[Mod], shape, idx) -> np.ndarray:
    vis = np.ones(shape, dtype=bool)
    for m in masks:
        vis &= m.mask(*idx)
    return vis


def _rounding(stored, *xs):
    """(the arrays as computed in, the rounding of a stored matrix): as given and none, or with
    stored a 16-bit dtype name, float32 copies of the 16-bit inputs and lowp.round_to."""
    if stored is None:
        return xs, lambda x: x
    if stored not in lowp.LOWP_DTYPES:
        raise ValueError(f"stored must be None, 'float16' or 'bfloat16', got {stored!r}")
    if any(x.dtype.name != stored for x in xs):
        raise ValueError(f"stored={stored!r} takes {stored} inputs; got "
                         f"{', '.join(sorted({x.dtype.name for x in xs}))}")
    return tuple(lowp.to_float32(x) for x in xs), lambda x: lowp.round_to(x, stored)


def _probabilities(q, k, v, causal, softmax_scale, window, mask_mod, score_mod, rnd):
    """(P, S0, lse, k and v with their heads repeated for the groups, sizes, tau, score);
    rnd rounds each stored matrix (S, P)."""
    (B, H, Hkv, Nq, Nk, d), scale, masks, score = _check(q, k, v, causal, softmax_scale,
                                                         window, mask_mod, score_mod)
    G = H // Hkv
    kf, vf = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)
    tau = q.dtype.type(scale)
    idx = _indices(B, H, Nq, Nk)
    S0 = rnd(tau * (q @ np.swapaxes(kf, -1, -2)))  # (B, H, Nq, Nk)
    S = score.score(S0, *idx) if score is not None else S0
    visible = _visible(masks, S.shape, idx)
    S = np.where(visible, S, -np.inf)
    m = S.max(axis=-1, keepdims=True)
    empty = m == -np.inf  # rows no key is visible to
    E = np.exp(S - np.where(empty, 0, m))
    l = E.sum(axis=-1, keepdims=True)
    P = rnd(np.where(empty, 0, E / np.where(empty, 1, l)))
    with np.errstate(divide="ignore"):
        lse = np.where(empty, -np.inf, m + np.log(np.where(empty, 1, l)))[..., 0]
    return P, S0, lse, kf, vf, (B, H, Hkv, Nq, Nk, d), tau, score, idx, visible


def variant_attention(q, k, v, causal=False, softmax_scale=None, *, window=None, mask_mod=None,
                      score_mod=None, stored=None):
    """softmax(score_mod(tau q k^T) with hidden keys at -inf) v. Returns (o (B, H, Nq, d),
    lse (B, H, Nq)) in q's dtype (stored: o in that dtype, lse float32)."""
    (q, k, v), rnd = _rounding(stored, q, k, v)
    P, _, lse, _, vf, *_ = _probabilities(q, k, v, causal, softmax_scale, window, mask_mod,
                                         score_mod, rnd)
    o = P @ vf
    return (o, lse) if stored is None else (lowp.from_float32(o, stored), lse)


def variant_attention_backward(do, q, k, v, causal=False, softmax_scale=None, *, window=None,
                               mask_mod=None, score_mod=None, stored=None):
    """Gradients of sum(do * o) for o = variant_attention(...): (dq, dk, dv), dk and dv with k's
    H_kv heads (summed over each group's query heads). dS = P (dP - rowsum(P dP)), times
    score_mod's derivative at the unmodified score. stored: as variant_attention's."""
    (do, q, k, v), rnd = _rounding(stored, do, q, k, v)
    P, S0, _, kf, vf, (B, H, Hkv, Nq, Nk, d), tau, score, idx, visible = _probabilities(
        q, k, v, causal, softmax_scale, window, mask_mod, score_mod, rnd)
    if tuple(np.shape(do)) != (B, H, Nq, d) or do.dtype != q.dtype:
        raise ValueError(f"do must be shaped like q {(B, H, Nq, d)} with its dtype {q.dtype}; "
                         f"got {np.shape(do)} {do.dtype}")
    dvf = np.swapaxes(P, -1, -2) @ do
    dP = rnd(do @ np.swapaxes(vf, -1, -2))
    dS = P * (dP - (P * dP).sum(axis=-1, keepdims=True))
    if score is not None:  # hidden keys: dS = 0, whatever the derivative is there
        with np.errstate(all="ignore"):
            dS = np.where(visible, dS * score.grad(S0, *idx), 0)
    dS = rnd(dS)
    dq = tau * (dS @ kf)
    dkf = tau * (np.swapaxes(dS, -1, -2) @ q)
    G = H // Hkv
    group = (B, Hkv, G, Nk, d)
    grads = dq, dkf.reshape(group).sum(axis=2), dvf.reshape(group).sum(axis=2)
    return grads if stored is None else tuple(lowp.from_float32(g, stored) for g in grads)
