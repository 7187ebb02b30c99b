"""Kernel sources: where kernels/ is, #include inlining, and the `Source` a launcher compiles.

A `Source` is a program's name and text (every local #include already inlined, with #line
markers, so compiler messages still name the file and line each line came from) and the
registry variant it is a copy of. `ours(kernel, variant)` is flashlab's own; `user_file(path,
kernel)` is a student's file (flashlab check, the autograder), whose variant is decided from the
registry by the kernels it defines. Planted bugs are course content (flashlab.course.bugs), which
patches the text of `ours` before it gets here. Both are cached per process while no .cu/.cuh
file they may include has changed (looked at most every SOURCE_RECHECK_S seconds).
"""
from __future__ import annotations

import hashlib
import importlib.util
import re
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .. import registry

# A local include on a line of its own (a trailing // comment allowed). Only spaces and tabs
# around it: \s would match newlines too, and inlining would then shift the lines that follow.
_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"\n]+)"[ \t]*(?://[^\n]*)?$', re.M)
SOURCE_RECHECK_S = 0.5  # how stale a cached source may be: an edited .cu is seen within this


@dataclass(frozen=True)
class Source:
    """What a launcher compiles: the program name (as #line names it), the text, and the
    registry variant of the kernel it is a copy of (None: not decided). origin says where it
    comes from, for messages (a user's path, "fa1.cu with planted bug 'no-rescale'")."""

    name: str
    text: str
    variant: str | None = None
    origin: str = ""

    @cached_property
    def digest(self) -> str:
        """sha256 of the text: what the module cache keys on."""
        return hashlib.sha256(self.text.encode()).hexdigest()

    def __repr__(self) -> str:  # not the whole text
        return f"Source({self.name!r}, variant={self.variant!r}, {len(self.text)} chars)"


def kernel_dir() -> Path:
    """kernels/ at the top of a checkout, or the flashlab.kernels data package when installed."""
    top = Path(__file__).resolve().parent.parent.parent / "kernels"
    if top.is_dir():
        return top
    return installed_kernel_dir()


def installed_kernel_dir() -> Path:
    """Where an installed (non-editable) flashlab keeps kernels/: the data package
    flashlab.kernels, a namespace package (no __init__.py), found through its import spec."""
    spec = importlib.util.find_spec("flashlab.kernels")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("flashlab's kernels/ is missing from this installation; reinstall flashlab")
    return Path(list(spec.submodule_search_locations)[0])


def kernel_files() -> list[Path]:
    return sorted(kernel_dir().glob("*.cu"))


def expand_includes(path: Path, _seen=None, fallback: Path | None = None, _name=None) -> str:
    """The source of `path` with each local #include "x.cuh" replaced by x.cuh's own text.

    Each inlined header is preceded by `#line 1 "x.cuh"` and followed by `#line N "file"`, and
    the whole text starts with `#line 1 "file"`, so compiler messages name the file and line
    they come from, whatever the compiler calls the program. No line of `path` is dropped or
    added (the #include line itself becomes the `#line N` line). A header that is not beside
    the file including it is looked for in `fallback` (a user's lone file gets kernels/'s
    common.cuh) and is then named by its full path. A header seen before is left out
    (#pragma once)."""
    top = _seen is None
    _seen = set() if top else _seen
    text = path.read_text()
    name = _name or path.name

    def quoted(n):
        return '"' + str(n).replace("\\", "\\\\").replace('"', '\\"') + '"'

    def inline(match):
        header, header_name = path.parent / match.group(1), match.group(1)
        if not header.is_file() and fallback is not None and (fallback / match.group(1)).is_file():
            header = fallback / match.group(1)
            header_name = str(header)
        if not header.is_file():
            return match.group(0)  # a system header: NVRTC finds it or says so
        seen = header.resolve()
        if seen in _seen:
            return ""  # #pragma once; the line stays, empty
        _seen.add(seen)
        after = text.count("\n", 0, match.start()) + 2  # the line after the #include
        body = expand_includes(header, _seen, fallback, header_name)
        end = "" if body.endswith("\n") else "\n"
        return f"#line 1 {quoted(header_name)}\n{body}{end}#line {after} {quoted(name)}"

    out = _INCLUDE.sub(inline, text)
    return f"#line 1 {quoted(name)}\n{out}" if top else out


# ----------------------------------------------------------------------------- the source cache

_sources: dict = {}  # key -> (stamp, Source, checked_at)


def _cached(key, dirs, read):
    """read() cached under `key` while no .cu/.cuh file in the folders dirs() gives changed.
    The files are stat-ed at most every SOURCE_RECHECK_S seconds, so a launch costs
    microseconds, not a directory scan and a hash (small-N timings see that)."""
    hit = _sources.get(key)
    now = time.monotonic()
    if hit is not None and now - hit[2] < SOURCE_RECHECK_S:
        return hit[1]
    stamp = tuple(sorted((str(f), f.stat().st_mtime_ns) for dd in dirs() for f in dd.iterdir()
                         if f.suffix in (".cu", ".cuh")))
    if hit is None or hit[0] != stamp:
        hit = (stamp, read(), now)
    else:
        hit = hit[:2] + (now,)
    _sources[key] = hit
    return hit[1]


def ours(kernel: str, variant: str | None = None) -> Source:
    """flashlab's source of `kernel` (kernels/<variant's file>, headers inlined). variant None:
    the kernel's portable variant (the one that runs on the most GPUs)."""
    spec = registry.get(kernel)
    variant = spec.portable_variant() if variant is None else variant
    if variant not in spec.variants:
        raise ValueError(f"kernel {kernel!r} has no variant {variant!r} "
                         f"(it has {', '.join(spec.variants)})")
    file_name = spec.variants[variant].source

    def read():
        return Source(file_name, expand_includes(kernel_dir() / file_name), variant)

    return _cached(("ours", kernel, variant), lambda: (kernel_dir(),), read)


def user_file(path, kernel: str) -> Source:
    """A user's .cu file for `kernel` (same kernels, same signatures as ours); headers it
    includes are looked for beside it, then in kernels/ (a lone file gets our common.cuh). Its
    variant is the one of the kernel's whose kernels it defines (variant_of)."""
    spec = registry.get(kernel)
    path = Path(path)

    def read():
        if not path.is_file():
            raise ValueError(f"kernel source {path} does not exist")
        text = expand_includes(path, fallback=kernel_dir())
        return Source(path.name, text, variant_of(spec, text), origin=str(path))

    return _cached(("user", kernel, str(path)), lambda: {kernel_dir(), path.parent}, read)


def variant_of(spec, text: str) -> str:
    """The variant of `spec` a source is a copy of: the one whose launched kernels (the
    registry's Variant.kernels) it defines most of; ties go to the one that runs on the most
    GPUs (the lowest compute capability), a build for older GPUs (Variant.force: tc.cu as
    compute_75) only where forced. (Several variants may build one file: the launcher runs a
    copy of it as the one of those that runs on its GPU.)"""
    def score(item):
        name, v = item
        have = len(v.required()) - len(_missing(v.required(), text))
        return (-have, v.force is not None and not v.forced(), v.min_cc)

    return min(spec.variants.items(), key=score)[0]


# ----------------------------------------------------------------------------- what a source defines

_GLOBAL = re.compile(r"\b__global__\s+(?:__launch_bounds__\s*\((?:[^()]|\([^()]*\))*\)\s*|\w+\s+)*"
                     r"(\w+)\s*\(")
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)


