"""F2 and G2 as kernels/tc.cu runs them on tensor cores: 16-bit inputs, fp32 sums, warps own slabs.

Step-through twin of kernels/tc.cu. The loop nests are those of fa2.py (docs/ALGORITHMS.md F2, G2);
what changes is who holds which rows and where numbers are rounded to 16 bits:

  - Warps, not threads, own the pieces of a tile. Forward: a thread block of `warps` warps takes
    Br = 16 * WM * warps query rows, and warp w holds rows w*16*WM .. w*16*WM + 16*WM - 1 (WM slabs
    of 16, the M of one mma.sync.m16n8k16), with their m, l and O~ in its registers for the whole
    F2:L3 loop (`warp_of_row`). Backward: a thread block takes Bc keys (G2:L2) and each product
    splits its output tile over the warps as a 2-D grid: S^T and dP^T (keys x queries) over WS x
    warps/WS warps, dK~ and dV~ (keys x d) over WKV x warps/WKV, the dQ_i term (queries x d) over
    WQ x warps/WQ; warp (a, b) of a W-wide grid is number a + W b. P^T and dS^T change hands
    between the grids through shared memory. Every backward step yields `warp_of_S`,
    `warp_of_dKV` and `warp_of_dQ`, the warp that computes each entry.
  - The forward loads K_j and V_j Bc keys at a time (the load tile of F2:L4; the kernel copies
    tile j+1 while it works on tile j) but does the arithmetic Bk keys at a time: for each
    sub-block of Bk keys it runs the whole of F2:L5-L7 (S, the online softmax, O~ += P~ V), then
    the next. As far as the numbers go that is F2 with Bc = Bk: P~ is taken against the running
    max after each sub-step, and that P~ is what gets rounded. Bk < Bc only keeps fewer S values
    in registers (d = 128 takes each 64-key tile as two 32-key sub-steps, d = 64 each 128-key tile
    as two of 64). A step is still one load tile (i, j); its S and P~ are the sub-steps' side by
    side.
  - The forward softmax runs in base 2 (F2:L6): S is multiplied once by tau * log2(e), m is kept
    in those units and P~ = 2^(S - m_new), which the GPU evaluates in one MUFU instruction. l and
    O~ do not depend on the base; the trace reports m in natural units (m * ln 2), as fa2.py's.
  - Products take 16-bit operands and sum in fp32. Q K^T, dO V^T are exact products of the 16-bit
    inputs summed in fp32 (F2:L5, G2:L5, G2:L6). Four fp32 tiles are rounded to the input dtype
    (round to nearest even, as cvt.rn) just before they become an mma operand:
        F2:L7  P~ -> round16(P~) for O~ += round16(P~) V_j; l sums the *unrounded* P~ (F2:L6),
        G2:L6  P  -> round16(P)  for dV~ += round16(P)^T dO_i,
        G2:L7  dS -> round16(dS) for dQ_i += tau round16(dS) K_j,
        G2:L8  the same round16(dS) for dK~ += round16(dS)^T Q_i.
    The outputs are rounded once more at the end: O = round16(O~ / l) (F2:L9), dQ = round16(tau
    sum_j round16(dS) K_j) after every j has added in, dK = round16(tau dK~), dV = round16(dV~)
    (G2:L10). L and D stay fp32. These roundings are the only places the result may differ from
    fa2.py run in float32 on the same 16-bit inputs (up to the order of fp32 sums).
  - Under the causal mask the backward starts its i loop at i0 = floor(j Bc / Br), the kernel's
    closed form for "the first row block with a visible entry" (G2:L3); it equals fa2.py's
    skipping whenever Bc is a multiple of Br, as in every default configuration.

The fp32 arithmetic is done in float32 NumPy: np.exp2 instead of ex2.approx and NumPy's order of
the fp32 sums instead of the tensor cores', each a few fp32 ulp apart. So the kernel's m and l match
this trace to fp32 rounding (~1e-6), but a tile built from rounded operands (O~, dV~, dQ_ij, dK~)
can differ by about one 16-bit ulp of a P~ or dS entry wherever that fp32 difference tips a value
across a 16-bit rounding boundary. The GPU tests hold the kernel to 4 units of 16-bit roundoff of
this trace on every traced tile (kernel_check.check_kernel, N up to 600; on an H100 with v3's
kernel the largest gap was 3 units on O~ and 0.2 on the backward tiles); fa2.py in float64 on the
same 16-bit inputs is up to ~9 units away on O~ (the unnormalised O~ grows with l).

`naive_lowp_forward` / `naive_lowp_backward` are standard attention (A0) in the same 16-bit dtype,
and `within_fa_rule` is FlashAttention's test rule: a 16-bit kernel may be off the float64 answer
by at most twice as much as naive attention computed in that 16-bit dtype is.

Every tile below is shaped (B, H, rows[, cols]): one step does tile (i, j) for all heads at once.
"""
from __future__ import annotations

