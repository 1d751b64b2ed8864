"""The per-step function of the sampling loop, over static buffers, with no host work the device waits for.

One ``SamplingLoop`` serves one (batch, sample shape, network dtype, sampler settings) key. Its ``step``
reads the step's timestep and coefficients with a device-resident step index, runs the U-Net and the fused
sampler step, writes x_prev back into the same buffer and advances the index on the device, so a single
captured CUDA graph of ``step`` replays for every step, and for every batch (x_T and the Philox sample
offset are copied into their buffers before a run). Eager mode runs the same function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fastddpm import ops


class SamplingLoop:
    def __init__(
        self,
        unet: torch.nn.Module,
        table: torch.Tensor,
        timesteps: torch.Tensor,
        shape: tuple[int, ...],
        net_dtype: torch.dtype,
        step_options: dict[str, Any],
        noise_mode: str,
        seed: int,
        memory_format: torch.memory_format = torch.contiguous_format,
        class_conditional: bool = False,
    ) -> None:
        device = table.device
        self.unet = unet
        self.table = table  # (steps, NUM_COLUMNS) float32
        self.timesteps = timesteps  # (steps,) int64
        self.shape = shape
        self.net_dtype = net_dtype
        self.step_options = step_options
        self.noise_mode = noise_mode
        self.seed = seed
        self.memory_format = memory_format
        channels = shape[1]
        self.mean_channels = channels if step_options["variance_type"] == "fixed" else None
        # static buffers: the graph reads and writes exactly these
        self.x = torch.zeros(shape, dtype=torch.float32, device=device).contiguous(
            memory_format=memory_format
        )
        self.step_index = torch.zeros(1, dtype=torch.int64, device=device)
        self.sample_offset = torch.zeros((), dtype=torch.int64, device=device)
        self.noise = torch.zeros_like(self.x) if noise_mode == "torch" else None
        # a class-conditional net's labels, copied in per batch like x_T
        self.class_labels = (
            torch.zeros(shape[0], dtype=torch.int64, device=device) if class_conditional else None
        )

    def buffers(self) -> list[torch.Tensor]:
        """The static tensors a captured graph reads and writes."""
        extra = [t for t in (self.class_labels, self.noise) if t is not None]
        return [self.x, self.step_index, self.sample_offset, *extra]

    def step(self) -> None:
        """x <- sampler_step(unet(x, t[i]), x, table[i], noise); i += 1. Sync-free and allocation-stable."""
        index = self.step_index
        t = self.timesteps.index_select(0, index).expand(self.shape[0])
        coeffs = self.table.index_select(0, index).squeeze(0)
        labels = {} if self.class_labels is None else {"class_labels": self.class_labels}
        model_output = self.unet(self.x.to(self.net_dtype), t, **labels)
        if self.mean_channels is not None and model_output.shape[1] != self.mean_channels:
            model_output = model_output[:, : self.mean_channels]
        if self.noise_mode == "philox":
            step_noise = ops.PhiloxNoise(self.seed, self.sample_offset, index.squeeze(0) + 1)
        else:
            step_noise = self.noise
        prev, _ = ops.sampler_step(model_output.float(), self.x, coeffs, step_noise, **self.step_options)
        self.x.copy_(prev)
        self.step_index.add_(1)

    def start(self, x_T: torch.Tensor, sample_offset: int, class_labels: torch.Tensor | None = None) -> None:
        self.x.copy_(x_T)
        if self.class_labels is not None:
            self.class_labels.copy_(class_labels)
        self.step_index.zero_()
        self.sample_offset.fill_(sample_offset)

    def run(
        self,
        x_T: torch.Tensor,
        sample_offset: int,
        noise_on: list[bool],
        draw_noise: Callable[[], torch.Tensor] | None,
        step: Callable[[], None] | None = None,
        progress=None,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """All steps from x_T; ``draw_noise`` fills the torch-mode noise for steps that add noise (on the
        host's schedule, so a shared torch.Generator is drawn exactly when diffusers draws it)."""
        self.start(x_T, sample_offset, class_labels)
        step = step or self.step
        for adds_noise in noise_on:
            if adds_noise and draw_noise is not None:
                self.noise.copy_(draw_noise())
            step()
            if progress is not None:
                progress.update(1)
        return self.x