def required_kernels(kernel: str, direction: str | None = None, variant: str | None = None) -> tuple:
    """The kernels the launcher of `kernel` (its `variant`, default the portable one) looks up
    by name, for one pass ("forward", "backward") or both (None): extern "C" names, and the
    templates whose instantiations it compiles (by their plain names). A user's source for
    `kernel` must define them."""
    spec = registry.get(kernel)
    v = spec.variants[spec.portable_variant() if variant is None else variant]
    return v.required(direction)


def defined_kernels(source: str) -> set:
    """The names of the __global__ functions (extern "C" or templates) a source defines or
    declares, comments left out."""
    names = set(_GLOBAL.findall(_COMMENT.sub(" ", source)))
    names.discard("__launch_bounds__")
    return names


def _missing(names, source: str) -> tuple:
    code = _COMMENT.sub(" ", source)
    defined = defined_kernels(source)
    return tuple(n for n in names if n not in defined and not re.search(rf"\b{n}\s*[(<]", code))


def missing_kernels(kernel: str, source: str, direction: str | None = None,
                    variant: str | None = None) -> tuple:
    """required_kernels(kernel, direction, variant) that `source` (text) does not define.
    Lenient: a name the source uses as `name(` or `name<` outside comments counts as defined (a
    macro may define it), so the compiler, not this, has the last word."""
    return _missing(required_kernels(kernel, direction, variant), source)


_DIAGNOSTIC = re.compile(r"^(?P<file>[^\n]+?)\((?P<line>\d+)\): (?P<kind>catastrophic error|error|"
                         r"warning)(?: #[\w-]+)?: (?P<message>[^\n]*)$"
                         # g++ / clang++ (the CPU backend): file:line:column: kind: message
                         r"|^(?P<gfile>[^\n:]+):(?P<gline>\d+):(?:\d+:)? (?P<gkind>fatal error|error|"
                         r"warning): (?P<gmessage>[^\n]*)$", re.M)


def compile_diagnostics(log: str) -> list:
    """NVRTC's (or CuPy's, or the CPU backend's g++ / clang++) compiler log as a list of dicts:
    file, line, kind ("error", "warning", "catastrophic error" or g++'s "fatal error"), message
    and context (the source line and caret that follow it, as the compiler printed them)."""
    found = list(_DIAGNOSTIC.finditer(log))
    out = []
    for n, m in enumerate(found):
        end = found[n + 1].start() if n + 1 < len(found) else len(log)
        context = []
        for text in log[m.end():end].split("\n")[1:]:
            if not text.strip() or re.match(r"\d+ errors? detected|Remark:", text.strip()):
                break
            if re.search(r": (In (member )?function|In instantiation of|note: |At global scope)",
                         text) or text.startswith("In file included from"):
                break  # g++'s lines about the next diagnostic
            context.append(text.rstrip())
        g = m["gfile"] is not None
        out.append({"file": m["gfile" if g else "file"], "line": int(m["gline" if g else "line"]),
                    "kind": m["gkind" if g else "kind"],
                    "message": m["gmessage" if g else "message"].strip(), "context": context})
    return out