import numpy as np

from ..checks import check_backward, check_block, check_qkv
from ..registry import TC_BACKWARD, TC_FORWARD
from ..lowp import LOWP_DTYPES
from ..lowp import naive_lowp_backward, naive_lowp_forward, within_fa_rule  # noqa: F401
from .tiles import Step, TileVariant, ceil_div, full_heads, rows, run, safe

LOG2E = np.float32(1.4426950408889634)  # TC_LOG2E in kernels/tc.cu
LN2 = np.float32(0.6931471805599453)  # TC_LN2
LOWP = LOWP_DTYPES
MMA_K = 16  # mma.sync.m16n8k16: 16-row slabs, 16-wide k slices
f32 = np.float32


def _round16(x, dtype):
    """fp32 -> the 16-bit input dtype, round to nearest even (cvt.rn.f16x2 / cvt.rn.bf16x2)."""
    return np.asarray(x, f32).astype(dtype)


def _up(x):
    """16-bit -> fp32, exact (what an mma operand or to_f32 reads)."""
    return np.asarray(x).astype(f32)


def _check_lowp(dims, q):
    name = np.dtype(q.dtype).name
    if name not in LOWP:
        raise ValueError(
            f"q dtype must be float16 or bfloat16 for the tensor-core reference, got {name}: "
            f"pass q.astype(np.float16) (or ml_dtypes.bfloat16), or use fa2_forward for {name}")
    if dims.d % MMA_K != 0:
        raise ValueError(
            f"head dim d = {dims.d} (q shape {tuple(q.shape)}) must be a multiple of {MMA_K} for "
            f"the tensor-core reference: mma.sync.m16n8k16 takes 16-wide slices of d; pad the "
            f"head dim or use fa2_forward")


def _multiple_of_16(name, value):
    value = check_block(name, value)
    if value % MMA_K != 0:
        raise ValueError(f"{name} = {value} must be a multiple of {MMA_K}: tensor-core tiles are "
                         f"made of 16-row slabs (mma.sync.m16n8k16)")
    return value


def tc_blocks(d: int, direction: str) -> tuple[int, int, int]:
    """(Br, Bc, warps) of kernels/tc.cu's default launch at head dim d (TC_FORWARD/TC_BACKWARD).

    Forward: Br = 16 * WM * warps query rows, Bc keys per load tile. Backward: Br query rows per
    step, Bc keys per thread block.
    """
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    table = TC_FORWARD if direction == "forward" else TC_BACKWARD
    if d not in table:
        raise ValueError(
            f"kernel 'tc' has no default {direction} tile for head dim {d} (it has "
            f"{', '.join(map(str, sorted(table)))}); pass Br and Bc (multiples of 16)")
    c = table[d]
    if direction == "forward":
        return 16 * c["WM"] * c["NW"], c["BC"], c["NW"]
    return c["BR"], c["BC"], c["NW"]


