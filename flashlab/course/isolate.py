"""Student code runs in child processes with a time and a memory limit; the grader compares.

`python_steps` runs a student's step-through (flashlab/course/student_steps.py, a script that
never imports the grader's flashlab) on the grading inputs and returns each case's steps as
flashlab.reference.Step objects, or its error with the student's file and line. `kernel_check`
runs a spliced kernel's trace check (flashlab/course/kernel_run.py) and returns the divergence
message, or the fault. A crash, a hang past the limit, or memory past it is an error of that
exercise alone. The comparison with the solution happens in the grader's process, whose modules
the student's code never shares.

Limits (environment): FLASHLAB_GRADE_TIMEOUT (seconds per exercise, default 300),
FLASHLAB_GRADE_MEMORY_MB (address space per child, default 4096; not for a kernel checked on
the GPU, whose CUDA context needs far more address space than memory).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def limits() -> tuple[float, int]:
    return (float(os.environ.get("FLASHLAB_GRADE_TIMEOUT", 300)),
            int(os.environ.get("FLASHLAB_GRADE_MEMORY_MB", 4096)))


def _preexec():
    """The child's address-space limit (not for a child that uses the GPU: a CUDA context
    reserves far more address space than it uses)."""
    try:
        import resource

        mb = limits()[1]
        resource.setrlimit(resource.RLIMIT_AS, (mb << 20, mb << 20))
    except (ImportError, ValueError, OSError):  # not every OS lets a process lower it
        pass


def _env() -> dict:
    # one BLAS thread: a grader's core is shared, and BLAS threads reserve address space
    return {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1"}


def _run(args: list, what: str, gpu: bool = False) -> str | None:
    """Run a child; None when it ended well, else what went wrong, in one line."""
    timeout, mb = limits()
    limit = _preexec if os.name == "posix" and not gpu else None
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                           preexec_fn=limit, env=_env())
    except subprocess.TimeoutExpired:
        return f"{what} ran past the grader's {timeout:.0f} s limit (an endless loop?)"
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        if r.returncode < 0 or "MemoryError" in r.stderr:
            why = f"stopped by signal {-r.returncode}" if r.returncode < 0 else "ran out of memory"
            return f"{what} {why} (memory limit {mb} MB): {' / '.join(tail)}"
        return f"{what} failed: {' / '.join(tail)}"
    return None


def python_steps(root: Path, module: str, function: str, cases: list) -> dict:
    """Run `function` of the student's flashlab/reference/`module`.py on each case (dicts:
    args (name -> array), causal, Br, Bc). Returns {"error": ..., "where": ...} when it does not
    run at all, else {"cases": [{"status", "message", "where", "steps": [Step, ...]}, ...]}."""
    from ..reference import Step

    with tempfile.TemporaryDirectory(prefix="flashlab-grade-") as tmp:
        tmp = Path(tmp)
        arrays, plain = {}, []
        for n, case in enumerate(cases):
            for name, x in case["args"].items():
                arrays[f"c{n}_{name}"] = x
            plain.append({"args": list(case["args"]), "causal": case["causal"],
                          "Br": case["Br"], "Bc": case["Bc"]})
        np.savez(tmp / "inputs.npz", **arrays)
        (tmp / "cases.json").write_text(json.dumps(plain))
        out = tmp / "steps.npz"
        failed = _run([sys.executable, "-I", str(HERE / "student_steps.py"), str(root.resolve()),
                       module, function, str(tmp / "inputs.npz"), str(tmp / "cases.json"),
                       str(out)], "your step-through")
        if failed:
            return {"error": failed, "where": ""}
        meta = json.loads(out.with_suffix(".json").read_text())
        if "error" in meta:
            return meta
        data = np.load(out, allow_pickle=False)
        for n, entry in enumerate(meta["cases"]):
            entry["steps"] = [Step(s["algorithm"], s["i"], s["j"], s["seq"], s["line"],
                                   {name: data[f"c{n}_s{k}_{name}"] for name in s["tiles"]},
                                   tuple(s["blocks"]))
                              for k, s in enumerate(entry["steps"])]
        return meta


def kernel_check(path: Path, kernel: str, direction: str, N: int, causal: bool, seed: int,
                 backend: str, label: str) -> dict:
    """The trace check of the kernel source at `path` (the student's region in the solution),
    in a child process: {"divergence": str or None} or {"error": str, "kind": str}."""
    with tempfile.TemporaryDirectory(prefix="flashlab-grade-") as tmp:
        out = Path(tmp) / "result.json"
        # -I keeps the working directory (a copy's own flashlab/) off sys.path; the grader's
        # flashlab is put there by name, so a checkout on PYTHONPATH (which -I drops) works too
        grader = str(Path(__file__).resolve().parents[2])
        boot = (f"import sys; sys.path.insert(0, {grader!r}); "
                "from flashlab.course.kernel_run import main; main()")
        failed = _run([sys.executable, "-I", "-c", boot, str(path), kernel, direction, str(N),
                       str(int(causal)), str(seed), backend, str(out), label], "your kernel",
                      gpu=backend == "gpu")
        if failed:
            return {"error": failed, "kind": "child"}
        return json.loads(out.read_text())
