"""The sync-free, graph-capturable loop for the table-driven samplers (all but DDPM / DDIM).

Like SamplingLoop, one ``step`` reads its timestep and table row (step_columns.py, LIN_*) with a
device-resident step index, runs the network on x (divided by the row's input divisor where the sampler
scales its input), then one fused ``ops.linear_update`` maps (x, model output, noise, state) to the
next x and state, written back into static buffers. The step has no host work, so one captured CUDA
graph replays for every network evaluation (Heun's and PNDM's extra evaluations are rows of their own).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fastddpm import ops
from fastddpm.kernels.step_columns import LIN_INPUT_DIVISOR, LIN_MATRIX, linear_state_slots


def state_buffer(slots: int, shape: tuple[int, ...], device, memory_format) -> torch.Tensor:
    """(slots, *shape) float32 zeros whose every slot has the sample's memory format (NHWC slots for
    channels_last, so the update reads and writes all its vectors in one layout)."""
    if memory_format == torch.channels_last:
        n, c, h, w = shape
        strides = (n * h * w * c, h * w * c, 1, w * c, c)  # a base tensor, not a view (autograd-safe)
        return torch.empty_strided((slots, *shape), strides, dtype=torch.float32, device=device).zero_()
    return torch.zeros((slots, *shape), dtype=torch.float32, device=device)


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
        memory_format: torch.memory_format = torch.contiguous_format,
        mean_channels_only: bool = False,
    ) -> None:
        device = table.device
        self.unet, self.table, self.timesteps = unet, table, timesteps
        self.shape, self.net_dtype, self.noise_mode, self.seed = shape, net_dtype, noise_mode, seed
        self.mean_channels_only = mean_channels_only  # a learned-variance net: its first shape[1] channels
        slots = linear_state_slots(table.shape[1])
        # decided once from the host copy: most samplers never scale the input, and skip the division
        self.divides_input = bool((table[:, LIN_INPUT_DIVISOR].cpu() != 1).any())
        self.x = torch.zeros(shape, dtype=torch.float32, device=device).contiguous(
            memory_format=memory_format
        )
        self.state = state_buffer(slots, shape, device, memory_format)
        self.step_index = torch.zeros(1, dtype=torch.int64, device=device)
        self.sample_offset = torch.zeros((), dtype=torch.int64, device=device)
        self.noise = torch.zeros_like(self.x) if noise_mode == "torch" else None

    def buffers(self) -> list[torch.Tensor]:
        """The static tensors a captured graph reads and writes."""
        return [self.x, self.state, self.step_index, self.sample_offset] + (
            [self.noise] if self.noise is not None else []
        )

    def step(self) -> None:
        """x, state <- linear_update(net(x / divisor, t[i]), x, state, row i, noise); i += 1."""
        index = self.step_index
        t = self.timesteps.index_select(0, index).expand(self.shape[0])
        row = self.table.index_select(0, index).squeeze(0)
        net_input = self.x / row[LIN_INPUT_DIVISOR] if self.divides_input else self.x
        model_output = self.unet(net_input.to(self.net_dtype), t)
        if self.mean_channels_only:
            model_output = model_output[:, : self.shape[1]]
        model_output = model_output.float()
        if self.noise_mode == "philox":
            noise = ops.PhiloxNoise(self.seed, self.sample_offset, index.squeeze(0) + 1)
        else:
            noise = self.noise
        x_next, state = ops.linear_update(model_output, self.x, self.state, row[LIN_MATRIX:], noise)
        self.state.copy_(state)
        self.x.copy_(x_next)
        self.step_index.add_(1)

    def start(self, x_T: torch.Tensor, sample_offset: int) -> None:
        """Reset the static buffers for a new batch from x_T."""
        self.x.copy_(x_T)
        self.state.zero_()
        self.step_index.zero_()
        self.sample_offset.fill_(sample_offset)

    def run(
        self,
        x_T: torch.Tensor,
        sample_offset: int,
        steps: int,
        draw_noise: Callable[[], torch.Tensor] | None,
        step: Callable[[], None] | None = None,
        progress=None,
    ) -> torch.Tensor:
        """All steps from x_T (already scaled by the scheduler's init_noise_sigma); ``draw_noise`` (torch
        mode, noise_every_step samplers) fills each step's noise on the host, so a shared torch.Generator
        is drawn exactly when diffusers draws it."""
        self.start(x_T, sample_offset)
        step = step or self.step
        for _ in range(steps):
            if draw_noise is not None:
                self.noise.copy_(draw_noise())
            step()
            if progress is not None:
                progress.update(1)
        return self.x
