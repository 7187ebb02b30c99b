"""flashlab: learn FlashAttention by running it.

CUDA C kernels (kernels/, loaded with cupy.RawModule) each sit beside a NumPy step-through of the
same loops (flashlab.reference), so every tile update can be compared (flashlab.trace).
Importing flashlab never needs CuPy or a GPU.
"""
from .api import available_kernels, flash_attention, flash_attention_backward
from .hbm import MemoryCounter, block_sizes
from .reference import (fa1_backward, fa1_forward, fa2_backward, fa2_forward, naive_attention,
                        naive_attention_backward)

__version__ = "0.1.0"

__all__ = [
    "flash_attention", "flash_attention_backward", "available_kernels",
    "MemoryCounter", "block_sizes",
    "naive_attention", "naive_attention_backward",
    "fa1_forward", "fa1_backward", "fa2_forward", "fa2_backward",
]
