"""Sampler names (the pipeline's ``sampler=`` and the CLI's ``--sampler``) and the diffusers scheduler
config each one stands for: ``make(name, config)`` is ``Class.from_config(config, **overrides)``."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import fastddpm.schedulers as schedulers

# name: (scheduler class, config overrides on top of the checkpoint's scheduler config)
SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddpm": ("DDPMScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpm++3m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 3}),
    "dpm++2m-sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
}
NAMES = tuple(SAMPLERS)


def scheduler_class(name: str) -> type:
    if name not in SAMPLERS:
        raise ValueError(f"sampler {name!r} is not one of {', '.join(NAMES)}")
    class_name = SAMPLERS[name][0]
    if not hasattr(schedulers, class_name):
        raise ValueError(f"sampler {name!r} ({class_name}) is not available in this fastddpm build")
    return getattr(schedulers, class_name)


def has_karras(name: str) -> bool:
    """Whether the sampler's scheduler has Karras sigmas (use_karras_sigmas)."""
    return "use_karras_sigmas" in inspect.signature(scheduler_class(name).__init__).parameters


def make(name: str, config: Mapping[str, Any], karras: bool = False):
    """The scheduler ``name`` stands for, built from a (checkpoint's) scheduler config."""
    cls = scheduler_class(name)
    overrides = dict(SAMPLERS[name][1])
    if karras:
        if not has_karras(name):
            raise ValueError(
                f"sampler {name!r} has no Karras sigmas (karras=True needs one of: {karras_names()})"
            )
        overrides["use_karras_sigmas"] = True
    return cls.from_config(dict(config), **overrides)


def karras_names() -> str:
    return ", ".join(n for n in NAMES if hasattr(schedulers, SAMPLERS[n][0]) and has_karras(n))
