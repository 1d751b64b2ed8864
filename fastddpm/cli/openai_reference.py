"""OpenAI's side of ``fastddpm bench`` on an ADM checkpoint: their guided-diffusion code on the same weights.

An ADM checkpoint reproduces OpenAI's sampling loops (p_sample_loop for ddpm, ddim_sample_loop for ddim),
not diffusers': the reference is their package ``guided_diffusion`` (installed from their repository with
``pip install -e .``; it is not on PyPI). Where it is importable, their create_model_and_diffusion builds the
net and the respaced process from the checkpoint's flags, as their image_sample.py does, with
``timestep_respacing`` = the step count (what fastddpm's ``num_inference_steps`` means there). Their loops
draw from torch's global generator: class labels first, then x_T, then one normal per step; seeding it as
fastddpm's generator is seeded gives both the same noise.
"""

from __future__ import annotations

from collections.abc import Callable

REFERENCE_SAMPLERS = ("ddpm", "ddim")


def openai_sampler(checkpoint: str, pipe, sampler: str, device: str, dtype: str) -> Callable | str:
    """``run(batch_size, steps, generator) -> images`` (float32 NHWC in [0, 1], numpy) with their code, or
    one line saying why there is no reference."""
    try:
        from guided_diffusion import script_util
    except ImportError:
        return (
            "no reference: an ADM checkpoint reproduces OpenAI's guided-diffusion, whose package guided_diffusion "
            "is not installed here (diffusers' loops would sample other images from this net)"
        )
    if sampler not in REFERENCE_SAMPLERS:
        return f"no reference: OpenAI's code samples with ddpm and ddim only, not {sampler}"
    if dtype == "bfloat16":
        return "no reference: OpenAI's code runs float32 or float16, not bfloat16"
    flags = their_arguments(pipe, script_util.model_and_diffusion_defaults())
    if isinstance(flags, str):
        return flags
    flags["use_fp16"] = dtype == "float16"  # their flag picks the dtype; fastddpm's --dtype does here
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return _run(script_util, flags, state, sampler, device, dtype, pipe.num_classes(), pipe.sample_shape())


def their_arguments(pipe, defaults: dict) -> dict | str:
    """create_model_and_diffusion's keyword arguments for this checkpoint (its resolved flags), or why not."""
    flags = {**dict(pipe.config), **dict(pipe.process.config)}
    if flags.get("sigma_small"):
        return "no reference: create_model_and_diffusion has no sigma_small"
    arguments = {key: flags.get(key, value) for key, value in defaults.items()}
    mult = tuple(flags["channel_mult"])
    if all(float(m).is_integer() for m in mult):  # spelled out: their defaults lack 32 px (improved's)
        arguments["channel_mult"] = ",".join(str(int(m)) for m in mult)
    else:  # 512 px's (0.5, 1, ...) has no string form; their create_model picks it from image_size
        arguments["channel_mult"] = ""
    return arguments


def _run(script_util, flags: dict, state: dict, sampler: str, device: str, dtype: str, classes, sample_shape):
    import torch

    built: dict[int, tuple] = {}  # steps -> (model, diffusion), built in the untimed warm-up call

    def build(steps: int) -> tuple:
        if steps not in built:
            model, diffusion = script_util.create_model_and_diffusion(
                **{**flags, "timestep_respacing": str(steps)}
            )
            model.load_state_dict(state)
            model.to(device)
            if dtype == "float16":
                model.convert_to_fp16()
            built[steps] = (model.eval(), diffusion)
        return built[steps]

    def run(batch_size: int, steps: int, generator):
        model, diffusion = build(steps)  # the timed calls sample only, as fastddpm's do
        torch.manual_seed(generator.initial_seed())  # their loops draw from the global generator
        kwargs = {}
        if classes is not None:  # their image_sample.py draws the labels before x_T
            kwargs["y"] = torch.randint(0, classes, (batch_size,), device=device)
        shape = (batch_size, *sample_shape)  # fastddpm's sample size (their nets are convolutional)
        loop = diffusion.p_sample_loop if sampler == "ddpm" else diffusion.ddim_sample_loop
        with torch.no_grad():
            x = loop(model, shape, clip_denoised=True, model_kwargs=kwargs, device=torch.device(device))
        return (x.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()

    return run
