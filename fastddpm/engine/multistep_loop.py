"""The sync-free, graph-capturable loop for the table-driven multistep solvers (DPM-Solver family).

Like SamplingLoop, one ``step`` reads its timestep and coefficient row with a device-resident step index,
runs the U-Net, then one fused ``ops.multistep_update`` over static buffers: x, the history of earlier
converted outputs (newest first) and the noise. The history shift is two device copies, so the step has
no host work and one captured CUDA graph replays for every step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fastddpm import ops
from fastddpm.ops.step_columns import MS_HISTORY


class MultistepLoop:
    def __init__(
        self,
        unet: torch.nn.Module,
        table: torch.Tensor,
        timesteps: torch.Tensor,
        shape: tuple[int, ...],
        net_dtype: torch.dtype,
        noise_mode: str | None,
        seed: int,
    ) -> None:
        device = table.device
        self.unet, self.table, self.timesteps = unet, table, timesteps
        self.shape, self.net_dtype, self.noise_mode, self.seed = shape, net_dtype, noise_mode, seed
        self.x = torch.zeros(shape, dtype=torch.float32, device=device)
        self.history = torch.zeros((MS_HISTORY, *shape), dtype=torch.float32, device=device)
        self.step_index = torch.zeros(1, dtype=torch.int64, device=device)
        self.sample_offset = torch.zeros((), dtype=torch.int64, device=device)
        self.noise = torch.zeros_like(self.x) if noise_mode == "torch" else None

    def step(self) -> None:
        """x <- multistep_update(unet(x, t[i]), x, history, table[i], noise); shift history; i += 1."""
        index = self.step_index
        t = self.timesteps.index_select(0, index).expand(self.shape[0])
        coeffs = self.table.index_select(0, index).squeeze(0)
        model_output = self.unet(self.x.to(self.net_dtype), t).float()
        if self.noise_mode == "philox":
            noise = ops.PhiloxNoise(self.seed, self.sample_offset, index.squeeze(0) + 1)
        else:
            noise = self.noise
        x_next, converted = ops.multistep_update(model_output, self.x, self.history, coeffs, noise)
        self.history[1].copy_(self.history[0])
        self.history[0].copy_(converted)
        self.x.copy_(x_next)
        self.step_index.add_(1)

    def run(
        self,
        x_T: torch.Tensor,
        sample_offset: int,
        steps: int,
        draw_noise: Callable[[], torch.Tensor] | None,
        step: Callable[[], None] | None = None,
        progress=None,
    ) -> torch.Tensor:
        """All steps from x_T; ``draw_noise`` (torch mode, SDE) fills each step's noise on the host, so a
        shared torch.Generator is drawn exactly when diffusers draws it."""
        self.x.copy_(x_T)
        self.history.zero_()
        self.step_index.zero_()
        self.sample_offset.fill_(sample_offset)
        step = step or self.step
        for _ in range(steps):
            if draw_noise is not None:
                self.noise.copy_(draw_noise())
            step()
            if progress is not None:
                progress.update(1)
        return self.x
