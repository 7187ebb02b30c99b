"""`flashlab bench --cpu-backend`: what the CPU backend (flashlab.cpu) costs a student and a
grader, measured in child processes pinned to one core with one worker thread:

  first use      fa1 and fa2, forward and backward, B=1 H=2 N=256 d=64, with an empty compile
                 cache: every compile (the runtime's too) and every run        target <= 5 s
  cached         the same kernels again, a new process, a warm disk cache: the slowest
                 kernel's compile step (source to a loaded library)           target < 50 ms
  autograde      `flashlab grade` of a solution copy's kernel exercises (2.1-2.3), empty
                 cache: wall time and peak memory                  targets <= 2 min, <= 768 MB

Figures, not assertions: the tests check what the backend does, this says how fast.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"first use": 5.0, "cached": 0.050, "autograde": 120.0, "autograde memory": 768.0}

_KERNELS = r"""
import json, sys, time
import numpy as np
t0 = time.perf_counter()
from flashlab import launch
from flashlab.cpu import host
from flashlab.launch import compiler, plans, sources
rng = np.random.default_rng(0)
q, k, v, do = (rng.standard_normal((1, 2, 256, 64)).astype(np.float32) for _ in range(4))
t1 = time.perf_counter()
# the compile step alone, kernel by kernel, before anything ran: source to a loaded library
# (a compile when the cache is empty; a lookup and a dlopen when it is warm)
compile_s, smem = [], host.LIMITS["smem_optin"]
for name, fn in (("fa1", "fa1_forward"), ("fa1", "fa1_backward"), ("fa2", "fa2_backward_dot"),
                 ("fa2", "fa2_forward<64, {Br}, {Bc}>"), ("fa2", "fa2_backward<64, {Br}, {Bc}>")):
    p = plans.plan(name, 64, "backward" if "backward<" in fn else "forward", smem)
    fn = fn.format(**p)
    s = time.perf_counter()
    mod = compiler.get_module(sources.ours(name), False, (fn,) if "<" in fn else (),
                              kernel=name, backend="cpu")
    compiler.function(mod, fn)
    compile_s.append(time.perf_counter() - s)
t2 = time.perf_counter()
for name in ("fa1", "fa2"):
    o, lse = launch.forward(name, q, k, v)
    launch.backward(name, do, q, k, v, o, lse)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "run_s": t3 - t1, "kernels_s": t3 - t2,
                  "compile_s": compile_s}))
"""


_GRADE = r"""
import json, resource, sys
from flashlab.cli import main
code = main(["grade", sys.argv[1], "--exercises", "2.1,2.2,2.3"])
me, kids = (resource.getrusage(w).ru_maxrss for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
print(json.dumps({"code": code, "self": me, "compilers": kids}))
"""


def _one_core():
    """The child's preexec: one core (the first this process may use) where the OS allows."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def _child(args, env, cwd=None) -> tuple[float, str, int]:
    """(wall seconds, stdout, exit code) of a pinned child process."""
    start = time.perf_counter()
    r = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True,
                       preexec_fn=_one_core, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return time.perf_counter() - start, r.stdout, r.returncode


def measure() -> list[dict]:
    """The three figures (see the module docstring), each with its target and whether it met it."""
    from ..cpu import build

    rows = []
    with tempfile.TemporaryDirectory(prefix="flashlab-cpu-bench-") as tmp:
        env = {**os.environ, "FLASHLAB_CPU_WORKERS": "1", "FLASHLAB_CACHE_DIR": f"{tmp}/cache"}
        _, out, _ = _child([sys.executable, "-c", _KERNELS], env)
        first = json.loads(out.strip().splitlines()[-1])
        rows.append({"figure": "first use", "value": first["run_s"], "unit": "s",
                     "what": "fa1 + fa2 forward and backward, B=1 H=2 N=256 d=64, one core, "
                             "empty cache: compiles (runtime included) and runs"})
        _, out, _ = _child([sys.executable, "-c", _KERNELS], env)
        warm = json.loads(out.strip().splitlines()[-1])
        rows.append({"figure": "cached", "value": max(warm["compile_s"]), "unit": "s",
                     "what": f"the slowest of {len(warm['compile_s'])} kernels' compile steps in a "
                             f"new process, warm disk cache (then all run in "
                             f"{warm['kernels_s']:.2f} s)"})
        env["FLASHLAB_CACHE_DIR"] = f"{tmp}/cache-grade"
        flashlab = [sys.executable, "-m", "flashlab"]
        _child(flashlab + ["assignment", "make", f"{tmp}/key", "--solution"], env)
        wall, out, _ = _child([sys.executable, "-c", _GRADE, f"{tmp}/key"], env)
        mem = json.loads(out.strip().splitlines()[-1])
        scale = 1024 if sys.platform != "darwin" else 1024 * 1024  # KB on Linux, bytes on macOS
        total = next((line for line in out.splitlines() if line.startswith("total:")), "?")
        rows.append({"figure": "autograde", "value": wall, "unit": "s",
                     "what": f"flashlab grade, kernel exercises 2.1-2.3, one core, empty cache "
                             f"({total})"})
        rows.append({"figure": "autograde memory", "value": max(mem["self"], mem["compilers"]) / scale,
                     "unit": "MB", "what": f"peak resident memory: the grader {mem['self'] / scale:.0f} MB, "
                                           f"its largest compiler run {mem['compilers'] / scale:.0f} MB"})
    for r in rows:
        r["target"] = TARGETS[r["figure"]]
        r["met"] = r["value"] <= r["target"]
    rows.append({"figure": "compiler", "value": None, "unit": "", "target": None, "met": None,
                 "what": f"{build.compiler_name()} ({Path(build.compiler()[0][0]).name})"})
    return rows


def table(rows) -> list[list]:
    """Rows for tabulate: figure, measured, target, met, what."""
    def fmt(v, unit):
        if v is None:
            return "-"
        return f"{v * 1000:.1f} ms" if unit == "s" and v < 1 else f"{v:.2f} {unit}"
    return [[r["figure"], fmt(r["value"], r["unit"]), fmt(r["target"], r["unit"]),
             "-" if r["met"] is None else ("yes" if r["met"] else "NO"), r["what"]] for r in rows]
