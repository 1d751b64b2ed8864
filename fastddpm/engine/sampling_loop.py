"""The one sampling loop: any plan's steps over static buffers, with no host work the device waits for.

One ``SamplingLoop`` serves one (plan, batch shape, network) key. Its ``step`` reads the step's timestep
and table row with a device-resident step index, runs the conditioned network on the update's input,
applies the plan's fused update (DDPM / DDIM's sampler_step, or the linear update with its state slots)
and writes x (and the state) back into the same buffers, then advances the index on the device. So one
captured CUDA graph of ``step`` replays for every step and every batch (x_T, the labels and the Philox
sample offset are copied into their buffers before a run); eager mode runs the same function.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fastddpm.engine.noise_source import NoiseSource
from fastddpm.engine.plan import SamplingPlan


def state_buffer(slots: int, shape: tuple[int, ...], device, memory_format) -> torch.Tensor:
    """(slots, *shape) float32 zeros whose every slot has the sample's memory format (NHWC slots for
    channels_last, so the update reads and writes all its vectors in one layout)."""
    if memory_format == torch.channels_last:
        n, c, h, w = shape
        strides = (n * h * w * c, h * w * c, 1, w * c, c)  # a base tensor, not a view (autograd-safe)
        return torch.empty_strided((slots, *shape), strides, dtype=torch.float32, device=device).zero_()
    return torch.zeros((slots, *shape), dtype=torch.float32, device=device)


class SamplingLoop:
    def __init__(
        self,
        network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        plan: SamplingPlan,
        shape: tuple[int, ...],
        device: torch.device,
        memory_format: torch.memory_format = torch.contiguous_format,
        noise: NoiseSource | None = None,
    ) -> None:
        self.network, self.update, self.shape = network, plan.update, shape
        self.table = plan.table.to(device)
        self.timesteps = plan.timesteps.to(device)
        # Philox noise is drawn inside the update; torch noise is copied into self.noise on the host's schedule
        self.philox = noise if noise is not None and noise.philox else None
        # static buffers: a captured graph reads and writes exactly these
        self.x = torch.zeros(shape, dtype=torch.float32, device=device).contiguous(
            memory_format=memory_format
        )
        slots = self.update.state_slots
        self.state = None if slots is None else state_buffer(slots, shape, device, memory_format)
        self.step_index = torch.zeros(1, dtype=torch.int64, device=device)
        self.sample_offset = torch.zeros((), dtype=torch.int64, device=device)
        takes_host_noise = self.update.takes_noise and self.philox is None
        self.noise = torch.zeros_like(self.x) if takes_host_noise else None
        # bound once: step() runs per network evaluation, and attribute lookups are its host time
        self._network_input, self._apply = self.update.network_input, self.update.apply
        self._takes_noise, self._batch = self.update.takes_noise, shape[0]

    def buffers(self) -> list[torch.Tensor]:
        """The static tensors a captured graph reads and writes."""
        found = [self.x, self.state, self.step_index, self.sample_offset, self.noise]
        return [t for t in found if t is not None]

    def step(self) -> None:
        """x, state <- update(network(input(x), t[i]), x, row i, noise, state); i += 1. Sync-free."""
        index = self.step_index
        t = self.timesteps.index_select(0, index).expand(self._batch)
        row = self.table.index_select(0, index).squeeze(0)
        model_output = self.network(self._network_input(self.x, row), t)
        noise = None
        if self._takes_noise:
            noise = (
                self.noise
                if self.philox is None
                else self.philox.step_noise(self.sample_offset, index.squeeze(0))
            )
        x_next, state = self._apply(model_output, self.x, row, noise, self.state)
        if state is not None:
            self.state.copy_(state)
        self.x.copy_(x_next)
        self.step_index.add_(1)

    def start(self, x_T: torch.Tensor, sample_offset: int) -> None:
        """Reset the static buffers for a new batch from x_T."""
        self.x.copy_(x_T)
        if self.state is not None:
            self.state.zero_()
        self.step_index.zero_()
        self.sample_offset.fill_(sample_offset)

    def run(
        self,
        x_T: torch.Tensor,
        sample_offset: int,
        noise_draws: tuple[bool, ...],
        draw_noise: Callable[[], torch.Tensor] | None,
        step: Callable[[], None] | None = None,
        progress=None,
    ) -> torch.Tensor:
        """Every step from x_T (already scaled by the plan's init_noise_sigma); ``draw_noise`` (torch mode)
        fills the noise buffer before each step that draws, so a shared torch.Generator is drawn exactly
        when diffusers draws it. ``step``: a captured graph's replay, or None for ``self.step``."""
        self.start(x_T, sample_offset)
        step = step or self.step
        for draws in noise_draws:
            if draws and self.noise is not None and draw_noise is not None:
                self.noise.copy_(draw_noise())
            step()
            if progress is not None:
                progress.update(1)
        return self.x
