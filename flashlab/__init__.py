"""flashlab: learn FlashAttention by running it.

CUDA C kernels (kernels/, loaded with cupy.RawModule) each sit beside a NumPy step-through of the
same loops (flashlab.reference), so every tile update can be compared (flashlab.trace).
Importing flashlab never needs CuPy or a GPU.
"""
from .api import available_kernels, flash_attention, flash_attention_backward
from .hbm import MemoryCounter, block_sizes
from .reference import (fa1_backward, fa1_forward, fa2_backward, fa2_forward, naive_attention,
                        naive_attention_backward)

try:  # the installed distribution's version (pyproject.toml's); the literal for a bare checkout
    from importlib.metadata import PackageNotFoundError as _NotFound
    from importlib.metadata import version as _version

    __version__ = _version("flashlab")
except _NotFound:  # pragma: no cover - running from a checkout that was never pip-installed
    __version__ = "0.1.0"  # keep in step with pyproject.toml (tests/test_cli_bench.py checks)
del _NotFound, _version

__all__ = [
    "flash_attention", "flash_attention_backward", "available_kernels",
    "MemoryCounter", "block_sizes",
    "naive_attention", "naive_attention_backward",
    "fa1_forward", "fa1_backward", "fa2_forward", "fa2_backward",
]
