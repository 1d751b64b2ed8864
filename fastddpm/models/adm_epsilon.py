"""An ADM U-Net seen as a diffusers-style ``net(sample, timestep)``, for the fast samplers' loops.

The loops call ``net(x, t)`` with the process timestep t (an integer, or a float from Karras sigmas); an
ADM model wants it times 1000 / diffusion_steps when trained with rescale_timesteps, wants its class labels,
and with learn_sigma returns 2 x C channels: the epsilon (or x0) half first, the variance half second, which
these samplers do not use.
"""

from __future__ import annotations

import torch


class AdmEpsilonNet(torch.nn.Module):
    """``forward(sample, timestep)`` = the ADM net's first ``channels`` outputs at ``timestep * scale``."""

    def __init__(self, unet: torch.nn.Module, timestep_scale: float, channels: int) -> None:
        super().__init__()
        self.unet, self.timestep_scale, self.channels = unet, float(timestep_scale), int(channels)
        self.class_labels: torch.Tensor | None = None

    def set_class_labels(self, labels: torch.Tensor | None) -> None:
        """The batch's labels (B,) int64, or None. Copied into the same tensor when the batch size is
        unchanged, so that a captured CUDA graph of this net (which reads that address) sees the new ones."""
        if labels is None or self.class_labels is None or self.class_labels.shape != labels.shape:
            self.class_labels = None if labels is None else labels.clone()
        else:
            self.class_labels.copy_(labels)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        # float32 as their _scale_timesteps (t.float() * (1000.0 / num_timesteps))
        t = torch.as_tensor(timestep, device=sample.device).float()
        if self.timestep_scale != 1.0:
            t = t * self.timestep_scale
        out = self.unet(sample, t, class_labels=self.class_labels)
        return out[:, : self.channels]
