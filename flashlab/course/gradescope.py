"""A Gradescope autograder zip for a copy: setup.sh, run_autograder, the copy's assignment.json
and flashlab itself, so the image installs what grading needs (flashlab with NVRTC, a C++
compiler for the CPU backend) and grades the submission with the instructor's list of
exercises, not one a submission could bring.

Gradescope unpacks the zip into /autograder/source, runs setup.sh once when it builds the image
and run_autograder for each submission (in /autograder/submission), which must leave
/autograder/results/results.json. AUTOGRADER_ROOT stands in for /autograder (the tests use it).
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

from .. import __version__
from ..install import checkout_root

SETUP = """#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder image.
set -euo pipefail
ROOT=${AUTOGRADER_ROOT:-/autograder}
need=""
command -v g++ >/dev/null || need="$need g++"
python3 -m venv --help >/dev/null 2>&1 || need="$need python3-venv"
if [ -n "$need" ]; then apt-get update -q && apt-get install -y -q $need; fi
python3 -m venv "$ROOT/venv"
"$ROOT/venv/bin/pip" install -q --disable-pip-version-check "__FLASHLAB__[nvrtc]"
# the CPU backend's runtime, compiled now rather than in the first submission's time
"$ROOT/venv/bin/python" -c "from flashlab.cpu import build; build.runtime_library()"
"""

RUN = """#!/usr/bin/env bash
# Gradescope runs this for each submission; it always leaves results/results.json.
set -uo pipefail
ROOT=${AUTOGRADER_ROOT:-/autograder}
mkdir -p "$ROOT/results"
rm -rf "$ROOT/graded" && mkdir -p "$ROOT/graded"
cp -r "$ROOT/submission/." "$ROOT/graded/"
# what was handed out is the instructor's list, not whatever the submission carries
cp "$ROOT/source/assignment.json" "$ROOT/graded/assignment.json"
cd "$ROOT/graded"
"$ROOT/venv/bin/flashlab" grade . --json "$ROOT/results/results.json"
status=$?
if [ ! -s "$ROOT/results/results.json" ]; then
  echo '{"score": 0, "output": "the grader could not run (see the log)", "tests": []}' \\
    > "$ROOT/results/results.json"
fi
exit 0
"""

# what of a checkout the zip carries to install flashlab from (pyproject's package layout)
_SOURCE = ("pyproject.toml", "README.md", "environment.yml", "flashlab", "kernels")


def _source_files(root: Path):
    for name in _SOURCE:
        p = root / name
        if p.is_file():
            yield p, Path("flashlab-src") / name
        elif p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and "__pycache__" not in f.parts and f.suffix not in (".pyc", ".so"):
                    yield f, Path("flashlab-src") / f.relative_to(root)


def write_zip(copy_dir, zip_path) -> list[str]:
    """The autograder zip of the copy at `copy_dir` (its assignment.json says what is graded).
    From a checkout the zip carries flashlab's source; from an installed wheel setup.sh
    installs this version from the package index. Returns the zip's file names."""
    manifest = Path(copy_dir) / "assignment.json"
    json.loads(manifest.read_text())  # a copy's, readable
    root = checkout_root()
    spec = "$ROOT/source/flashlab-src" if root else f"flashlab=={__version__}"
    names = []
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in (("setup.sh", SETUP.replace("__FLASHLAB__", spec)),
                           ("run_autograder", RUN)):
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o755 << 16  # executable
            z.writestr(info, text)
            names.append(name)
        z.write(manifest, "assignment.json")
        names.append("assignment.json")
        if root:
            for src, arc in _source_files(root):
                z.write(src, str(arc))
                names.append(str(arc))
    return names
