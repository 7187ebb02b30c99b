"""The grader's child process for a kernel exercise: one trace check of a spliced kernel source.

    main() with sys.argv = [_, PATH, KERNEL, DIRECTION, N, CAUSAL, SEED, BACKEND, OUT.json, LABEL]

Writes {"divergence": the first divergence's message, or null} or {"error", "kind"} (a compile
error, a fault on the CPU backend: a race, bounds, a barrier) to OUT.json. The kernel runs
here, not in the grader's process (flashlab/course/isolate.py).
"""
import json
import sys
from pathlib import Path


def main():
    path, kernel, direction, N, causal, seed, backend, out, label = sys.argv[1:10]
    from flashlab.kernel_check import check_kernel
    from flashlab.launch.errors import KernelCompileError, KernelLaunchError

    try:
        div, _, _ = check_kernel(kernel, direction, B=1, H=2, Nq=int(N), Nk=int(N), d=64,
                                 causal=bool(int(causal)), seed=int(seed), source=Path(path),
                                 backend=backend)
        if div is not None:
            div.label = label
        result = {"divergence": None if div is None else str(div)}
    except KernelCompileError as e:
        result = {"error": f"your code does not compile:\n{e}", "kind": "compile"}
    except KernelLaunchError as e:
        result = {"error": str(e), "kind": getattr(e, "kind", "launch")}
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
