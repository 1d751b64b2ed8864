"""FASTDDPM_BATCH_INVARIANT: whether the network computes each sample's values in an order fixed by that
sample's own shape (fastddpm.models.batch_invariant says how), and with which kernels.

- unset / ``1`` / ``on``: on the CPU, fastddpm._C's kernels (where the extension is built for the CPU).
  On CUDA, ``1`` / ``on`` set explicitly also take the Triton kernels below; unset, CUDA keeps cuBLAS /
  cuDNN until a GPU run has checked those kernels (``TRITON_RUN_ON_A_GPU``).
- ``triton``: the Triton kernels (kernels/conv_rows.py for every convolution and matrix product, GroupNorm
  planned by group size only) on any device: CUDA, or the CPU under TRITON_INTERPRET=1 (tests).
- ``0`` / ``off``: the batch-variant kernels (oneDNN, MKL, cuBLAS, cuDNN), which choose by batch.
"""

from __future__ import annotations

import os

import torch

ENV_VAR = "FASTDDPM_BATCH_INVARIANT"
# The Triton path is compiled for sm_90 and run under the interpreter in the tests, never on a GPU yet:
# until a GPU run passes tests/models/test_batch_invariant_triton.py there, CUDA takes it only when asked.
TRITON_RUN_ON_A_GPU = False
_ON, _OFF = ("1", "true", "on", "yes"), ("0", "false", "off", "no")


def mode() -> str:
    """'default' (unset), 'on', 'off' or 'triton'."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value == "":
        return "default"
    if value in _ON:
        return "on"
    if value in _OFF:
        return "off"
    if value == "triton":
        return "triton"
    raise ValueError(f"{ENV_VAR}={value!r} is not one of 1, 0, triton (or true / false, on / off)")


def enabled() -> bool:
    return mode() != "off"


def uses_triton(x: torch.Tensor) -> bool:
    """Whether x's batch-invariant layers run on the Triton kernels."""
    chosen = mode()
    if chosen == "triton":
        return True
    return x.device.type == "cuda" and (chosen == "on" or (chosen == "default" and TRITON_RUN_ON_A_GPU))
