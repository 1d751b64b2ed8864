"""diffusers' side of ``fastddpm bench``: the same checkpoint and sampler, as a diffusers user runs them.

DDPM and DDIM run in diffusers' own DDPMPipeline / DDIMPipeline. The other samplers run diffusers' standard
loop with diffusers' scheduler class and the same config overrides as fastddpm's sampler name: x_T *
init_noise_sigma, then scale_model_input, the UNet2DModel and step at every timestep (DDPMPipeline skips
the first two, which the sigma-parametrised samplers need).
"""

from __future__ import annotations

import os
from collections.abc import Callable


def diffusers_sampler(folder: str, sampler: str, karras: bool, device: str, dtype: str):
    """``run(batch_size, steps, generator) -> images`` (float32 NHWC in [0, 1], numpy) with diffusers on a
    diffusers folder, or None when diffusers is not installed."""
    try:
        import diffusers
    except ImportError:
        return None
    import torch

    from fastddpm.schedulers import samplers

    # Its advice about `accelerate` and dtype casting is noise in a benchmark table.
    diffusers.utils.logging.set_verbosity_error()
    unet = diffusers.UNet2DModel.from_pretrained(os.path.join(folder, "unet"))
    unet = unet.to(device, getattr(torch, dtype))
    class_name, overrides = samplers.SAMPLERS[sampler]
    scheduler_class = getattr(diffusers, class_name)
    config = scheduler_class.load_config(os.path.join(folder, "scheduler"))
    scheduler = scheduler_class.from_config(
        config, **overrides, **({"use_karras_sigmas": True} if karras else {})
    )
    if sampler in ("ddpm", "ddim"):
        pipeline_class = diffusers.DDPMPipeline if sampler == "ddpm" else diffusers.DDIMPipeline
        pipe = pipeline_class(unet=unet, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        # output_type="pt", then float32 numpy here: their own "np" output calls .numpy() on the network's
        # dtype, which numpy lacks for bfloat16.
        return lambda batch_size, steps, generator: (
            pipe(batch_size=batch_size, num_inference_steps=steps, generator=generator, output_type="pt")
            .images.permute(0, 2, 3, 1)
            .float()
            .cpu()
            .numpy()
        )
    return _standard_loop(unet, scheduler)


def _standard_loop(unet, scheduler) -> Callable:
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    @torch.no_grad()
    def run(batch_size: int, steps: int, generator):
        scheduler.set_timesteps(steps, device=unet.device)
        size = unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch_size, unet.config.in_channels, *size)
        x = randn_tensor(shape, generator=generator, device=unet.device, dtype=unet.dtype)
        x = x * scheduler.init_noise_sigma
        takes_generator = "generator" in scheduler.step.__code__.co_varnames
        for t in scheduler.timesteps:
            model_output = unet(scheduler.scale_model_input(x, t), t).sample
            kwargs = {"generator": generator} if takes_generator else {}
            x = scheduler.step(model_output, t, x, **kwargs).prev_sample
        return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()

    return run
