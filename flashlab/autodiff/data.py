"""Text to training batches: a character tokenizer and random windows.

The text shipped with flashlab is Shakespeare's Sonnets (1609; public domain), about 96 KB:
see flashlab/data/README.md for where the file comes from.
"""
from __future__ import annotations

from importlib.resources import files

import numpy as np

DEFAULT_TEXT = "sonnets.txt"


def load_text(name: str = DEFAULT_TEXT) -> str:
    """A text shipped in flashlab/data (package data)."""
    return files("flashlab.data").joinpath(name).read_text(encoding="utf-8")


class CharTokenizer:
    """One token per distinct character of the text, numbered in sorted order."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        unknown = sorted(set(text) - set(self.index))
        if unknown:
            raise ValueError(f"characters {''.join(unknown)!r} are not in the tokenizer's "
                             f"vocabulary of {self.vocab_size}")
        return np.array([self.index[c] for c in text], dtype=np.int64)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in np.asarray(ids).reshape(-1))


def split(ids: np.ndarray, val_fraction: float = 0.1):
    """The first 90% for training, the rest held out."""
    n = int(len(ids) * (1 - val_fraction))
    return ids[:n], ids[n:]


def get_batch(ids: np.ndarray, batch: int, seq: int, rng: np.random.Generator):
    """`batch` random windows of seq + 1 tokens: inputs x (B, N) and targets y = x shifted by one
    (B, N), so position n learns to predict token n + 1."""
    if len(ids) <= seq:
        raise ValueError(f"the text has {len(ids)} tokens; a window needs seq + 1 = {seq + 1}")
    starts = rng.integers(0, len(ids) - seq, size=batch)  # (B,)
    windows = np.stack([ids[s:s + seq + 1] for s in starts])  # (B, N + 1)
    return windows[:, :-1], windows[:, 1:]
