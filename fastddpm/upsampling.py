"""An upsampler's low-resolution input, as the pipeline takes it.

An ADM upsampler (their SuperResModel) samples a large image conditioned on a small one. ``pipe(low_res=...)``
takes the small images in either of the two forms their code uses:

- uint8 NHWC pixels (B, small, small, 3), as the npz their base-model scripts write holds them in ``arr_0``:
  scaled to [-1, 1] as their super_res_sample.py's load_data_for_worker does (float32, / 127.5 - 1);
- a float NCHW tensor (B, 3, small, small) in [-1, 1], as their ``model_kwargs["low_res"]``.

Anything else (another size, batch, channel count or dtype, values outside [-1, 1]) is a one-line ValueError.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def low_res_size(unet: torch.nn.Module) -> int | None:
    """The low-resolution side an upsampler takes (its small_size flag), or None for any other network."""
    if not getattr(unet, "super_res", False):
        return None
    return int(unet.config["small_size"])


def low_res_batch(low_res: Any, batch_size: int, small_size: int, device: torch.device) -> torch.Tensor:
    """``low_res`` as the network takes it: float32 NCHW in [-1, 1] on ``device``, checked (module docstring)."""
    images = torch.from_numpy(np.ascontiguousarray(low_res)) if isinstance(low_res, np.ndarray) else low_res
    if not torch.is_tensor(images):
        raise ValueError(
            f"low_res must be a uint8 NHWC array or a float NCHW tensor, got {type(low_res).__name__}"
        )
    if images.dtype == torch.uint8:
        expected = (batch_size, small_size, small_size, 3)
        if tuple(images.shape) != expected:
            raise ValueError(
                f"low_res as uint8 pixels must be NHWC {expected} (batch, small_size, small_size, 3), "
                f"got {tuple(images.shape)}"
            )
        # their load_data_for_worker: .float(), / 127.5 - 1.0, then NHWC -> NCHW
        return (images.to(device).float() / 127.5 - 1.0).permute(0, 3, 1, 2)
    if not images.dtype.is_floating_point:
        raise ValueError(f"low_res must be uint8 pixels or floats in [-1, 1], got dtype {images.dtype}")
    expected = (batch_size, 3, small_size, small_size)
    if tuple(images.shape) != expected:
        raise ValueError(
            f"low_res as floats must be NCHW {expected} (batch, 3, small_size, small_size), "
            f"got {tuple(images.shape)}"
        )
    images = images.to(device=device, dtype=torch.float32)
    if not bool(((images >= -1) & (images <= 1)).all()):
        raise ValueError("low_res floats must lie in [-1, 1] (uint8 pixels are scaled by fastddpm)")
    return images
