"""The Hopper ladder's schedule as a step-through (issue 22): which warpgroup does which step of F2,
in which order, and what it waits for, in kernels/tc90_ws.cu, played out on a cost model.

The kernel's arithmetic is F2's, tile for tile (flashlab/reference/tc.py; its tests compare the
outputs); what a rung of the ladder changes is the schedule. In tc90_ws.cu a producer warpgroup
loads K_j and V_j (TMA) into ST stages, and two consumer warpgroups, 64 query rows each, run the
same loop on their rows:

    j = 0:   issue S_0 = Q K_0^T;                 wait S_0; softmax(S_0) -> P_0
    j >= 1:  issue S_j, then P_{j-1} V_{j-1};     wait S_j; softmax(S_j) -> P_j;
             wait P_{j-1} V_{j-1}; rescale O~
    after:   issue P_{T-1} V_{T-1}; wait

Both consumers' products run on the one set of tensor cores, in the order they were issued. With
ping-pong the consumers take turns to issue (named barriers), so one's softmax runs while the
other's products occupy the tensor cores; without it each issues as soon as it is ready, and the
two tend to issue together and then both sit in their softmax while the tensor cores idle.

`timeline` plays the schedule out with a cost per step (arbitrary units; COSTS: a 64 x 128 x 128
product per warpgroup, about 700 cycles on an H200 SM, against 64 x 128 exponentials, about as
long at the SFU's rate). Warp w of each consumer runs on quadrant w of the SM, so the two
consumers' softmaxes share the quadrants' ALUs and SFUs: the model runs one at a time. It is a
model of the order and the waits, not a measurement: the
kernel's times come from scripts/ladder_ws.py. Stages are refilled only when both consumers are
done with them (K_j's after both S_j, V_j's after both P_j V_j), as the kernel's mbarriers say.

One level up, `blocks_makespan` models how thread blocks share the (query block, head) tiles:
a block per tile, which the hardware starts where one finished (dynamic), against persistent
blocks taking tiles in turn (static), with `tile_work` each tile's key tiles in the kernels'
order (reference.tc_block_order); `block_order_makespan` is the same model for kernel tc's own
grids.
"""
from __future__ import annotations

from dataclasses import dataclass

from .tc import tc_block_order

COSTS = {"load": 0.5, "s": 1.0, "pv": 1.0, "softmax": 1.0, "rescale": 0.1}
TENSOR_CORES = "tensor cores"


@dataclass(frozen=True)
class Event:
    who: str      # "producer", "consumer 0", "consumer 1", or TENSOR_CORES
    what: str     # "K_3", "V_3", "S_3 (c0)", "PV_2 (c1)", "softmax_3"
    tile: int
    start: float
    end: float


def timeline(tiles: int, pingpong: bool = True, stages: int = 2, costs: dict | None = None):
    """The events of one thread block over `tiles` key tiles: list of Event, in start order."""
    if tiles < 1 or stages < 1:
        raise ValueError(f"tiles and stages must be at least 1, got {tiles} and {stages}")
    c = {**COSTS, **(costs or {})}
    events = []
    loaded = {}    # ("K" | "V", j) -> time the tile has landed
    s_done = {}    # (consumer, j) -> S_j's end on the tensor cores
    pv_done = {}   # (consumer, j) -> P_j V_j's end
    producer = [0.0, 0]  # the TMA's free time, the next load (2 j: K_j, 2 j + 1: V_j)

    def land(kind, j):
        """When tile (kind, j) has landed: the producer loads in order K_0, V_0, K_1, ..., each
        into a stage both consumers have released."""
        while (kind, j) not in loaded:
            n = producer[1]
            k, jj = ("K", "V")[n % 2], n // 2
            free = 0.0
            if jj >= stages:  # the stage's previous tile must be done in both consumers
                done = s_done if k == "K" else pv_done
                if any((x, jj - stages) not in done for x in (0, 1)):
                    return float("inf")  # not yet: a consumer has not got that far
                free = max(done[(x, jj - stages)] for x in (0, 1))
            start = max(producer[0], free)
            producer[0] = start + c["load"]
            producer[1] += 1
            loaded[(k, jj)] = producer[0]
            events.append(Event("producer", f"{k}_{jj}", jj, start, producer[0]))
        return loaded[(kind, j)]

    tc_free = alu_free = 0.0
    ready = [0.0, 0.0]         # when each consumer reaches its next issue
    turn = [0, 0]              # each consumer's next tile to issue (tiles: the last PV)
    last_issue = None          # when the other consumer last issued (the ping-pong token)
    order = []                 # (consumer, j) in the order their products reach the tensor cores
    while min(turn) <= tiles:
        cands = [x for x in (0, 1) if turn[x] <= tiles]
        if pingpong:  # strict alternation: consumer 0 first, then the one behind
            x = min(cands, key=lambda y: (turn[y], y))
        else:         # whoever can issue first
            x = min(cands, key=lambda y: (max(ready[y], _data(land, turn[y], tiles)), y))
        j = turn[x]
        issue = max(ready[x], _data(land, j, tiles))
        assert issue < float("inf"), "the model's consumers wait for each other"
        if pingpong and last_issue is not None:
            issue = max(issue, last_issue)
        last_issue = issue
        order.append((x, j))
        t = max(issue, tc_free)
        if j < tiles:  # S_j
            events.append(Event(TENSOR_CORES, f"S_{j} (c{x})", j, t, t + c["s"]))
            t = s_done[(x, j)] = t + c["s"]
        if j > 0:      # P_{j-1} V_{j-1}
            events.append(Event(TENSOR_CORES, f"PV_{j - 1} (c{x})", j - 1, t, t + c["pv"]))
            t = pv_done[(x, j - 1)] = t + c["pv"]
        tc_free = t
        who = f"consumer {x}"
        if j < tiles:  # the two consumers' warps share the SM's four quadrants: one softmax at a time
            sm = max(s_done[(x, j)], alu_free)
            alu_free = sm + c["softmax"]
            events.append(Event(who, f"softmax_{j}", j, sm, sm + c["softmax"]))
            after = sm + c["softmax"]
            if j > 0:
                after = max(after, pv_done[(x, j - 1)]) + c["rescale"]
                events.append(Event(who, f"rescale_{j}", j, after - c["rescale"], after))
            ready[x] = after
        else:
            ready[x] = pv_done[(x, j - 1)]
        turn[x] += 1
    return sorted(events, key=lambda e: (e.start, e.who))


