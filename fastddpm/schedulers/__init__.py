"""diffusers-compatible schedulers: one module per sampler family, each with the builder of its step-table
rows (the per-step coefficients the fused updates read, kernels/step_columns.py) where the engine runs it."""

from fastddpm.schedulers.base import SchedulerOutput
from fastddpm.schedulers.config_mixin import FrozenConfig
from fastddpm.schedulers.ddim import DDIMScheduler
from fastddpm.schedulers.ddpm import DDPMScheduler
from fastddpm.schedulers.deis import DEISMultistepScheduler
from fastddpm.schedulers.dpm_solver import DPMSolverMultistepScheduler
from fastddpm.schedulers.euler import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from fastddpm.schedulers.heun import HeunDiscreteScheduler
from fastddpm.schedulers.pndm import PNDMScheduler
from fastddpm.schedulers.unipc import UniPCMultistepScheduler

__all__ = [
    "DDIMScheduler",
    "DDPMScheduler",
    "DEISMultistepScheduler",
    "DPMSolverMultistepScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "FrozenConfig",
    "HeunDiscreteScheduler",
    "PNDMScheduler",
    "SchedulerOutput",
    "UniPCMultistepScheduler",
]
