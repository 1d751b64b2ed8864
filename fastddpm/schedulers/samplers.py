"""Sampler names to scheduler objects: ``make(name, config)`` is the registry's class built from a
checkpoint's scheduler config with the name's overrides (fastddpm/sampler_registry.py lists the names).

An ADM checkpoint's config describes OpenAI's process (``_class_name`` GaussianDiffusion): ddpm and ddim are
then their own loops over it (respacing, learned variances), and every other name is built from a
diffusers-style config of the same betas.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from fastddpm import sampler_registry
from fastddpm.sampler_registry import NAMES
from fastddpm.schedulers.gaussian_diffusion import GaussianDiffusion

# name -> (scheduler class name, config overrides): the registry's entries as diffusers' class and variant
SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    name: (entry.class_name, entry.overrides) for name, entry in sampler_registry.SAMPLERS.items()
}

__all__ = ["NAMES", "SAMPLERS", "has_karras", "karras_names", "make", "make_process", "scheduler_class"]


def scheduler_class(name: str) -> type:
    if name not in sampler_registry.SAMPLERS:
        raise ValueError(f"sampler {name!r} is not one of {', '.join(NAMES)}")
    entry = sampler_registry.SAMPLERS[name]
    return getattr(importlib.import_module(f"fastddpm.schedulers.{entry.module}"), entry.class_name)


def has_karras(name: str) -> bool:
    """Whether the sampler's scheduler has Karras sigmas (use_karras_sigmas)."""
    return "use_karras_sigmas" in inspect.signature(scheduler_class(name).__init__).parameters


def karras_names() -> str:
    return ", ".join(n for n in NAMES if has_karras(n))


def make_process(config: Mapping[str, Any]):
    """The process a checkpoint's scheduler config describes: ADM's GaussianDiffusion, or a DDPMScheduler."""
    if config.get("_class_name") == "GaussianDiffusion":
        return GaussianDiffusion.from_config(config)
    return scheduler_class("ddpm").from_config(dict(config))


def make(name: str, config: Mapping[str, Any], karras: bool = False):
    """The scheduler ``name`` stands for, built from a checkpoint's scheduler config."""
    cls = scheduler_class(name)
    if karras and not has_karras(name):
        raise ValueError(
            f"sampler {name!r} has no Karras sigmas (karras=True needs one of: {karras_names()})"
        )
    if config.get("_class_name") == "GaussianDiffusion":
        process = GaussianDiffusion.from_config(config)
        if name in ("ddpm", "ddim"):
            return process.for_sampler(name)
        config = process.sampler_config()
    overrides = dict(sampler_registry.SAMPLERS[name].overrides)
    if karras:
        overrides["use_karras_sigmas"] = True
    return cls.from_config(dict(config), **overrides)
