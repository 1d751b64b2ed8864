"""Reduced-width flag sets with the structure of every published guided-diffusion classifier, and random
classifier checkpoints saved as their classifier_train.py saves them.

Their README guides the 64x64 model with ``--classifier_depth 4`` and the others with classifier_defaults()
(width 128, depth 2, attention at 32,16,8, attention pool, scale-shift norm, resblock up/down); the width
here is 64, the least whose attention channels split into their heads of 64 at every size (the 64 and 128
px multipliers reach 3 x width; the 512 px net starts at width / 2, which GroupNorm32 needs to be >= 32).
The attention pool's positional embedding fixes the input to image_size pixels; the other pools are tested
on the 64 px structure.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fastddpm.checkpoints.adm_classifier import resolve_classifier_flags
from fastddpm.checkpoints.adm_flags import parse_flag_string
from tests import adm_classifier_reference

CLASSIFIERS: dict[str, str] = {
    "64x64": "--image_size 64 --classifier_width 64 --classifier_depth 4",
    "128x128": "--image_size 128 --classifier_width 64",
    "256x256": "--image_size 256 --classifier_width 64",
    "512x512": "--image_size 512 --classifier_width 64",
}
OTHER_POOLS = {
    pool: f"--image_size 64 --classifier_width 64 --classifier_pool {pool} --classifier_depth 1 "
    "--classifier_resblock_updown False --classifier_use_scale_shift_norm False --classifier_attention_resolutions 16"
    for pool in ("adaptive", "spatial", "spatial_v2")
}


def reference_classifier(text: str, seed: int = 0) -> tuple[adm_classifier_reference.EncoderUNetModel, dict]:
    """(reference classifier with seeded default init, the given flags)."""
    given = parse_flag_string(text)
    torch.manual_seed(seed)
    return adm_classifier_reference.create_classifier(resolve_classifier_flags(given)).eval(), given


def save_classifier(model: torch.nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path
