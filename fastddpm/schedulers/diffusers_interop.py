"""diffusers' pipelines save and reload fastddpm's schedulers, without fastddpm importing diffusers.

``DiffusionPipeline.save_pretrained`` saves a component only if its class derives from a base class that
diffusers' LOADABLE_CLASSES lists for some library (for schedulers, ``diffusers.SchedulerMixin``); for any
other it logs "... cannot be saved" and writes ``[null, null]`` into model_index.json, and the folder no
longer loads. fastddpm's schedulers derive from fastddpm's own ConfigMixin, so fastddpm adds itself to that
table: library ``fastddpm``, base class ``SchedulerMixin`` (exported as ``fastddpm.SchedulerMixin``, an
alias of ConfigMixin), with the save and load methods diffusers' own schedulers have. model_index.json then
records ``["fastddpm", "<class>"]``, and ``DiffusionPipeline.from_pretrained`` imports fastddpm, finds the
class and ``fastddpm.SchedulerMixin`` among its bases and calls ``from_pretrained`` on the scheduler folder.

The entry is added only where the user has imported diffusers (fastddpm never imports it first): when
fastddpm.schedulers is imported, and again whenever a scheduler is built, since a user who puts one into a
diffusers pipeline has imported diffusers by then.
"""

from __future__ import annotations

import importlib
import sys

LIBRARY = "fastddpm"
BASE_CLASS = "SchedulerMixin"
_LOADING_UTILS = "diffusers.pipelines.pipeline_loading_utils"
_registered = False


def register_with_diffusers() -> bool:
    """Add fastddpm's schedulers to diffusers' table of savable classes if diffusers is imported."""
    global _registered
    if _registered:
        return True
    if "diffusers" not in sys.modules:
        return False
    try:  # diffusers imports its submodules lazily: this one may not be loaded yet
        utils = importlib.import_module(_LOADING_UTILS)
    except Exception:  # another diffusers layout: nothing to register with, and no reason to fail
        return False
    if not hasattr(utils, "LOADABLE_CLASSES") or not hasattr(utils, "ALL_IMPORTABLE_CLASSES"):
        return False
    methods = ["save_pretrained", "from_pretrained"]
    utils.LOADABLE_CLASSES.setdefault(LIBRARY, {})[BASE_CLASS] = methods
    utils.ALL_IMPORTABLE_CLASSES.setdefault(BASE_CLASS, methods)
    _registered = True
    return True
