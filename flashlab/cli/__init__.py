"""The `flashlab` command line. Errors are one line (exit code 2 for usage errors).

Modules: parser (every command's flags and help), common (UsageError, the parser class, argument
types, progress), and one per command group: listings (io, algorithms), benchmark (bench), trace,
check, course (assignment, grade), info, train. Each imports what its command needs when it runs,
so that starting the command line stays fast and needs no CuPy.
"""
from __future__ import annotations

import sys

from .common import UsageError, _Parser  # noqa: F401
from .parser import build_parser

__all__ = ["UsageError", "build_parser", "main"]


def main(argv=None) -> int:
    """Run one command; returns its exit code (0 ok, 1 failed or environment, 2 usage, 141 when
    stdout's reader went away, as `flashlab bench | head` does)."""
    try:
        try:
            return _main(argv)
        finally:  # inside the try, so a reader that left is seen here and not at interpreter exit
            sys.stdout.flush()
    except BrokenPipeError:
        # Stop quietly, as cat or seq do when killed by SIGPIPE; 141 = 128 + SIGPIPE is their
        # status too, so `set -o pipefail` scripts see flashlab as they see any other tool, and a
        # cut-short run does not claim the 0 of a complete one. stdout goes to devnull so that
        # Python's own flush at exit does not complain about the same pipe.
        try:
            import os

            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # no real file descriptor (captured)
            pass
        return 141


def _main(argv) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if getattr(args, "head_dim", 1) < 1:
            raise UsageError(f"flashlab {args.command}: --head-dim must be >= 1, got {args.head_dim}")
        return args.func(args)
    except BrokenPipeError:  # an OSError, but no error of the command: main() ends quietly
        raise
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (EnvironmentError, RuntimeError, ImportError, MemoryError) as e:
        # a missing package or device, a failed compile or launch: one line, what to do
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
