"""The eager loop for plans the fused loop cannot run: diffusers' standard loop over any scheduler.

x_T * init_noise_sigma, then for every timestep scale_model_input, the network and ``scheduler.step``. It
serves EagerPlans: configs whose step is not linear (dynamic thresholding on a table-driven sampler,
Heun's clip_sample; ``graph_refusal`` names the reason) and scheduler objects that are not fastddpm's (a
diffusers scheduler passed as ``sampler=``). Noise for SDE / ancestral steps comes from the generator inside
``step`` (noise="torch", as diffusers draws it) or, in Philox mode, from that step's Philox stream, passed
as ``variance_noise``. Each step makes host-side scheduler calls (timestep lookup, history shuffle): this
loop is not CUDA-graph capturable.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from fastddpm.engine.noise_source import NoiseSource


def run_eager_loop(
    network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scheduler,
    x_T: torch.Tensor,
    noise: NoiseSource,
    sample_offset: int = 0,
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
        model_output = network(model_input, timestep)
        kwargs = {}
        if noise.philox and takes_noise:
            kwargs["variance_noise"] = noise.step_normal(x.shape, sample_offset, index, x.device)
        elif takes_generator:
            kwargs["generator"] = noise.generator
        x = scheduler.step(model_output, t, x, **kwargs).prev_sample
        if progress is not None:
            progress.update(1)
    return x
