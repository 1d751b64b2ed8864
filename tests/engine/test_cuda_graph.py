"""engine/cuda_graph.capture_step's error handling, on the CPU with stand-ins for torch.cuda's streams and
graphs: a warm-up error raises; a capture failure restores the buffers and says why it fell back."""

import contextlib

import pytest
import torch

from fastddpm.engine import cuda_graph
from tests.optional_packages import skip_without_torchsde


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


class CpuGraphCalls(cuda_graph.GraphCalls):
    """The capture protocol's CUDA calls stood in on the CPU: no side stream, and a "capture" that runs the
    step's Python once (as a real capture does, recording its kernels) and replays by running it again."""

    device_type = "cpu"

    def side_stream(self):
        return contextlib.nullcontext()

    def capture(self, step):
        step()
        return step

    def synchronize(self):
        pass


def _plans():
    from fastddpm.sampler_registry import NAMES

    for name in NAMES:
        # PNDM's Runge-Kutta warm-up needs 4 steps; the others take one-step schedules too
        for steps in (4, 5) if name == "pndm" else (1, 3):
            yield name, steps


@pytest.fixture(scope="module")
def digits():
    """The built-in model without clip_sample, which Heun would inherit and cannot run as a linear table."""
    import fastddpm

    builtin = fastddpm.load()
    return fastddpm.Pipeline(builtin.unet, {**builtin.scheduler_config, "clip_sample": False})


@pytest.mark.parametrize("noise", ["philox", "torch"])
@pytest.mark.parametrize("name, steps", list(_plans()))
def test_the_capture_protocol_runs_every_plan_and_replays_what_eager_computes(digits, name, steps, noise):
    """Warm-up, restore, capture and replay over every sampler's plan, one-step schedules included: a read
    past the step table (the second warm-up call of a one-step plan, before each call restored the step
    index) raises here, as it would assert on a GPU; and the replayed loop computes the eager images."""
    skip_without_torchsde(name, noise)
    digits.engine.graph_calls = CpuGraphCalls()
    try:
        run = dict(
            batch_size=2, num_inference_steps=steps, sampler=name, seed=5, noise=noise, output_type="pt"
        )
        torch.manual_seed(7)  # dpm-sde's Brownian tree (noise="torch") takes its seed from the global RNG
        graphed = digits(use_cuda_graph=True, progress=False, **{**run, "generator": _generator(noise)})
        torch.manual_seed(7)
        eager = digits(use_cuda_graph=False, progress=False, **{**run, "generator": _generator(noise)})
    finally:
        digits.engine.graph_calls = cuda_graph.CUDA_GRAPHS
    assert graphed.cuda_graph == "replayed"
    assert torch.equal(graphed.images, eager.images)  # the same computation on the same CPU


def test_the_capture_protocol_runs_adm_plans_with_one_step(tmp_path):
    """ADM's own ddpm / ddim plans (respaced to one step, learned sigmas, class labels) under the protocol."""
    import fastddpm
    from fastddpm.checkpoints.adm_flags import parse_flag_string
    from tests.adm_checkpoint import reference_model, save_checkpoint
    from tests.adm_families import FAMILIES

    text, size = FAMILIES["improved_imagenet64"]
    model, _, _, size = reference_model("improved_imagenet64")
    pipe = fastddpm.load(
        save_checkpoint(model, tmp_path / "adm.pt"), sample_size=size, **parse_flag_string(text)
    )
    pipe.engine.graph_calls = CpuGraphCalls()
    for sampler in ("ddpm", "ddim"):
        run = dict(
            batch_size=2, sampler=sampler, timestep_respacing="1", seed=1, noise="philox", output_type="pt"
        )
        graphed = pipe(use_cuda_graph=True, progress=False, **run)
        assert graphed.cuda_graph == "replayed"
        assert torch.equal(graphed.images, pipe(use_cuda_graph=False, progress=False, **run).images)


def _generator(noise):
    return torch.Generator().manual_seed(3) if noise == "torch" else None
