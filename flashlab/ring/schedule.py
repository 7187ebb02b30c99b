"""Who holds what in ring attention: the split of a sequence over P ranks and the ring's steps.

Each rank keeps its query block and passes its key/value block to the next rank at every step,
so after P steps every query block has met every key/value block, once. Without a causal mask
the sequence is cut into P contiguous chunks, chunk r on rank r. With a causal mask a
contiguous split would give rank 0 one block of work and rank P - 1 P blocks; the zigzag split
cuts it into 2P chunks and gives rank r chunks r and 2P - 1 - r, so every rank does the same
work at every step (`schedule` shows it; tests/test_ring.py checks it).

A pair (query chunk a, key chunk b) is "full" (every key visible), "diag" (a == b: the causal
triangle, top-left aligned, the chunks being of one size) or "skip" (b after a: nothing visible).
"""
from __future__ import annotations

FULL, DIAG, SKIP = "full", "diag", "skip"


def chunks_of(rank: int, size: int, causal: bool) -> tuple:
    """The sequence chunks rank `rank` of `size` holds, in the order it stores them."""
    _check(rank, size)
    return (rank, 2 * size - 1 - rank) if causal else (rank,)


def pair_kind(a: int, b: int, causal: bool) -> str:
    """What query chunk a sees of key chunk b."""
    if not causal:
        return FULL
    return FULL if b < a else DIAG if b == a else SKIP


def source(rank: int, step: int, size: int) -> int:
    """The rank whose key/value block rank `rank` holds at step `step` (it came along the ring
    from rank - 1, which had it a step earlier)."""
    return (rank - step) % size


def schedule(size: int, causal: bool) -> list:
    """Step by step, rank by rank: (source rank, [(query chunk, key chunk, kind), ...]) -- the
    step-through of the ring. The work of a rank at a step is its pairs that are not "skip"."""
    _check(0, size)
    return [[(source(r, s, size),
              [(a, b, pair_kind(a, b, causal)) for a in chunks_of(r, size, causal)
               for b in chunks_of(source(r, s, size), size, causal)])
             for r in range(size)] for s in range(size)]


def work(step_pairs: list) -> float:
    """Blocks of attention in a rank's pairs at one step: a full pair 1, a diagonal one 1/2."""
    return sum({FULL: 1.0, DIAG: 0.5, SKIP: 0.0}[kind] for _, _, kind in step_pairs)


def describe(size: int, causal: bool) -> str:
    """The schedule as a table: a row per step, a column per rank, each cell the key/value
    block's source rank and the query x key chunk pairs that rank computes then."""
    mark = {FULL: "", DIAG: "d"}
    rows = [f"{'step':>4} | " + " | ".join(f"rank {r}" for r in range(size))]
    for s, ranks in enumerate(schedule(size, causal)):
        cells = []
        for src, pairs in ranks:
            done = " ".join(f"{a}x{b}{mark[k]}" for a, b, k in pairs if k != SKIP)
            cells.append(f"kv {src}: {done or '-'}")
        rows.append(f"{s:>4} | " + " | ".join(cells))
    split = "zigzag: rank r holds chunks r and 2P-1-r" if causal else "rank r holds chunk r"
    return "\n".join(rows) + f"\n({split}; AxB: query chunk A with key chunk B, d: causal diagonal)"


def shard(x, rank: int, size: int, causal: bool, axis: int = 2):
    """Rank `rank`'s part of x (its chunks along `axis`, concatenated in chunks_of's order);
    x's length along `axis` must split into P (2P with causal) equal chunks."""
    n = x.shape[axis]
    parts = 2 * size if causal else size
    if n % parts:
        raise ValueError(f"sequence length {n} does not split into {parts} equal chunks "
                         f"({size} ranks{', zigzag' if causal else ''}): pad it to a multiple "
                         f"of {parts}")
    c = n // parts
    pieces = [_take(x, axis, i * c, (i + 1) * c) for i in chunks_of(rank, size, causal)]
    return pieces[0] if len(pieces) == 1 else _concat(pieces, axis)


def unshard(parts: list, causal: bool, axis: int = 2):
    """The whole sequence from every rank's part (shard's inverse), as a NumPy array."""
    import numpy as np

    size = len(parts)
    if not causal:
        return np.concatenate([np.asarray(p) for p in parts], axis)
    chunks = [None] * (2 * size)
    for r, p in enumerate(parts):
        p = np.asarray(p)
        half = p.shape[axis] // 2
        for k, i in enumerate(chunks_of(r, size, causal)):
            chunks[i] = _take(p, axis, k * half, (k + 1) * half)
    return np.concatenate(chunks, axis)


def _take(x, axis: int, lo: int, hi: int):
    index = [slice(None)] * x.ndim
    index[axis] = slice(lo, hi)
    return x[tuple(index)]


def _concat(pieces: list, axis: int):
    mod = type(pieces[0]).__module__
    if mod.startswith("torch"):
        import torch

        return torch.cat(pieces, axis)
    import numpy as np

    return np.concatenate(pieces, axis)


def _check(rank: int, size: int) -> None:
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size (ranks in the ring) must be an int >= 1, got {size!r}")
    if not isinstance(rank, int) or not 0 <= rank < size:
        raise ValueError(f"rank must be an int in 0..{size - 1}, got {rank!r}")
