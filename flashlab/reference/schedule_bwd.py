"""The Hopper ladder's backward schedule as a step-through (issue 22): which warpgroup does which
step of G2, in which order, and what it waits for, in kernels/tc90_ws_bwd.cu, played out on the
cost model of flashlab.reference.schedule (the forward's; the same Event, makespan, busy, table).

One thread block owns key block j (128 keys); a producer loads K_j and V_j once and then Q_i,
dO_i (with L_i, D_i) step after step into ST stages; two consumer warpgroups, 64 keys each, run

    wait stage i;  issue S^T = K Q_i^T and dP^T = V dO_i^T;  wait
    P^T, dS^T (exponentials, in registers; dS^T also to shared memory)
    issue dV~ += P^T dO_i and dK~ += dS^T Q_i
    named barrier: both halves of dS^T are written;  issue dQ_i's term = dS K;  wait all
    release stage i;  dQ_i's term out: fp32 atomics (the consumer issues them), or (writer)
    stored into a shared buffer once the writer has read the last one, which the dQ writer
    warp then asks the TMA unit to add into global memory

The products of both consumers run on the one set of tensor cores in the order they were issued;
the consumers' exponentials share the SM's quadrants (one at a time, as the forward's model).
COSTS are in the forward model's unit (a 64 x 128 x 128 product per warpgroup = 1): at d = 128,
BR = 64, each of S^T, dP^T, dV~, dK~ is a 64 x 64 x 128 product (0.5), dQ's term too. "atomics"
is the consumer's time issuing its 16 fp32 reductions a step, "store" its time storing the term
into shared memory, "add" the TMA unit's add of the buffer. It is a model of the order and the
waits; the kernel's times come from scripts/ladder_ws.py --direction backward.
"""
from __future__ import annotations

from .schedule import TENSOR_CORES, Event

COSTS = {"kv": 1.0, "load": 0.5, "sdp": 1.0, "pds": 1.0, "dvdk": 1.0, "dq": 0.5,
         "atomics": 0.8, "store": 0.15, "add": 0.5}
WRITER = "dQ writer"


def backward_timeline(steps: int, writer: bool = True, stages: int = 2,
                      costs: dict | None = None) -> list:
    """The events of one thread block over `steps` query blocks: a list of Event in start order.
    writer: dQ's term through the shared buffer and the dQ writer (kernels/tc90_ws_bwd.cu's
    DQW = 1), else the consumers' atomics (DQW = 0)."""
    if steps < 1 or stages < 1:
        raise ValueError(f"steps and stages must be at least 1, got {steps} and {stages}")
    c = {**COSTS, **(costs or {})}
    events = [Event("producer", "KV", 0, 0.0, c["kv"])]
    producer = c["kv"]
    landed, released = {}, {}   # step -> when its stage has landed / both consumers released it
    tc_free = alu_free = 0.0
    ready = [c["kv"], c["kv"]]  # when each consumer can start its next step (K, V have landed)
    buffer_free = 0.0           # when the dQ buffer may be written again (writer)
    writer_free = 0.0

    def on_tensor_cores(issues, name, cost, i):
        """Products issued at the given times (consumer -> time), in issue order: their ends."""
        nonlocal tc_free
        ends = {}
        for x in sorted(issues, key=lambda y: (issues[y], y)):
            t = max(issues[x], tc_free)
            tc_free = ends[x] = t + cost
            events.append(Event(TENSOR_CORES, f"{name}_{i} (c{x})", i, t, t + cost))
        return ends

    for i in range(steps):
        # the producer fills stage i % stages once both consumers released its last use
        start = max(producer, released.get(i - stages, 0.0))
        producer = landed[i] = start + c["load"]
        events.append(Event("producer", f"QdO_{i}", i, start, producer))

        sdp = on_tensor_cores({x: max(ready[x], landed[i]) for x in (0, 1)}, "SdP", c["sdp"], i)
        pds_end = {}
        for x in sorted((0, 1), key=lambda y: (sdp[y], y)):  # one consumer's exponentials at a time
            t = max(sdp[x], alu_free)
            alu_free = pds_end[x] = t + c["pds"]
            events.append(Event(f"consumer {x}", f"pds_{i}", i, t, t + c["pds"]))
        dvdk = on_tensor_cores(pds_end, "dVdK", c["dvdk"], i)
        both = max(pds_end.values())  # the named barrier: both halves of dS^T are written
        dq = on_tensor_cores({x: both for x in (0, 1)}, "dQ", c["dq"], i)
        done = {x: max(dvdk[x], dq[x]) for x in (0, 1)}  # wg_wait<0>
        released[i] = max(done.values())
        stored = {}
        for x in (0, 1):
            who = f"consumer {x}"
            if writer:
                t = max(done[x], buffer_free)
                stored[x] = ready[x] = t + c["store"]
                events.append(Event(who, f"store_{i}", i, t, ready[x]))
            else:
                ready[x] = done[x] + c["atomics"]
                events.append(Event(who, f"atomics_{i}", i, done[x], ready[x]))
        if writer:  # both terms are in the buffer: the writer's add, then the buffer is free
            t = max(max(stored.values()), writer_free)
            writer_free = buffer_free = t + c["add"]
            events.append(Event(WRITER, f"add_{i}", i, t, writer_free))
    return sorted(events, key=lambda e: (e.start, e.who))
