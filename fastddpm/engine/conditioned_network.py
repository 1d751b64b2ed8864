"""The network as every sampling loop calls it: ``net(x, t)`` -> the model output the update reads.

What a checkpoint's network needs besides (x, t), and what the update needs from its output, is wrapped
here, once, and never in a loop:

- the timestep: ADM nets take float32 timesteps, times 1000 / diffusion_steps when trained with
  rescale_timesteps (their _scale_timesteps); diffusers nets take the scheduler's timestep as it is;
- class labels of a class-conditional net, and an upsampler's low-resolution images, each held in one
  tensor that a new batch is copied into (so a captured CUDA graph, which reads that address, sees the new
  batch's);
- the dtype: the sample stays float32, the network runs in its own dtype, its output comes back float32;
- the output channels: a net with learned variances returns 2 x C channels; an update that does not read
  the variance gets the first C (the mean prediction);
- classifier guidance (engine/guidance.py): the classifier's gradient at the same input and timesteps,
  returned beside the output for an update that applies it (ADM's own loops), else folded into the output
  as the score correction; the labels go to the classifier, and to the net only if it is class-conditional.
"""

from __future__ import annotations

import torch


class ConditionedNetwork:
    """A plain callable, not an nn.Module: the loop calls it once per step, and Module.__call__'s hook
    checks cost host time the U-Net's own call already pays."""

    def __init__(
        self,
        unet: torch.nn.Module,
        net_dtype: torch.dtype,
        sample_channels: int,
        timestep_scale: float | None = None,
        reads_variance: bool = False,
        guidance=None,
        update_takes_gradient: bool = False,
    ) -> None:
        self.unet, self.net_dtype = unet, net_dtype
        self.guidance, self.update_takes_gradient = guidance, update_takes_gradient
        self.labels_to_net = guidance is None or guidance.labels_to_net
        self.timestep_scale = None if timestep_scale is None else float(timestep_scale)
        self.mean_channels = None if reads_variance else int(sample_channels)
        self.class_labels: torch.Tensor | None = None
        self.low_res: torch.Tensor | None = None

    def set_class_labels(self, labels: torch.Tensor | None) -> None:
        """The batch's labels (B,) int64, or None; copied into the same tensor while the batch size holds."""
        self.class_labels = _kept(self.class_labels, labels)

    def set_low_res(self, low_res: torch.Tensor | None) -> None:
        """An upsampler's low-resolution images (B, C, h, w) float32 in [-1, 1], or None; kept like the labels."""
        self.low_res = _kept(self.low_res, low_res)

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor):
        process_timestep = timestep
        if self.timestep_scale is not None:
            # float32 as their _scale_timesteps (t.float() * (1000.0 / num_timesteps)); 1 keeps the float cast
            timestep = torch.as_tensor(timestep, device=sample.device).float()
            if self.timestep_scale != 1.0:
                timestep = timestep * self.timestep_scale
        conditions = {}
        if self.class_labels is not None and self.labels_to_net:
            conditions["class_labels"] = self.class_labels
        if self.low_res is not None:
            conditions["low_res"] = self.low_res
        output = self.unet(sample.to(self.net_dtype), timestep, **conditions)
        if self.mean_channels is not None and output.shape[1] != self.mean_channels:
            output = output[:, : self.mean_channels]
        output = output.float()
        if self.guidance is None:
            return output
        grad = self.guidance.gradient(sample, timestep, self.class_labels)
        if self.update_takes_gradient:
            return output, grad
        return self.guidance.corrected(output, grad, process_timestep)


def _kept(held: torch.Tensor | None, new: torch.Tensor | None) -> torch.Tensor | None:
    """``new`` copied into ``held`` where their shapes agree (the address a captured graph reads stays), else
    a copy of it (or None)."""
    if new is None or held is None or held.shape != new.shape or held.dtype != new.dtype:
        return None if new is None else new.clone()
    held.copy_(new)
    return held
