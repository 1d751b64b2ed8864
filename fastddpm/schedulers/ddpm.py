"""DDPMScheduler: ancestral sampling of Ho et al. 2020, with diffusers 0.42's numbers.

``ddpm_row`` computes one step's coefficients with the same float32 tensor operations, in the same order,
as diffusers' DDPMScheduler, so a step that reads the table reproduces diffusers bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch

from fastddpm import ops
from fastddpm.kernels.step_columns import (
    COEF_X0,
    COEF_XT,
    LOG_VAR_MAX,
    LOG_VAR_MIN,
    NOISE_ON,
    NUM_COLUMNS,
    SIGMA,
    SQRT_ABAR,
    SQRT_ONE_MINUS_ABAR,
    VARIANCE_TYPES,
)
from fastddpm.ops.noise import randn_tensor
from fastddpm.schedulers.base import Scheduler, SchedulerOutput, as_int
from fastddpm.schedulers.config_mixin import register_to_config


def ddpm_row(alphas_cumprod: torch.Tensor, t: int, prev_t: int, variance_type: str) -> torch.Tensor:
    """One DDPM step t -> prev_t (prev_t < 0 after the last step)."""
    one = torch.tensor(1.0)
    alpha_prod_t = alphas_cumprod[t]
    alpha_prod_t_prev = alphas_cumprod[prev_t] if prev_t >= 0 else one
    beta_prod_t = 1 - alpha_prod_t
    beta_prod_t_prev = 1 - alpha_prod_t_prev
    current_alpha_t = alpha_prod_t / alpha_prod_t_prev
    current_beta_t = 1 - current_alpha_t

    posterior_variance = torch.clamp((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t, min=1e-20)
    if variance_type == "fixed_small":
        sigma = posterior_variance**0.5
    elif variance_type == "fixed_small_log":
        sigma = torch.exp(0.5 * torch.log(posterior_variance))
    elif variance_type == "fixed_large":
        sigma = current_beta_t**0.5
    elif variance_type == "fixed_large_log":
        # diffusers 0.42 takes sqrt(log(beta_t)), which is NaN for every beta_t < 1; the log form means
        # "store log variance, std = exp(log_var / 2)", which is what is computed here (= fixed_large).
        sigma = torch.exp(0.5 * torch.log(current_beta_t))
    elif variance_type in ("learned", "learned_range") or t == 0:
        sigma = torch.tensor(0.0)  # learned: the model's variance channels give it; t = 0 draws no noise
    else:
        raise ValueError(f"variance_type {variance_type!r} is not one of {', '.join(VARIANCE_TYPES)}")

    row = torch.zeros(NUM_COLUMNS, dtype=torch.float32)
    row[SQRT_ABAR] = alpha_prod_t**0.5
    row[SQRT_ONE_MINUS_ABAR] = beta_prod_t**0.5
    row[COEF_X0] = (alpha_prod_t_prev ** (0.5) * current_beta_t) / beta_prod_t
    row[COEF_XT] = current_alpha_t ** (0.5) * beta_prod_t_prev / beta_prod_t
    row[SIGMA] = sigma
    row[LOG_VAR_MIN] = torch.log(posterior_variance)
    row[LOG_VAR_MAX] = torch.log(current_beta_t)
    row[NOISE_ON] = 1.0 if t > 0 else 0.0
    return row


class DDPMScheduler(Scheduler):
    """Ancestral sampling of Ho et al. 2020, as diffusers.DDPMScheduler."""

    kind = "ddpm"

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Any = None,
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        **kwargs: Any,
    ) -> None:
        # An unknown variance_type raises when a step needs the variance (t > 0), not here: diffusers builds
        # such a scheduler and only fails on use, and its tests step one at t = 0.
        self._setup(kwargs)
        self.variance_type = self.config.variance_type

    def previous_timestep(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """The timestep after ``timestep`` in the list, as diffusers returns it: a 0-d tensor once
        set_timesteps ran (tensor(-1) after the last step), else ``timestep - 1``."""
        if self.custom_timesteps or self.num_inference_steps:
            return torch.tensor(self._next_timestep(as_int(timestep)))
        return timestep - 1

    def _row(self, timestep: int, **options: Any) -> torch.Tensor:
        prev = as_int(self.previous_timestep(timestep))
        return self._cached_row(
            (timestep, prev),
            lambda: ddpm_row(self.alphas_cumprod, timestep, prev, self.variance_type),
        )

    def _get_variance(self, t: int, predicted_variance=None, variance_type: str | None = None):
        """The step's variance as diffusers' DDPMScheduler._get_variance returns it (the log or std for
        the *_log types, as there)."""
        t = as_int(t)
        variance_type = variance_type or self.config.variance_type
        prev_t = as_int(self.previous_timestep(t))
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0)
        current_beta_t = 1 - alpha_prod_t / alpha_prod_t_prev
        variance = torch.clamp((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t, min=1e-20)
        if variance_type == "fixed_small":
            return variance
        if variance_type == "fixed_small_log":
            return torch.exp(0.5 * torch.log(variance))
        if variance_type == "fixed_large":
            return current_beta_t
        if variance_type == "fixed_large_log":
            return torch.log(current_beta_t)
        if variance_type == "learned":
            return predicted_variance
        if variance_type == "learned_range":
            frac = (predicted_variance + 1) / 2
            return frac * torch.log(current_beta_t) + (1 - frac) * torch.log(variance)
        raise ValueError(f"variance_type {variance_type!r} is not one of {', '.join(VARIANCE_TYPES)}")

    def default_inference_steps(self) -> int:
        return self.config.num_train_timesteps  # every training timestep, as diffusers' DDPMPipeline

    def _variance_options(self, use_clipped_model_output: bool) -> dict[str, Any]:
        return {"variance_type": self.variance_mode()}

    def variance_mode(self) -> str:
        """How sampler_step gets the noise std: "fixed" (table), "learned" or "learned_range" (model)."""
        return self.variance_type if self.variance_type in ("learned", "learned_range") else "fixed"

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """x_{t-1} from the model's output at t, drawing noise from ``generator`` as diffusers does."""
        t = as_int(timestep)
        mode = self.variance_mode()
        channels = sample.shape[1]
        learned_shape = model_output.shape[1] == 2 * channels
        if mode != "fixed" and not learned_shape:
            raise ValueError(
                f"variance_type {self.variance_type!r} needs a model output with 2 x {channels} channels, "
                f"got {model_output.shape[1]}"
            )
        if mode == "fixed" and learned_shape and model_output.shape[1] != channels:
            model_output = model_output[:, :channels]  # diffusers' fixed types would fail; use the mean half
        noise = None
        if t > 0:
            noise = randn_tensor(sample.shape, generator, model_output.device, model_output.dtype)
        row = self._row(t).to(sample.device)
        prev, x0 = ops.sampler_step(
            model_output, sample, row, noise, kind="ddpm", prediction_type=self.config.prediction_type,
            variance_type=mode, **self._clip_options(),
        )  # fmt: skip
        return SchedulerOutput(prev, x0) if return_dict else (prev, x0)
