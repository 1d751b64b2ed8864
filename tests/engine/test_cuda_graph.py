"""engine/cuda_graph.capture_step's error handling, on the CPU with stand-ins for torch.cuda's streams and
graphs: a warm-up error raises; a capture failure restores the buffers and says why it fell back."""

import contextlib

import pytest
import torch

from fastddpm.engine import cuda_graph


class FakeStream:
    def wait_stream(self, other):
        pass


class FakeGraph:
    def replay(self):
        pass


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda's stream and graph API on the CPU; `capture_error` makes the capture itself fail."""
    state = {"capture_error": None}

    @contextlib.contextmanager
    def graph(g):
        if state["capture_error"] is not None:
            raise state["capture_error"]
        yield

    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: FakeStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    return state


def test_a_warmup_error_raises(fake_cuda):
    def step():
        raise ValueError("the step itself is broken")

    with pytest.raises(ValueError, match="the step itself is broken"):
        cuda_graph.capture_step(step, [torch.zeros(2)])


def test_a_capture_failure_falls_back_visibly_with_buffers_restored(fake_cuda):
    fake_cuda["capture_error"] = RuntimeError("operation not permitted when stream is capturing")
    x = torch.zeros(3)

    def step():
        x.add_(1)

    with pytest.warns(UserWarning, match="CUDA graph capture failed"):
        capture = cuda_graph.capture_step(step, [x])
    assert capture.replay is None
    assert capture.fallback == "RuntimeError: operation not permitted when stream is capturing"
    assert capture.status == "fallback: RuntimeError: operation not permitted when stream is capturing"
    assert torch.equal(x, torch.zeros(3))  # the two warm-up calls are undone


def test_a_successful_capture_replays(fake_cuda):
    x = torch.zeros(3)
    capture = cuda_graph.capture_step(lambda: x.add_(1), [x])
    assert capture.replay is not None and capture.fallback is None
    assert capture.status == "replayed"
    assert torch.equal(x, torch.zeros(3))
