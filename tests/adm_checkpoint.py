"""Random ADM checkpoints for the tests, saved as their training scripts save them."""

from __future__ import annotations

from pathlib import Path

import torch

from fastddpm.checkpoints.adm_flags import parse_flag_string, resolve_flags
from tests import adm_reference
from tests.adm_families import FAMILIES


def reference_model(
    family: str, seed: int = 0, extra_flags: str = ""
) -> tuple[adm_reference.UNetModel, dict, dict, int]:
    """(reference net with seeded default init, given flags, resolved flags, test image side).

    torch's default init everywhere (their zero_module output convs would make every output 0)."""
    text, size = FAMILIES[family]
    given = parse_flag_string(f"{text} {extra_flags}")
    flags = resolve_flags(given)
    torch.manual_seed(seed)
    return adm_reference.model_from_flags(flags, flags["channel_mult"]).eval(), given, flags, size


def save_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)  # as their train_util saves model.state_dict()
    return path


def reference_upsampler(
    family: str, seed: int = 0
) -> tuple[adm_reference.SuperResModel, dict, dict, int, int]:
    """(reference upsampler, given flags, resolved flags, sample side, low-resolution side), the given
    small_size replaced by the test's low-resolution side."""
    from fastddpm.checkpoints.adm_flags import resolve_super_res_flags
    from tests.adm_families import SUPER_RES_FAMILIES

    text, size, small = SUPER_RES_FAMILIES[family]
    given = {**parse_flag_string(text), "small_size": str(small)}
    flags = resolve_super_res_flags(given)
    torch.manual_seed(seed)
    return adm_reference.super_res_model_from_flags(flags).eval(), given, flags, size, small
