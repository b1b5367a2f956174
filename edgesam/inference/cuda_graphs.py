"""Replay a torch function from CUDA graphs captured once per input shape, with a bounded number of graphs.

A graph launches every kernel of a call in one go, which is what small per-call work (the split decoder at a
few prompts, the encoder at batch 1) needs on a fast GPU, where launch overhead exceeds the arithmetic.
Shapes are static inside a graph, so callers pad to a few bucket sizes (:func:`bucket_for`) and slice.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

Key = tuple[tuple[tuple[int, ...], torch.dtype], ...]


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= ``n``, or the largest bucket when ``n`` exceeds them all (callers then split the
    work into chunks of that size). ``buckets`` ascending, positive."""
    if n < 1:
        raise ValueError(f"need n >= 1, got {n}")
    for b in buckets:
        if b >= n:
            return b
    return buckets[-1]


def check_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
    """``buckets`` as a strictly ascending tuple of positive ints, or a ValueError."""
    out = tuple(int(b) for b in buckets)
    if not out or any(b < 1 for b in out) or any(a >= b for a, b in zip(out, out[1:])):
        raise ValueError(f"buckets must be positive and strictly ascending, got {list(buckets)}")
    return out


@dataclass
class _Graph:
    graph: "torch.cuda.CUDAGraph"
    inputs: tuple[torch.Tensor, ...]
    outputs: tuple[torch.Tensor, ...]


class CudaGraphRunner:
    """``fn(*tensors) -> tensor | tuple of tensors`` replayed from CUDA graphs, one per input shape/dtype.

    The first call with a new shape warms ``fn`` up on a side stream (so ``torch.compile`` and cuDNN pick their
    kernels outside the capture), then captures it. At most ``max_graphs`` graphs are kept (least recently used
    first out); all share one memory pool, which is safe because replays run one after another on the caller's
    stream. Outputs are cloned out of the graph's static buffers, so a later replay never overwrites them.
    """

    def __init__(self, fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]], max_graphs: int = 16,
                 warmup: int = 2) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA graphs need a CUDA device, and torch.cuda.is_available() is False")
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.fn = fn
        self.max_graphs = max_graphs
        self.warmup = warmup
        self.pool = torch.cuda.graph_pool_handle()
        self._graphs: OrderedDict[Key, _Graph] = OrderedDict()

    def __len__(self) -> int:
        return len(self._graphs)

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key: Key = tuple((tuple(t.shape), t.dtype) for t in inputs)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(key, inputs)
        else:
            self._graphs.move_to_end(key)
        for static, x in zip(entry.inputs, inputs):
            static.copy_(x)
        entry.graph.replay()
        return tuple(o.clone() for o in entry.outputs)

    def _capture(self, key: Key, inputs: Sequence[torch.Tensor]) -> _Graph:
        while len(self._graphs) >= self.max_graphs:
            self._graphs.popitem(last=False)
        static = tuple(x.clone() for x in inputs)  # keeps each input's memory format (channels_last)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self.fn(*static)
        outputs = out if isinstance(out, tuple) else (out,)
        entry = _Graph(graph, static, tuple(outputs))
        self._graphs[key] = entry
        return entry
