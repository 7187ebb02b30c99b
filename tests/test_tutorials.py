"""The tutorials: every notebook runs top to bottom on this machine (CPU: GPU cells skip with a
note), each .ipynb is its jupytext .py twin with outputs stripped, and no notebook draws by
itself (the pictures come from flashlab.viz)."""
import json
import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
jupytext = pytest.importorskip("jupytext")

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
SOURCES = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))
GPU_CELLS = {  # notebook -> what its GPU cells print when they skip on a CPU
    "01_standard_attention": "No CUDA GPU found: skipped",
    "04_reference_to_cuda": "No CUDA GPU: skipped trace.check_kernel",
    "05_backward_step_by_step": "No CUDA GPU: skipped tracing",
    "06_flashattention2": "No CUDA GPU: skipped bench.gpu_bench",
    "07_autodiff": "No CUDA GPU: skipped the forward/backward pair",
}
CELL_TIMEOUT = 180  # seconds; the whole set runs in well under a minute on 2 cores


def test_the_seven_tutorials_are_here():
    assert [p.name[:3] for p in SOURCES] == [f"{n:02d}_" for n in range(1, 8)]


def _cells(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_ipynb_is_the_py_twin_with_outputs_stripped(source):
    ipynb = source.with_suffix(".ipynb")
    assert ipynb.is_file(), f"run: jupytext --to ipynb {source.relative_to(ROOT)}"
    nb = nbformat.read(ipynb, as_version=4)
    assert _cells(nb) == _cells(jupytext.read(source)), (
        f"{ipynb.name} has drifted from {source.name}: "
        f"run jupytext --to ipynb {source.relative_to(ROOT)}")
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "strip the outputs"
    assert nb.metadata["jupytext"]["formats"] == "ipynb,py:percent"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_notebooks_do_not_draw_by_themselves(source):
    text = source.read_text()
    for word in ("matplotlib", "plt.", "imshow", "add_patch", "savefig"):
        assert word not in text, f"{source.name} draws ({word!r}): put it in flashlab/viz.py"


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
    """A kernelspec for this interpreter, found before any user or system 'python3' spec."""
    spec = tmp_path_factory.mktemp("jupyter") / "kernels" / "flashlab-tutorials"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "flashlab tutorials", "language": "python",
        "env": {"MPLBACKEND": "module://matplotlib_inline.backend_inline"}}))
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(spec.parents[1]), old]))
    yield spec.name
    if old is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = old


def _outputs(nb, kind):
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if kind == "text" and out.output_type == "stream":
                yield out.text
            elif kind in out.get("data", {}):
                yield out["data"][kind]


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(source, kernel_name):
    from nbclient import NotebookClient

    from flashlab.cuda_kernel_ops import gpu_available

    nb = jupytext.read(source)
    start = time.perf_counter()
    NotebookClient(nb, kernel_name=kernel_name, timeout=CELL_TIMEOUT,
                   resources={"metadata": {"path": str(TUTORIALS)}}).execute()
    seconds = time.perf_counter() - start
    print(f"{source.name}: {seconds:.1f} s")
    text = "".join(_outputs(nb, "text"))
    assert "Traceback" not in text
    assert list(_outputs(nb, "image/png")), f"{source.name} showed no figure"
    note = GPU_CELLS.get(source.stem)
    if note and not gpu_available():
        assert note in text, f"{source.name}: its GPU cell did not say it skipped"
