"""`flashlab check`: compile a student's own .cu file for one of the kernels with exercises (the
registry's) and hold it to the step-through tile by tile: on a GPU, or without one on the CPU
backend (flashlab.cpu), after an NVRTC compile for sm_80 where NVRTC is installed."""
from __future__ import annotations

import re
import sys
from pathlib import Path

from .. import registry
from .common import UsageError
from .trace import _run_trace, backend_for


def _variants() -> tuple:
    """(file stem, kernel, variant) for every kernels/ source (naive, fa1, fa2, tc90, tc): the
    registry's variants, each named in messages by its file."""
    return tuple((Path(v.source).stem, n, vname) for n in registry.names()
                 for vname, v in registry.get(n).variants.items())


def _cmd_check(args) -> int:
    """Compile a user's .cu file for --algorithm and compare it tile by tile with the
    step-through, on the GPU or the CPU backend. Exit 0: every step matched; 1: it does not
    compile, lacks the algorithm's kernels, faults or diverges; 2: a bad argument."""
    from ..launch import sources
    from ..launch.errors import KernelCompileError

    alg, path = args.algorithm, Path(args.file)
    direction = "backward" if args.backward else "forward"
    if path.is_dir():
        inside = sorted(f.name for f in path.glob("*.cu"))
        raise UsageError(f"flashlab check: {args.file} is a directory; give one .cu file"
                         + (f" in it ({', '.join(inside[:4])}{', ...' if len(inside) > 4 else ''})"
                            if inside else ""))
    if not path.exists():
        raise UsageError(f"flashlab check: {args.file}: no such file")
    if path.suffix != ".cu":
        raise UsageError(f"flashlab check: {args.file} is not a .cu file; give the CUDA C file "
                         f"that defines your kernels, e.g. my_{alg}.cu")
    try:
        src = sources.user_file(path, alg)
    except UnicodeDecodeError:
        raise UsageError(f"flashlab check: {args.file} (or a header it includes) is not a UTF-8 "
                         "text file") from None
    except OSError as e:
        raise EnvironmentError(f"flashlab check: cannot read {args.file}: {e}") from None
    name = path.name

    # the kernels the launcher looks up by name, before the compiler sees them missing
    wanted = sources.required_kernels(alg)
    absent = sources.missing_kernels(alg, src.text)
    if len(absent) == len(wanted):
        msg = f"{name} defines none of {alg}'s kernels ({', '.join(wanted)})"
        alike = []
        for other, kernel, variant in _variants():
            has = [k for k in sources.required_kernels(kernel, None, variant)
                   if k not in sources.missing_kernels(kernel, src.text, None, variant)]
            if other != alg and has:
                alike.append((len(has), other, has))
        if alike:
            _, other, has = max(alike, key=lambda t: t[0])
            msg += f"; it looks like {other} (defines {', '.join(has)})"
            choices = registry.with_exercises()
            msg += (f": try --algorithm {other}" if other in choices else
                    f", which flashlab check does not take (--algorithm {' or '.join(choices)})")
        else:
            msg += f"; define them as kernels/{alg}.cu does, with the same signatures"
        print(f"error: {msg}", file=sys.stderr)
        return 1
    lacking = sources.missing_kernels(alg, src.text, direction)
    if lacking:
        have = [k for k in wanted if k not in absent]
        other = "forward" if direction == "backward" else "backward"
        print(f"error: {name} does not define {', '.join(lacking)}, which the {alg} {direction} "
              f"pass launches (it defines {', '.join(have)}: check the {other} pass with "
              f"{'no --backward' if other == 'forward' else '--backward'})", file=sys.stderr)
        return 1

    backend = backend_for(alg, args.backend)
    if backend == "gpu":
        try:
            return _run_trace(args, alg, source=path, backend="gpu")
        except KernelCompileError as e:
            return _compile_failed(name, alg, str(e), "CuPy (NVRTC)")
    rc = _nvrtc_check(src, alg, name, wanted, absent)
    if rc:
        return rc
    from ..cpu.build import CpuUnsupported

    try:
        return _run_trace(args, alg, source=path, backend="cpu")
    except CpuUnsupported as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KernelCompileError as e:
        return _compile_failed(name, alg, getattr(e, "log", str(e)), "g++ for the CPU backend")


