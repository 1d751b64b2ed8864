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
import importlib.util
import os
import sys

__version__ = "0.1.0"


def _kernels_from_checkout() -> None:
    """Make kernels/ importable as fastddpm.kernels, as setup.py installs it, where this package runs from a
    source checkout that was not pip-installed (PYTHONPATH=., as the GPU check runs). The schedulers and ops
    read the step-table layout from it. kernels/__init__.py imports nothing, so this costs no triton import."""
    name = f"{__name__}.kernels"
    if name in sys.modules or importlib.util.find_spec(name) is not None:
        return
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")
    init = os.path.join(folder, "__init__.py")
    if os.path.isfile(init):
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[folder])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


_kernels_from_checkout()

from fastddpm.sampler_registry import SCHEDULER_MODULES  # noqa: E402  (imports nothing)

# Exported lazily (PEP 562): `fastddpm --help` and argument errors answer without importing torch. The
# scheduler classes are the sampler registry's (sampler_registry.py).
_EXPORTS = {
    **dict.fromkeys(SCHEDULER_MODULES, "schedulers"),
    "SchedulerOutput": "schedulers",
    "SchedulerMixin": "schedulers",  # the base diffusers' pipelines look for (schedulers/diffusers_interop.py)
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


__all__ = sorted([*_EXPORTS, "__version__"])
