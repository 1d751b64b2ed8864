"""Capture a zero-argument step function over static buffers as one CUDA graph, and replay it.

The stable-fast recipe: warm the function up on a side stream (so lazy initialisation, autotuning and
allocator growth happen outside the capture), restore the buffers it mutated, capture, then replay.
An error in the warm-up is an error of the step itself and raises. A failure of the capture alone is
reported with a warning and in the result's ``fallback``; the caller then runs the step eagerly and says
so (Pipeline: ``PipelineOutput.cuda_graph``), so that a benchmark never measures eager mode unawares.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

WARMUP_CALLS = 2


@dataclass(frozen=True)
class Capture:
    """``replay`` runs the captured graph; None, with the reason in ``fallback``, when capture failed."""

    replay: Callable[[], None] | None
    fallback: str | None = None

    @property
    def status(self) -> str:
        """PipelineOutput.cuda_graph's value: "replayed", or "fallback: <why>"."""
        return "replayed" if self.replay is not None else f"fallback: {self.fallback}"


def capture_step(step: Callable[[], None], buffers: list[torch.Tensor]) -> Capture:
    """Capture ``step`` as a CUDA graph. ``buffers`` are the tensors ``step`` mutates; they are restored
    after the warm-up calls and the capture. Errors of ``step`` during the warm-up raise."""
    saved = [b.clone() for b in buffers]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP_CALLS):
            step()
    torch.cuda.current_stream().wait_stream(side)
    _restore(buffers, saved)
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
    except Exception as exc:  # the step ran eagerly above, so only its capture failed: run it eagerly
        torch.cuda.synchronize()
        _restore(buffers, saved)
        reason = f"{type(exc).__name__}: {exc}"
        warnings.warn(f"CUDA graph capture failed, sampling eagerly: {reason}", stacklevel=3)
        return Capture(None, reason)
    _restore(buffers, saved)
    return Capture(graph.replay)


def _restore(buffers: list[torch.Tensor], saved: list[torch.Tensor]) -> None:
    for buffer, value in zip(buffers, saved, strict=True):
        buffer.copy_(value)