def _forward_blocks(d, Br, Bc, warps, Bk):
    """Br, Bc, warps, WM, Bk for the forward; Br must split into `warps` warps of WM 16-row slabs
    and Bc into sub-steps of Bk keys (default: the kernel's BK where it divides Bc, else Bc)."""
    if Br is None or Bc is None:
        dBr, dBc, dW = tc_blocks(d, "forward")
        Br = dBr if Br is None else Br
        Bc = dBc if Bc is None else Bc
    else:  # both given: the kernel's warp count where it has one for this d
        dW = TC_FORWARD[d]["NW"] if d in TC_FORWARD else 4
    Br, Bc = _multiple_of_16("Br", Br), _multiple_of_16("Bc", Bc)
    slabs = Br // MMA_K
    if warps is None:  # the default warp count, or the largest smaller one that splits Br evenly
        warps = max(w for w in range(1, min(dW, slabs) + 1) if slabs % w == 0)
    warps = check_block("warps", warps)
    if slabs % warps != 0:
        raise ValueError(f"Br = {Br} is {slabs} slabs of 16 rows, which {warps} warps cannot share "
                         f"evenly (Br = 16 * WM * warps); pick Br a multiple of {16 * warps}")
    if Bk is None:
        Bk = TC_FORWARD[d]["BK"] if d in TC_FORWARD else Bc
        Bk = Bk if Bc % Bk == 0 else Bc
    Bk = _multiple_of_16("Bk", Bk)
    if Bc % Bk != 0:
        fits = [b for b in range(MMA_K, Bc + 1, MMA_K) if Bc % b == 0]
        raise ValueError(f"Bk = {Bk} must divide Bc = {Bc}: each K/V tile of Bc keys is taken as "
                         f"Bc / Bk sub-steps of Bk keys; pick Bk from {fits}")
    return Br, Bc, warps, slabs // warps, Bk


def _backward_blocks(d, Br, Bc, warps, grid=None):
    """Br, Bc, warps and the warp grids (WS, WKV, WQ) for the backward.

    Defaults are the kernel's launch at head dim d (TC_BACKWARD; 8 warps at a d it lacks). The
    grids are `grid` or the kernel's where they divide `warps`, else warps x 1: each warp a strip
    of the first dimension (keys of S^T and of dK~, queries of dQ) across all of the second.
    kernels/tc90.cu's grid is (warps, warps, 4) (tc_plan's "grid").
    """
    c = TC_BACKWARD.get(d)
    if c is None and (Br is None or Bc is None):
        tc_blocks(d, "backward")  # raises: no default tile, pass Br and Bc
    Br = _multiple_of_16("Br", c["BR"] if Br is None else Br)
    Bc = _multiple_of_16("Bc", c["BC"] if Bc is None else Bc)
    warps = check_block("warps", (c["NW"] if c else 8) if warps is None else warps)
    if grid is None:
        grid = (c["WS"], c["WKV"], c["WQ"]) if c else ()
    grid = tuple(grid)
    if not grid or any(warps % w != 0 for w in grid):
        grid = (warps, warps, warps)
    return Br, Bc, warps, grid


