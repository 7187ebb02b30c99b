"""The training loop behind `flashlab train`: a character-level decoder on the Sonnets.

    model = Decoder(vocab, seq, dim, layers, heads, attention="flash" | "standard")
    for each step: x, y = random windows; loss = model.loss(x, y); loss.backward(); adam.step()

On the CPU everything is float64 NumPy and the attention runs flashlab's NumPy reference of
FlashAttention-2 (forward F2, backward G2); on the GPU everything is float32 CuPy and the
attention runs flashlab's CUDA kernels. The same seed gives the same initial model and the same
batches for either attention, so the two loss curves may differ only by rounding.

Memory: on the GPU, the CuPy memory pool's size at the end (the pool keeps every block it has
allocated, so this is its high-water mark; an upper bound on what was in use at once). On the
CPU, the peak of tracemalloc, which counts NumPy's buffers (and Python objects).
"""
from __future__ import annotations

import time
import tracemalloc
from dataclasses import dataclass, field

import numpy as np

from . import data as data_mod
from .nn import Adam, Decoder
from .tensor import no_grad


@dataclass
class TrainConfig:
    attention: str = "flash"
    steps: int = 100
    batch: int = 8
    seq: int = 64
    layers: int = 2
    heads: int = 4
    dim: int = 64
    lr: float = 3e-3
    seed: int = 0
    device: str = "cpu"
    sample: int = 200
    dropout: float = 0.0
    attention_dtype: str | None = None  # "bfloat16" / "float16": the flash op in 16 bits

    @property
    def dtype(self):
        return np.float32 if self.device.startswith("gpu") else np.float64


@dataclass
class TrainResult:
    config: TrainConfig
    losses: list = field(default_factory=list)
    step_seconds: list = field(default_factory=list)
    peak_memory: int | None = None  # bytes
    memory_what: str = ""
    sample: str = ""
    parameters: int = 0

    @property
    def seconds_per_step(self) -> float:
        """Mean wall time of a step, leaving out the first (kernel compiles, warm-up)."""
        t = self.step_seconds[1:] or self.step_seconds
        return float(np.mean(t)) if t else float("nan")


def _sync(device: str):
    if device.startswith("gpu"):
        import cupy

        cupy.cuda.get_current_stream().synchronize()


class _Memory:
    """Peak memory over a `with` block: the CuPy pool on GPU, tracemalloc on CPU."""

    def __init__(self, device: str):
        self.device, self.started, self.peak = device, False, None

    def __enter__(self):
        if self.device.startswith("gpu"):
            import cupy

            cupy.get_default_memory_pool().free_all_blocks()
            self.what = "CuPy memory pool high-water mark"
        else:
            self.what = "host memory, tracemalloc peak, NumPy buffers included"
            if not tracemalloc.is_tracing():
                tracemalloc.start()
                self.started = True
            tracemalloc.reset_peak()
        return self

    def __exit__(self, *exc):
        if self.device.startswith("gpu"):
            import cupy

            self.peak = int(cupy.get_default_memory_pool().total_bytes())
        else:
            self.peak = int(tracemalloc.get_traced_memory()[1])
            if self.started:
                tracemalloc.stop()
        return False


def generate(model: Decoder, tok: data_mod.CharTokenizer, n: int, prompt: str = "\n",
             temperature: float = 0.8, seed: int = 0) -> str:
    """n characters sampled one at a time, each from softmax(logits / temperature) at the last
    position, with the context cropped to the model's `seq` positions."""
    rng = np.random.default_rng(seed)
    ids = list(tok.encode(prompt))
    model.eval()
    with no_grad():
        for _ in range(n):
            context = np.array(ids[-model.seq:], dtype=np.int64)[None, :]  # (1, N)
            logits = model(context).numpy()[0, -1] / temperature  # (V,)
            p = np.exp(logits - logits.max())
            ids.append(int(rng.choice(len(p), p=p / p.sum())))
    model.train()
    return tok.decode(ids[len(prompt):])


def train(config: TrainConfig, text: str | None = None, on_step=None) -> TrainResult:
    """Train a Decoder for config.steps steps; on_step(step, loss) is called after each.

    Returns the losses, the time of every step, peak memory and a sample of generated text.
    """
    text = data_mod.load_text() if text is None else text
    tok = data_mod.CharTokenizer(text)
    train_ids, _ = data_mod.split(tok.encode(text))
    batches = np.random.default_rng(config.seed)  # the same windows for flash and standard
    result = TrainResult(config)
    with _Memory(config.device) as mem:
        model = Decoder(tok.vocab_size, config.seq, config.dim, config.layers, config.heads,
                        config.attention, config.dropout, config.seed, config.device,
                        config.dtype, attention_dtype=config.attention_dtype)
        result.parameters = sum(p.size for p in model.parameters())
        opt = Adam(model.parameters(), lr=config.lr)
        for step in range(1, config.steps + 1):
            x, y = data_mod.get_batch(train_ids, config.batch, config.seq, batches)  # (B, N)
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = model.loss(x, y)  # forward: one number
            loss.backward()  # backward through the whole graph, attention included
            opt.step()
            value = loss.item()  # waits for the GPU
            _sync(config.device)
            result.step_seconds.append(time.perf_counter() - t0)
            result.losses.append(value)
            if on_step is not None:
                on_step(step, value)
    result.peak_memory, result.memory_what = mem.peak, mem.what
    if config.sample > 0:
        result.sample = generate(model, tok, config.sample, seed=config.seed)
    return result
