"""diffusers-compatible schedulers: one module per sampler family, each with the builder of its step-table
rows and its ``sampling_plan`` (what the engine runs). The scheduler classes are exported lazily from
fastddpm/sampler_registry.py, where each sampler name says which module defines its class."""

from __future__ import annotations

import importlib

from fastddpm.sampler_registry import SCHEDULER_MODULES
from fastddpm.schedulers.base import SchedulerOutput  # noqa: F401
from fastddpm.schedulers.config_mixin import ConfigMixin as SchedulerMixin  # noqa: F401  (diffusers_interop)
from fastddpm.schedulers.config_mixin import FrozenConfig  # noqa: F401
from fastddpm.schedulers.diffusers_interop import register_with_diffusers

register_with_diffusers()


def __getattr__(name: str):
    if name in SCHEDULER_MODULES:
        value = getattr(importlib.import_module(f"{__name__}.{SCHEDULER_MODULES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *SCHEDULER_MODULES])


__all__ = sorted([*SCHEDULER_MODULES, "FrozenConfig", "SchedulerMixin", "SchedulerOutput"])
