"""The wheel a user installs works on its own: built from this checkout, installed into a fresh
virtual environment outside it, and its main commands run from another directory with no
traceback. (A green suite on an editable install can hide a file the wheel forgets.)"""
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, cwd, env, timeout=600):
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(bin directory of a fresh venv holding only the wheel and its dependencies, a scratch
    directory outside the checkout, the environment to run in)."""
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    # build from a copy of the files git knows (tracked, or new and not ignored), so the build
    # leaves nothing in the checkout and sees only what a clone would hold
    src = tmp / "src"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    code, out = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                      str(tmp / "dist"), str(src)], cwd=tmp, env=env)
    assert code == 0, out
    wheels = list((tmp / "dist").glob("flashlab-*.whl"))
    assert len(wheels) == 1, wheels
    venv.EnvBuilder(with_pip=True).create(tmp / "venv")
    bin_dir = tmp / "venv" / "bin"
    code, out = _run([str(bin_dir / "python"), "-m", "pip", "install", "-q",
                      "--disable-pip-version-check", str(wheels[0])], cwd=tmp, env=env)
    assert code == 0, out
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    work = tmp / "elsewhere"
    work.mkdir()
    return bin_dir, work, env


def test_the_wheel_imports_its_own_installed_copy(installed):
    bin_dir, work, env = installed
    code, out = _run([str(bin_dir / "python"), "-c",
                      "import flashlab, flashlab.launch.sources as o; print(flashlab.__file__);"
                      "print(o.kernel_dir())"], cwd=work, env=env)
    assert code == 0, out
    pkg, kernels = out.split()[:2]
    assert "site-packages" in pkg and str(ROOT) not in pkg
    assert "site-packages" in kernels and (Path(kernels) / "fa1.cu").is_file()


@pytest.mark.parametrize("argv", [
    ["--version"],
    ["info"],
    ["io", "--seq", "512,2k"],
    ["algorithms", "A1"],
    ["bench", "--seq", "64", "--repeat", "1"],
])
def test_main_commands_run_from_another_directory(installed, argv):
    bin_dir, work, env = installed
    code, out = _run([str(bin_dir / "flashlab"), *argv], cwd=work, env=env)
    assert code == 0, out
    assert "Traceback" not in out, out
    assert "pip install -e" not in out, "a wheel's hints must not point at a checkout:\n" + out


@pytest.mark.cpu_kernel
def test_a_kernel_runs_on_the_cpu_backend_from_the_wheel(installed):
    # the runtime's headers and sources travel in the wheel (flashlab/cpu/runtime/)
    bin_dir, work, env = installed
    env = {**env, "FLASHLAB_CACHE_DIR": str(work / "cache")}
    code, out = _run([str(bin_dir / "flashlab"), "trace", "--kernel", "fa2", "--seq", "70",
                      "--backend", "cpu"], cwd=work, env=env)
    assert code == 0 and "on the CPU backend" in out and "all steps match" in out, out


def test_assignment_make_and_grade_from_the_wheel(installed):
    bin_dir, work, env = installed
    code, out = _run([str(bin_dir / "flashlab"), "assignment", "make", "hw", "--exercises",
                      "1.1"], cwd=work, env=env)
    assert code == 0 and "Traceback" not in out, out
    assert (work / "hw" / "ASSIGNMENT.md").is_file()
    code, out = _run([str(bin_dir / "flashlab"), "grade", "hw", "--exercises", "1.1", "--json",
                      "results.json"], cwd=work, env=env)
    assert code == 0 and "Traceback" not in out, out
    assert "1.1" in out and (work / "results.json").is_file()
