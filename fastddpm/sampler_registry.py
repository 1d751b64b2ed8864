"""The sampler names: one line each, and everything else is derived from here.

``pipe(sampler=NAME)``, the CLI's ``--sampler`` choices, the package's scheduler exports and the README's
sampler table (checked by a test) all come from ``SAMPLERS``. A name stands for a scheduler class (in the
module of fastddpm/schedulers/ that defines it) and the config overrides that set the variant on top of the
checkpoint's scheduler config. Adding a sampler is its module in schedulers/ plus one line here.

This module imports nothing, so ``fastddpm --help`` lists the names without importing torch.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class SamplerEntry(NamedTuple):
    module: str  # fastddpm.schedulers.<module> defines the class
    class_name: str
    overrides: dict[str, Any]  # config keys on top of the checkpoint's scheduler config


SAMPLERS: dict[str, SamplerEntry] = {
    "ddpm": SamplerEntry("ddpm", "DDPMScheduler", {}),
    "ddim": SamplerEntry("ddim", "DDIMScheduler", {}),
    "pndm": SamplerEntry("pndm", "PNDMScheduler", {}),
    "dpm++2m": SamplerEntry("dpm_solver", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpm++3m": SamplerEntry("dpm_solver", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 3}),
    "dpm++2m-sde": SamplerEntry("dpm_solver", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "dpm++2s": SamplerEntry("dpm_solver_singlestep", "DPMSolverSinglestepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpm++3s": SamplerEntry("dpm_solver_singlestep", "DPMSolverSinglestepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 3}),
    "dpm++2s-sde": SamplerEntry("dpm_solver_singlestep", "DPMSolverSinglestepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "unipc": SamplerEntry("unipc", "UniPCMultistepScheduler", {}),
    "euler": SamplerEntry("euler", "EulerDiscreteScheduler", {}),
    "euler-a": SamplerEntry("euler", "EulerAncestralDiscreteScheduler", {}),
    "heun": SamplerEntry("heun", "HeunDiscreteScheduler", {}),
    "kdpm2": SamplerEntry("kdpm2", "KDPM2DiscreteScheduler", {}),
    "kdpm2-a": SamplerEntry("kdpm2", "KDPM2AncestralDiscreteScheduler", {}),
    "lms": SamplerEntry("lms", "LMSDiscreteScheduler", {}),
    "dpm-sde": SamplerEntry("dpm_sde", "DPMSolverSDEScheduler", {}),
    "deis": SamplerEntry("deis", "DEISMultistepScheduler", {}),
    "sa-solver": SamplerEntry("sa_solver", "SASolverScheduler", {}),
}  # fmt: skip
NAMES = tuple(SAMPLERS)

# scheduler class -> its module, for the lazy exports of fastddpm and fastddpm.schedulers
SCHEDULER_MODULES: dict[str, str] = {entry.class_name: entry.module for entry in SAMPLERS.values()}