def _nvrtc_check(src, alg, name, wanted, absent) -> int:
    """Without a GPU, compile for one too (NVRTC, sm_80) where NVRTC is installed, so a file
    that g++ takes but a GPU's compiler would not is caught here: 1 on errors, else 0."""
    from ..launch import compiler, plans, sources
    from ..launch.errors import KernelCompileError

    # the instantiations of the templates the file defines (a forward-only file compiles)
    names = tuple(n for n in plans.instantiations(alg) if n.split("<")[0] not in absent)
    try:
        log = compiler.nvrtc_compile(src, "sm_80", name_expressions=names, kernel=alg)
    except ImportError as e:
        print(f"note: {name} was not compiled for a GPU: {e}")
        return 0
    except KernelCompileError as e:
        return _compile_failed(name, alg, getattr(e, "log", str(e)), "NVRTC for sm_80")
    warnings = [d for d in sources.compile_diagnostics(log) if d["kind"] == "warning"]
    defined = ", ".join(k for k in wanted if k not in absent)
    print(f"{name} compiles with NVRTC for sm_80 ({defined})"
          + (f", with {len(warnings)} warning{'s' * (len(warnings) != 1)}:" if warnings else
             ":\n" + log if log else "."))
    for d in warnings[:3]:
        print(f"{d['file']}:{d['line']}: warning: {d['message']}")
        for line in d["context"]:
            print(line)
    if len(warnings) > 3:
        print(f"... {len(warnings) - 3} more warnings")
    if absent:
        print(f"note: {name} does not define {', '.join(absent)}, so the pass that launches "
              f"{'it' if len(absent) == 1 else 'them'} cannot be checked")
    return 0


def _compile_failed(name, alg, text, where):
    """The compiler's first few errors in `name`, file:line first, then how many more."""
    from ..launch import sources

    diags = sources.compile_diagnostics(text)
    errors = [d for d in diags if d["kind"] != "warning" and d["file"] != "__nv_name_map"]
    # the launcher's instantiations the file's templates cannot take, as NVRTC reports them
    # (in its name map, twice each): said once, with our template's parameters
    unmatched = list(dict.fromkeys(
        re.sub(r"\s+", "", c.split("nv_mangled_name", 1)[1]).replace(",", ", ")
        for d in diags if d["file"] == "__nv_name_map" for c in d["context"][:1]
        if "nv_mangled_name" in c))
    warnings = sum(d["kind"] == "warning" for d in diags)
    count = len(errors) + len(unmatched)
    print(f"error: {name} failed to compile with {where}"
          + (f": {count} error{'s' * (count != 1)}" if count else ""), file=sys.stderr)
    if not count:  # a log in no format we know: show it whole
        print(text, file=sys.stderr)
        return 1
    shown = 3
    for d in errors[:shown]:
        print(f"{d['file']}:{d['line']}: {d['kind']}: {d['message']}", file=sys.stderr)
        for line in d["context"]:
            print(line, file=sys.stderr)
    if unmatched:
        templates = list(dict.fromkeys(u.split("<")[0] for u in unmatched))
        ours = sources.ours(alg).text
        params = [m[1] for t in templates for m in [re.search(
            rf"template\s*<([^>]*)>\s*__global__[^;{{]*?\b{t}\s*\(", ours)] if m]
        print(f"{name}: error: {', '.join(templates)} cannot be instantiated as the {alg} "
              f"launcher does ({unmatched[0]}"
              + (f" and {len(unmatched) - 1} more" if len(unmatched) > 1 else "") + "): keep "
              + (f"the template parameters <{'>, <'.join(dict.fromkeys(params))}> "
                 if params else "the template parameters ")
              + f"of kernels/{alg}.cu", file=sys.stderr)
    more = len(errors) - shown
    also = f"{warnings} warning{'s' * (warnings != 1)}" if warnings else ""
    if more > 0:
        print(f"... {more} more error{'s' * (more != 1)}" + (f" and {also}" if also else ""),
              file=sys.stderr)
    elif also:
        print(f"({also} not shown)", file=sys.stderr)
    return 1
