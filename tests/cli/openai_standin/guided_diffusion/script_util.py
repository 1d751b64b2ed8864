"""model_and_diffusion_defaults and create_model_and_diffusion as guided-diffusion's script_util has them, on
tests/adm_reference.py; the diffusion's loops take their keyword arguments and draw from the global
generator, as theirs do."""

from __future__ import annotations

from tests import adm_reference

NUM_CLASSES = 1000


def model_and_diffusion_defaults() -> dict:
    return dict(
        image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1,
        num_head_channels=-1, attention_resolutions="16,8", channel_mult="", dropout=0.0, class_cond=False,
        use_checkpoint=False, use_scale_shift_norm=True, resblock_updown=False, use_fp16=False,
        use_new_attention_order=False, learn_sigma=False, diffusion_steps=1000, noise_schedule="linear",
        timestep_respacing="", use_kl=False, predict_xstart=False, rescale_timesteps=False,
        rescale_learned_sigmas=False,
    )  # fmt: skip


class _Loops:
    def __init__(self, diffusion: adm_reference.SpacedDiffusion) -> None:
        self.diffusion = diffusion

    def p_sample_loop(self, model, shape, clip_denoised=True, model_kwargs=None, device=None, progress=False):
        assert clip_denoised  # the reference clips, as their sample scripts ask
        return self.diffusion.p_sample_loop(model, shape, model_kwargs=model_kwargs)

    def ddim_sample_loop(self, model, shape, clip_denoised=True, model_kwargs=None, device=None, eta=0.0):
        assert clip_denoised
        return self.diffusion.ddim_sample_loop(model, shape, model_kwargs=model_kwargs, eta=eta)


def create_model_and_diffusion(**flags):
    if set(flags) != set(model_and_diffusion_defaults()):
        raise TypeError(
            f"create_model_and_diffusion() got {sorted(set(flags) ^ set(model_and_diffusion_defaults()))}"
        )
    model = adm_reference.model_from_flags(flags, tuple(int(m) for m in flags["channel_mult"].split(",")))
    model.convert_to_fp16 = lambda: None
    return model, _Loops(adm_reference.SpacedDiffusion({**flags, "sigma_small": False}))
