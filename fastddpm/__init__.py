"""fastddpm: fast, exact sampling from DDPM checkpoints.

    import fastddpm
    pipe = fastddpm.load("google/ddpm-cifar10-32")  # a folder, a .ckpt, a Hub id, or None: the built-in model
    images = pipe(batch_size=16, sampler="ddim", num_inference_steps=50, seed=0, noise="philox").images

The parts, top to bottom: pipeline.py (load, configure, call), engine/ (the sync-free, graphed sampling
loop), models/ (the U-Net), schedulers/ (diffusers-compatible schedulers), checkpoints/ (one reader per
format, the writer), ops/ (the fused ops, their torch reference and their backends), cli/ (the command
line). docs/architecture.md in the repository describes them.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Exported lazily (PEP 562): `fastddpm --help` and argument errors answer without importing torch.
_EXPORTS = {
    "DDIMScheduler": "schedulers",
    "DDPMScheduler": "schedulers",
    "PNDMScheduler": "schedulers",
    "UniPCMultistepScheduler": "schedulers",
    "DEISMultistepScheduler": "schedulers",
    "DPMSolverMultistepScheduler": "schedulers",
    "EulerAncestralDiscreteScheduler": "schedulers",
    "EulerDiscreteScheduler": "schedulers",
    "HeunDiscreteScheduler": "schedulers",
    "SchedulerOutput": "schedulers",
    "Pipeline": "pipeline",
    "PipelineOutput": "pipeline",
    "load": "pipeline",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastddpm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "UniPCMultistepScheduler",
    "DEISMultistepScheduler",
    "DPMSolverMultistepScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "Pipeline",
    "PipelineOutput",
    "SchedulerOutput",
    "__version__",
    "load",
]
