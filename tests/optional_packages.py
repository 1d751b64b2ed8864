"""Skips for cases that need an optional package the project does not require (the GPU image lacks them)."""

from __future__ import annotations

import pytest


def skip_without_torchsde(sampler: str, noise: str) -> None:
    """dpm-sde with noise="torch" draws diffusers' Brownian tree, which needs torchsde (the "sde" extra);
    with Philox it needs nothing."""
    if sampler == "dpm-sde" and noise == "torch":
        pytest.importorskip("torchsde")
