"""Capture a zero-argument step function over static buffers as one CUDA graph, and replay it.

The stable-fast recipe: warm the function up on a side stream (so lazy initialisation, autotuning and
allocator growth happen outside the capture), restore the buffers it mutated, capture, then replay. A
capture failure is reported with a warning and the caller falls back to eager execution.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

WARMUP_CALLS = 2


def capture_step(step: Callable[[], None], buffers: list[torch.Tensor]) -> Callable[[], None] | None:
    """A function replaying ``step`` as a CUDA graph, or None (with a warning) when capture fails.

    ``buffers`` are the tensors ``step`` mutates; they are restored after the warm-up calls.
    """
    saved = [b.clone() for b in buffers]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    try:
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                step()
        torch.cuda.current_stream().wait_stream(side)
        for buffer, value in zip(buffers, saved, strict=True):
            buffer.copy_(value)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
    except Exception as exc:  # any capture failure: run eagerly instead of failing the sampling run
        torch.cuda.synchronize()
        for buffer, value in zip(buffers, saved, strict=True):
            buffer.copy_(value)
        warnings.warn(
            f"CUDA graph capture failed, sampling eagerly: {type(exc).__name__}: {exc}", stacklevel=3
        )
        return None
    for buffer, value in zip(buffers, saved, strict=True):
        buffer.copy_(value)
    return graph.replay
