"""The eager sampling loop for any diffusers-style scheduler: x_T * init_noise_sigma, then for every
timestep scale_model_input, the network and ``scheduler.step``, exactly diffusers' standard loop.

It serves what the table-driven MultistepLoop cannot: configs whose step is not linear (dynamic
thresholding, Heun's clip_sample; ``graph_refusal`` names the reason) and scheduler
objects that are not fastddpm's (a diffusers scheduler passed as ``sampler=``).
Noise for SDE / ancestral steps comes from the generator inside ``step`` (noise="torch", as diffusers
draws it) or, with ``philox_noise``, from the counter-based Philox stream of that step, passed in as
``variance_noise``. Each step makes host-side scheduler calls (timestep lookup, history shuffle): this
loop is not CUDA-graph capturable.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch


def run_scheduler_loop(
    unet: torch.nn.Module,
    scheduler,
    x_T: torch.Tensor,
    net_dtype: torch.dtype,
    generator: torch.Generator | list[torch.Generator] | None = None,
    philox_noise: Callable[[int], torch.Tensor] | None = None,
    progress=None,
) -> torch.Tensor:
    """x_0 from x_T (float32, N(0, I)); ``scheduler`` has had set_timesteps called."""
    step_parameters = inspect.signature(scheduler.step).parameters
    takes_generator = "generator" in step_parameters
    takes_noise = "variance_noise" in step_parameters
    x = x_T * scheduler.init_noise_sigma
    batch = x.shape[0]
    for index, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(x, t)
        timestep = t.to(x.device).reshape(1).expand(batch)  # float for Karras sigmas: the embedding takes it
        model_output = unet(model_input.to(net_dtype), timestep).float()
        kwargs = {}
        if philox_noise is not None and takes_noise:
            kwargs["variance_noise"] = philox_noise(index)
        elif takes_generator:
            kwargs["generator"] = generator
        x = scheduler.step(model_output, t, x, **kwargs).prev_sample
        if progress is not None:
            progress.update(1)
    return x
