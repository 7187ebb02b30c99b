"""Run every tutorial top to bottom as a script, GPU cells included (for the device, which has no
Jupyter kernel). Fails on any error, or when a GPU cell printed its "No CUDA GPU" skip note.
Rendering is not checked here: tests/test_tutorials.py executes the notebooks in Jupyter on CPU.

    MPLBACKEND=Agg PYTHONPATH=. python3 scripts/run_tutorials.py
"""
import contextlib
import io
import runpy
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

failed = 0
for nb in sorted(Path("tutorials").glob("[0-9][0-9]_*.py")):
    out = io.StringIO()
    t0 = time.time()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(nb), run_name="__main__")
        skipped = [l for l in out.getvalue().splitlines() if "No CUDA GPU" in l]
        status = "ok" if not skipped else f"GPU CELL SKIPPED: {skipped[0]}"
        failed += bool(skipped)
    except Exception as e:  # noqa: BLE001
        status = f"FAILED: {type(e).__name__}: {e}"
        failed += 1
    plt.close("all")
    print(f"{nb.name}: {status} ({time.time() - t0:.1f} s)")
    (Path(sys.argv[1]) / f"{nb.stem}.out" if len(sys.argv) > 1 else Path("/dev/null")).write_text(out.getvalue())
print(f"{failed} notebook(s) with problems")
sys.exit(1 if failed else 0)
