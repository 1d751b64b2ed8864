"""DDPMScheduler: ancestral sampling of Ho et al. 2020, with diffusers 0.42's numbers.

``ddpm_row`` computes one step's coefficients with the same float32 tensor operations, in the same order,
as diffusers' DDPMScheduler, so a step that reads the table reproduces diffusers bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch

from fastddpm import ops
from fastddpm.ops.noise import randn_tensor
from fastddpm.ops.step_columns import (
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
from fastddpm.schedulers.base import COMMON_DEFAULTS, Scheduler, SchedulerOutput, as_int


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
    elif variance_type in ("learned", "learned_range"):
        sigma = torch.tensor(0.0)  # the std comes from the model's variance channels
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
    _defaults = {**COMMON_DEFAULTS, "variance_type": "fixed_small"}

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        if self.config.variance_type not in VARIANCE_TYPES:
            raise ValueError(
                f"scheduler config field variance_type={self.config.variance_type!r} is not one of "
                f"{', '.join(VARIANCE_TYPES)}"
            )
        self.variance_type = self.config.variance_type

    def previous_timestep(self, timestep: int | torch.Tensor) -> int:
        timestep = as_int(timestep)
        if self.custom_timesteps or self.num_inference_steps:
            return self._next_timestep(timestep)
        return timestep - 1

    def _row(self, timestep: int, **options: Any) -> torch.Tensor:
        prev = self.previous_timestep(timestep)
        return self._cached_row(
            (timestep, prev),
            lambda: ddpm_row(self.alphas_cumprod, timestep, prev, self.variance_type),
        )

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
