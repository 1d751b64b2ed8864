"""Capture a zero-argument step function over static buffers as one CUDA graph, and replay it.

The stable-fast recipe: warm the function up on a side stream (so lazy initialisation, autotuning and
allocator growth happen outside the capture), restore the buffers it mutated, capture, then replay. Every
warm-up call starts from the restored buffers, so each reads the first row of the step table: a one-step
table has one row, and a second call that went on to row 1 would read past it (on CUDA a device-side
assert that poisons the context). An error in the warm-up is an error of the step itself and raises. A
failure of the capture alone is reported with a warning and in the result's ``fallback``; the caller then
runs the step eagerly and says so (Pipeline: ``PipelineOutput.cuda_graph``), so that a benchmark never
measures eager mode unawares.

The CUDA calls sit in one object (``GraphCalls``), so the whole protocol runs on the CPU in the tests with
only those calls stood in (tests/engine/test_cuda_graph.py): a step that breaks under it breaks there too.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

WARMUP_CALLS = 2


class GraphCalls:
    """The CUDA calls of the capture protocol: a side stream, a capture, a synchronize."""

    device_type = "cuda"  # the device whose tensors the captured step may touch

    @contextlib.contextmanager
    def side_stream(self) -> Iterator[None]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            yield
        torch.cuda.current_stream().wait_stream(side)

    def capture(self, step: Callable[[], None]) -> Callable[[], None]:
        """Record ``step`` as a CUDA graph (its kernels are recorded, not run); returns the graph's replay."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        return graph.replay

    def synchronize(self) -> None:
        torch.cuda.synchronize()


CUDA_GRAPHS = GraphCalls()


@dataclass(frozen=True)
class Capture:
    """``replay`` runs the captured graph; None, with the reason in ``fallback``, when capture failed."""

    replay: Callable[[], None] | None
    fallback: str | None = None

    @property
    def status(self) -> str:
        """PipelineOutput.cuda_graph's value: "replayed", or "fallback: <why>"."""
        return "replayed" if self.replay is not None else f"fallback: {self.fallback}"


def capture_step(
    step: Callable[[], None], buffers: list[torch.Tensor], calls: GraphCalls = CUDA_GRAPHS
) -> Capture:
    """Capture ``step`` as a CUDA graph. ``buffers`` are the tensors ``step`` mutates; they are restored
    after every warm-up call and after the capture. Errors of ``step`` during the warm-up raise."""
    saved = [b.clone() for b in buffers]
    with calls.side_stream():
        for _ in range(WARMUP_CALLS):
            step()
            _restore(buffers, saved)  # the next call (and the capture) starts at the first step again
    try:
        replay = calls.capture(step)
    except Exception as exc:  # the step ran eagerly above, so only its capture failed: run it eagerly
        calls.synchronize()
        _restore(buffers, saved)
        reason = f"{type(exc).__name__}: {exc}"
        warnings.warn(f"CUDA graph capture failed, sampling eagerly: {reason}", stacklevel=3)
        return Capture(None, reason)
    _restore(buffers, saved)
    return Capture(replay)


def _restore(buffers: list[torch.Tensor], saved: list[torch.Tensor]) -> None:
    for buffer, value in zip(buffers, saved, strict=True):
        buffer.copy_(value)