def _data(land, j, tiles) -> float:
    """When the tiles a consumer's issue at tile j waits for have landed: K_j (unless j is past
    the last tile) and V_{j-1}."""
    t = land("K", j) if j < tiles else 0.0
    return max(t, land("V", j - 1)) if j > 0 else t


def makespan(events) -> float:
    return max(e.end for e in events)


def busy(events, who: str = TENSOR_CORES) -> float:
    """The fraction of the makespan during which `who` works."""
    return sum(e.end - e.start for e in events if e.who == who) / makespan(events)


def table(events) -> list[list]:
    """The step-through: one row per step, in start order (who, what, start, end)."""
    return [[e.who, e.what, round(e.start, 3), round(e.end, 3)] for e in events]


# ----------------------------------------------------------------------------- blocks and tiles

def tile_work(Tr: int, Tc: int, BH: int, causal: bool, group: int, Br: int = 128,
              Bc: int = 128) -> list[int]:
    """Key tiles each tile visits (F2:L3's causal skipping), in the order the kernels take the
    tiles (tc_block_order; tc90_ws.cu's block_order_of): a tile's cost in units of one key tile."""
    return [min(Tc, ((i + 1) * Br - 1) // Bc + 1) if causal else Tc
            for i, _ in tc_block_order(Tr, BH, causal, group)]


def blocks_makespan(work, blocks: int, dynamic: bool, overhead: float = 0.0) -> float:
    """When the last of `blocks` thread blocks finishes the tiles (costs `work`, in order), each
    tile also costing `overhead` (its prologue and epilogue). dynamic: each tile goes to the
    first block that is free, as the hardware starts a new block where one finished (a block
    per tile), or an atomic tile counter would; static: block b takes tiles b, b + blocks, ...
    (tc90_ws.cu's persistent blocks)."""
    import heapq

    if dynamic:
        free = [0.0] * blocks
        for c in work:
            heapq.heappush(free, heapq.heappop(free) + c + overhead)
        return max(free)
    loads = [0.0] * blocks
    for w, c in enumerate(work):
        loads[w % blocks] += c + overhead
    return max(loads)


def block_order_makespan(nx: int, BH: int, group: int, slots: int, long_high: bool = True,
                         overhead: float = 1.5) -> float:
    """How much longer than perfectly balanced a causal grid runs when its blocks start in
    tc_block_order's order: blocks_makespan's dynamic model of the GPU's block dispatcher (each
    of `slots` resident places takes the next block as soon as it is free). Block x costs its
    number of tiles (x + 1 when long_high, nx - x otherwise) plus `overhead` tiles of prologue
    and epilogue. Returns makespan / (total work / slots), 1.0 being no tail at all.

    This is the model behind tc v6's prediction in docs/PERFORMANCE.md (an H100 holds 264
    forward blocks at d = 128: 2 per SM); it ignores L2, which is why the real order groups heads
    instead of going longest first across all of them."""
    if slots < 1:
        raise ValueError(f"block_order_makespan: slots must be >= 1, got {slots}")
    work = [x + 1 if long_high else nx - x for x, _ in tc_block_order(nx, BH, True, group, long_high)]
    total = sum(work) + overhead * len(work)
    return blocks_makespan(work, slots, True, overhead) / (total / slots)
