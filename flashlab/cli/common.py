"""What every command shares: the usage error (one line, exit code 2), the parser that raises it,
the argument types, and the progress line on a terminal's stderr."""
from __future__ import annotations

import argparse
import sys


class UsageError(Exception):
    """A mistake in the command line: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def _int_list(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        mult = 1
        if part.endswith("k"):
            part, mult = part[:-1], 1024
        try:
            value = int(part) * mult
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers like 512,1k,2k; got {text!r}")
        if value < 1:
            raise argparse.ArgumentTypeError(f"values must be >= 1, got {value}")
        out.append(value)
    return out


def _ids(text):
    return [t.strip() for t in text.split(",") if t.strip()]


def _progress(msg):
    if sys.stderr.isatty():
        print(f"\r\033[K  running {msg} ...", end="", file=sys.stderr, flush=True)
