"""Run one of fastddpm's schedulers and diffusers' class of the same name side by side over a full loop."""

import inspect

import pytest
import torch

import fastddpm.schedulers as ours

# module-level skip where diffusers is absent (the GPU image), not a collection error
diffusers = pytest.importorskip("diffusers")

SHAPE = (3, 3, 5, 7)  # odd batch, H != W; 3 channels (diffusers' learned-variance split keeps 3)


def dummy_model(x: torch.Tensor, t) -> torch.Tensor:
    """A deterministic stand-in for a U-Net, smooth in x and (possibly fractional) t, bounded."""
    return torch.sin(0.7 * x + float(t) / 97.0) * 1.3


def ids(config: dict) -> str:
    """A parametrize id for a config: its fields, or "default"."""
    return ",".join(f"{k}={v}" for k, v in config.items()) or "default"


def run(scheduler, steps: int, seed: int = 0, model=dummy_model):
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=generator) * scheduler.init_noise_sigma
    trace = []
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        kwargs = {"generator": generator} if takes_generator else {}
        x = scheduler.step(model(model_input, t), t, x, **kwargs).prev_sample
        trace.append((float(t), x))
    return trace


def max_diff(name: str, config: dict, steps: int, seed: int = 0) -> float:
    """Largest |ours - diffusers| over every step's x; asserts identical timesteps and sigmas."""
    a, b = getattr(ours, name)(**config), getattr(diffusers, name)(**config)
    trace_a, trace_b = run(a, steps, seed), run(b, steps, seed)
    # The schedules are built with diffusers' own numpy / torch expressions, in its order (float32 train
    # sigmas, np.interp, the spacings' float64 numpy): the same computation, hence exact.
    assert torch.equal(a.timesteps, b.timesteps), f"{name} {config}: timesteps differ"
    if hasattr(b, "sigmas"):
        assert torch.equal(a.sigmas.float(), b.sigmas.float()), f"{name} {config}: sigmas differ"
    assert [t for t, _ in trace_a] == [t for t, _ in trace_b]
    return max(float((xa - xb).abs().max()) for (_, xa), (_, xb) in zip(trace_a, trace_b, strict=True))