def _warp_grid(n0, n1, W, warps):
    """(n0, n1) int array: the warp computing each entry of an n0 x n1 output tile split over a
    W x (warps / W) grid of warps, warp (a, b) = a + W b holding an M0 x M1 piece.

    M0 = n0 / W and M1 = n1 / (warps / W), as kernels/tc.cu's SK x SQ, KK x KD and QQ x QD. Where
    they do not divide evenly (tile shapes the kernel never launches) they are rounded up to whole
    16-row slabs, so the last warps of the grid hold fewer rows, or none.
    """
    M0 = MMA_K * ceil_div(n0, MMA_K * W)
    M1 = MMA_K * ceil_div(n1, MMA_K * (warps // W))
    return np.arange(n0)[:, None] // M0 + W * (np.arange(n1)[None, :] // M1)


def _scores_base2(Q_i, K_j, sl2, causal, r: slice, c: slice):
    """S = Q_i K_j^T in fp32 (exact 16-bit products), times tau log2(e), masked (F2:L5)."""
    S = (_up(Q_i) @ np.swapaxes(_up(K_j), -1, -2)) * sl2  # (B, H, br, bc) fp32
    if causal:
        hidden = np.arange(c.start, c.stop)[None, :] > np.arange(r.start, r.stop)[:, None]
        S = np.where(hidden, f32(-np.inf), S)
    return S


def _variant_scores(tv, Q_i, K_j, tau, sl2, causal, r: slice, c: slice):
    """(S in base-2 units, visible, the unscaled fp32 q.k) as kernels/tc_mods.cuh's f2_mod makes
    S: score_mod of q.k times tau, then times log2(e), where visible; -inf where hidden (tv
    None: the plain _scores_base2, and None, None)."""
    if tv is None:
        return _scores_base2(Q_i, K_j, sl2, causal, r, c), None, None
    x = _up(Q_i) @ np.swapaxes(_up(K_j), -1, -2)  # (B, H, br, bc) fp32, unscaled
    vis = np.broadcast_to(tv.visible(x.shape, r, c), x.shape)
    if causal:
        vis = vis & ~(np.arange(c.start, c.stop)[None, :] > np.arange(r.start, r.stop)[:, None])
    if tv.score is None:
        S = x * sl2
    else:
        with np.errstate(all="ignore"):
            S = f32(tv.score.score(x * tau, *tv.index(x.shape, r, c))) * LOG2E
    return np.where(vis, S, f32(-np.inf)).astype(f32), vis, x


def tc_forward_steps(q, k, v, causal=False, softmax_scale=None, Br=None, Bc=None, warps=None,
                     Bk=None, *, window=None, mask_mod=None, score_mod=None, gqa=False):
    """F2:L1-L9 as kernels/tc.cu's tc_forward runs it, as a generator of Steps; returns (o, lse).

    q, k, v: (B, H, N, d) float16 or bfloat16. o comes back in that dtype, lse (B, H, Nq) in
    float32 and natural-log units. Br, Bc, warps, Bk default to the kernel's launch for head dim
    d. One Step per load tile (i, j) of Bc keys, taken as Bc / Bk sub-steps of Bk keys: S_ij,
    P_tilde, P_rounded_ij are the sub-steps' side by side (each P~ against its own sub-step's
    running max; zeros where a sub-step was skipped), m_new, l_i, O_tilde the state after the
    last one. window, mask_mod, score_mod, GQA (with gqa=True or a variant keyword): as the
    variant build of the kernel (kernels/tc_mods.cuh) makes S; tiles no head sees are skipped,
    Step.ran says which heads' blocks ran the others; a row with no visible key gives O = 0,
    lse -inf.
    """
    tv = TileVariant.of(window, mask_mod, score_mod)
    dims = check_qkv(q, k, v, causal, softmax_scale, gqa=gqa or tv is not None)
    k, v = full_heads(dims, k, v)
    _check_lowp(dims, q)
    B, H, Nq, Nk, d = dims.B, dims.H, dims.Nq, dims.Nk, dims.d
    Br, Bc, warps, WM, Bk = _forward_blocks(d, Br, Bc, warps, Bk)
    dt = q.dtype
    sl2 = f32(f32(dims.scale) * LOG2E)  # tau log2(e): S in base-2 units

    O = np.empty((B, H, Nq, d), dt)  # (B, H, Nq, d) 16-bit, written once per row block
    L = np.empty((B, H, Nq), f32)  # (B, H, Nq) fp32, natural units
    Tr, Tc = ceil_div(Nq, Br), ceil_div(Nk, Bc)
    for i in range(Tr):  # F2:L1  (a thread block each)
        r = rows(i, Br, Nq)
        br = r.stop - r.start
        warp_of_row = np.arange(br) // (16 * WM)  # warp w holds rows w*16*WM .. +16*WM-1
        Q_i = q[:, :, r]  # F2:L2  (B, H, br, d) 16-bit, in shared memory
        O_tilde = np.zeros((B, H, br, d), f32)  # O~ (B, H, br, d) fp32, in the warps' registers
        l_i = np.zeros((B, H, br), f32)  # (B, H, br)
        m_i = np.full((B, H, br), -np.inf, f32)  # (B, H, br), base-2 units
        last_key = min(Nk, r.stop) - 1 if dims.causal else Nk - 1  # the last key the block sees
        jend = min(Tc, (r.stop - 1) // Bc + 1) if dims.causal else Tc  # F2:L3 causal skipping
        for j in range(jend):  # F2:L3
            c = rows(j, Bc, Nk)
            bc = c.stop - c.start
            if tv is not None and tv.hidden(q.shape, r, c):
                continue  # a variant's block mask: no head sees an entry of this tile
            K_j, V_j = k[:, :, c], v[:, :, c]  # F2:L4  (B, H, bc, d) 16-bit, one load tile
            S2 = np.full((B, H, br, bc), -np.inf, f32)  # the sub-steps' S, P~ side by side
            P_tilde = np.zeros((B, H, br, bc), f32)
            P_16 = np.zeros((B, H, br, bc), dt)
            for u in range(ceil_div(bc, Bk)):  # sub-steps of Bk keys: F2:L5-L7 each
                k0 = c.start + u * Bk
                if k0 > last_key:  # every key from here on is masked: the kernel stops (a no-op)
                    break
                s = slice(u * Bk, min((u + 1) * Bk, bc))  # this sub-step's keys, within the tile
                S2_u, _, _ = _variant_scores(tv, Q_i, K_j[:, :, s], f32(dims.scale), sl2, dims.causal,
                                          r, slice(k0, c.start + s.stop))  # F2:L5 (B, H, br, bk)
                m_new = np.maximum(m_i, S2_u.max(axis=-1))  # F2:L6  (B, H, br)
                base = safe(m_new)
                alpha = np.exp2(m_i - base)  # 2^(m - m_new)
                P_u = np.exp2(S2_u - base[..., None])  # P~ (B, H, br, bk) fp32
                l_i = alpha * l_i + P_u.sum(axis=-1, dtype=f32)  # sums the unrounded P~
                P16_u = _round16(P_u, dt)  # the A operand of the next mma: P~ in 16 bits
                O_tilde = (alpha[..., None] * O_tilde  # F2:L7  (B, H, br, d)
                           + _up(P16_u) @ _up(V_j[:, :, s]))
                m_i = m_new
                S2[..., s], P_tilde[..., s], P_16[..., s] = S2_u, P_u, P16_u
            yield Step("F2", i, j, j, "F2:L7", {
                "S_ij": S2 * LN2, "S_base2_ij": S2, "m_new": m_i * LN2, "l_i": l_i.copy(),
                "P_tilde": P_tilde, "P_rounded_ij": P_16, "O_tilde": O_tilde.copy(),
                "warp_of_row": warp_of_row.copy(), "Bk": Bk},
                blocks=(Nq, Nk, Br, Bc), ran=None if tv is None else tv.ran(q.shape, r, c))
        seen = l_i > 0 if tv is not None else np.ones(l_i.shape, bool)  # a variant's empty rows
        inv = f32(1) / np.where(seen, l_i, f32(1))  # F2:L9
        O[:, :, r] = _round16(np.where(seen[..., None], O_tilde * inv[..., None], f32(0)), dt)
        with np.errstate(divide="ignore"):
            L[:, :, r] = np.where(seen, (safe(m_i) + np.log2(np.where(seen, l_i, 1))) * LN2,
                                  f32(-np.inf))
    return O, L


def tc_block_order(nx: int, BH: int, causal: bool, group: int = 1,
                   long_high: bool = True) -> list[tuple[int, int]]:
    """The (block, head) pairs of a grid (nx blocks per head, BH heads) in the order the GPU
    starts them (kernels/tc_blocks.cuh block_order: thread block blockIdx.x + nx * blockIdx.y).

    Not causal: head by head, blocks ascending. Causal: the work per block is a triangle, so the
    longest blocks start first and the short ones fill the tail. long_high: the forward's row
    block i sees about i + 1 key tiles (longest last index, True); the backward's key block j
    sees the query blocks from about j on (longest first index, False). Heads go in groups of
    `group` (as many heads' streamed operands as fit in L2: launch.plans.tc_head_group),
    inside a group longest first, then by head. The numbers do not depend on this order, only
    the speed."""
    if nx < 1 or BH < 1 or group < 1:
        raise ValueError(f"tc_block_order: nx, BH and group must be >= 1 (got {nx}, {BH}, {group})")
    G = group if causal else 1
    order = []
    for n in range(nx * BH):
        c, r = divmod(n, G * nx)
        heads = min(G, BH - c * G)
        x = r // heads
        order.append((nx - 1 - x if (causal and long_high) else x, c * G + r % heads))
    return order


def tc_forward(q, k, v, causal=False, softmax_scale=None, Br=None, Bc=None, warps=None, Bk=None,
               **variant):
    """The tensor-core forward run to the end. Returns (o (B, H, Nq, d) 16-bit, lse fp32)."""
    return run(tc_forward_steps(q, k, v, causal, softmax_scale, Br, Bc, warps, Bk, **variant))


def tc_backward_steps(do, q, k, v, o, lse, causal=False, softmax_scale=None, Br=None, Bc=None,
                      warps=None, grid=None, *, window=None, mask_mod=None, score_mod=None,
                      gqa=False):
    """G2:L0-L10 as kernels/tc.cu's tc_backward runs it, as a generator of Steps; returns grads.

    do, o like q (16-bit), lse (B, H, Nq) natural units (any float dtype; read as fp32). Each
    step records dQ_ij = tau round16(dS) K_j, this (i, j)'s fp32 term of dQ_i (G2:L7), dK~
    with tau applied, and which warp computes each entry: warp_of_S (br, bc) for S, P, dP, dS
    ([query, key], as S_ij), warp_of_dKV (bc, d), warp_of_dQ (br, d). Br, Bc, warps default to
    kernels/tc.cu's launch for head dim d; grid = (WS, WKV, WQ) names other warp grids
    (kernels/tc90.cu's: tc_plan(d, "backward", variant="wgmma")["grid"]). Returns (dq, dk, dv)
    in the input dtype.
    """
    tv = TileVariant.of(window, mask_mod, score_mod)
    dims = check_backward(do, q, k, v, o, lse, causal, softmax_scale, gqa=gqa or tv is not None)
    _check_lowp(dims, q)
    k, v = full_heads(dims, k, v)
    B, H, Nq, Nk, d = dims.B, dims.H, dims.Nq, dims.Nk, dims.d
    Br, Bc, warps, (WS, WKV, WQ) = _backward_blocks(d, Br, Bc, warps, grid)
    dt = q.dtype
    tau = f32(dims.scale)
    sl2 = f32(tau * LOG2E)
    L2 = np.asarray(lse, f32) * LOG2E  # (B, H, Nq) logsumexp in base-2 units

    D = (_up(do) * _up(o)).sum(axis=-1, dtype=f32)  # G2:L0  (B, H, Nq) fp32
    dQacc = np.zeros((B, H, Nq, d), f32)  # fp32 accumulator in HBM (atomic adds)
    dK = np.empty((B, H, Nk, d), dt)
    dV = np.empty((B, H, Nk, d), dt)
    Tr, Tc = ceil_div(Nq, Br), ceil_div(Nk, Bc)
    warp_of_S = _warp_grid(Bc, Br, WS, warps).T  # (Br, Bc): S^T, dP^T split WS x warps/WS
    warp_of_dKV = _warp_grid(Bc, d, WKV, warps)  # (Bc, d): dK~, dV~ split WKV x warps/WKV
    warp_of_dQ = _warp_grid(Br, d, WQ, warps)  # (Br, d): the dQ_i term split WQ x warps/WQ
    for j in range(Tc):  # G2:L1  (a thread block each)
        c = rows(j, Bc, Nk)
        bc = c.stop - c.start
        K_j, V_j = k[:, :, c], v[:, :, c]  # G2:L2  (B, H, bc, d) 16-bit
        dK_tilde = np.zeros((B, H, bc, d), f32)  # dK~ (B, H, bc, d) fp32, tau not yet applied
        dV_tilde = np.zeros((B, H, bc, d), f32)  # dV~ (B, H, bc, d) fp32
        i0 = min(Tr, (j * Bc) // Br) if dims.causal else 0  # G2:L3 causal skipping
        for i in range(i0, Tr):  # G2:L3
            r = rows(i, Br, Nq)
            br = r.stop - r.start
            if tv is not None and tv.hidden(q.shape, r, c):
                continue  # a variant's block mask: no head sees an entry of this tile
            Q_i, dO_i = q[:, :, r], do[:, :, r]  # G2:L4  (B, H, br, d) 16-bit
            L_i, D_i = L2[:, :, r], D[:, :, r]  # (B, H, br) fp32
            S2, vis, x = _variant_scores(tv, Q_i, K_j, tau, sl2, dims.causal, r, c)  # G2:L5
            with np.errstate(invalid="ignore"):  # a variant's empty rows: -inf - -inf, hidden
                P_ij = np.exp2(S2 - L_i[..., None])  # exp(S - L); masked entries give 2^-inf = 0
            grad = f32(1)  # score_mod's derivative (G2:L6 multiplies dS by it)
            if vis is not None:
                P_ij = np.where(vis, P_ij, f32(0))
                if tv.score is not None:
                    with np.errstate(all="ignore"):
                        grad = np.where(vis, f32(tv.score.grad(x * tau, *tv.index(x.shape, r, c))),
                                        f32(0))
            P_16 = _round16(P_ij, dt)  # through shared memory to the dV~ grid
            dV_tilde = dV_tilde + np.swapaxes(_up(P_16), -1, -2) @ _up(dO_i)  # G2:L6  (B, H, bc, d)
            dP_ij = _up(dO_i) @ np.swapaxes(_up(V_j), -1, -2)  # (B, H, br, bc) fp32
            dS_ij = P_ij * (dP_ij - D_i[..., None]) * grad  # fp32
            dS_16 = _round16(dS_ij, dt)  # through shared memory to the dK~ and dQ grids
            term = _up(dS_16) @ _up(K_j)  # G2:L7  (B, H, br, d): what this block adds to dQ_i
            dQacc[:, :, r] += term
            dK_tilde = dK_tilde + np.swapaxes(_up(dS_16), -1, -2) @ _up(Q_i)  # G2:L8  (B, H, bc, d)
            yield Step("G2", i, j, i - i0, "G2:L8", {
                "S_ij": S2 * LN2, "S_base2_ij": S2.copy(), "P_ij": P_ij, "P_rounded_ij": P_16,
                "dP_ij": dP_ij, "D_i": D_i.copy(), "dS_ij": dS_ij, "dS_rounded_ij": dS_16,
                "dQ_ij": tau * term, "dK_tilde": tau * dK_tilde, "dV_tilde": dV_tilde.copy(),
                "warp_of_S": warp_of_S[:br, :bc].copy(), "warp_of_dKV": warp_of_dKV[:bc].copy(),
                "warp_of_dQ": warp_of_dQ[:br].copy()},
                blocks=(Nq, Nk, Br, Bc), ran=None if tv is None else tv.ran(q.shape, r, c))
        dK[:, :, c] = _round16(tau * dK_tilde, dt)  # G2:L10 (keys no query sees get zeros)
        dV[:, :, c] = _round16(dV_tilde, dt)
    dQ = _round16(tau * dQacc, dt)  # after every thread block has added in
    if dims.kv_heads != H:  # GQA: the 16-bit dK, dV per query head summed per group in fp32
        group = (B, dims.kv_heads, H // dims.kv_heads, Nk, d)
        dK, dV = (_round16(_up(x).reshape(group).sum(axis=2, dtype=f32), dt) for x in (dK, dV))
    return dQ, dK, dV


def tc_backward(do, q, k, v, o, lse, causal=False, softmax_scale=None, Br=None, Bc=None,
                warps=None, grid=None, **variant):
    """The tensor-core backward run to the end. Returns (dq, dk, dv) in the input dtype."""
    return run(tc_backward_steps(do, q, k, v, o, lse, causal, softmax_scale, Br, Bc, warps, grid,
                                 **variant))


# ---------------------------------------------------------------------------- FlashAttention's rule
# naive_lowp_forward, naive_lowp_backward and within_fa_rule live in flashlab.lowp (NumPy and
# CuPy alike) and are imported above: the GPU tests and the benchmark use the same yardstick.
