"""DDIMScheduler: denoising diffusion implicit models (Song et al. 2021), with diffusers 0.42's numbers.

``ddim_row`` computes one step's coefficients with the same float32 tensor operations, in the same order,
as diffusers' DDIMScheduler, so a step that reads the table reproduces diffusers bit for bit.
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
)
from fastddpm.ops.noise import randn_tensor
from fastddpm.schedulers.base import Scheduler, SchedulerOutput, as_int
from fastddpm.schedulers.config_mixin import register_to_config


def ddim_row(
    alphas_cumprod: torch.Tensor, final_alpha_cumprod: torch.Tensor, t: int, prev_t: int, eta: float
) -> torch.Tensor:
    """One DDIM step t -> prev_t with stochasticity eta (prev_t < 0: abar_prev = final_alpha_cumprod)."""
    alpha_prod_t = alphas_cumprod[t]
    alpha_prod_t_prev = alphas_cumprod[prev_t] if prev_t >= 0 else final_alpha_cumprod
    beta_prod_t = 1 - alpha_prod_t
    beta_prod_t_prev = 1 - alpha_prod_t_prev
    variance = (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
    std_dev_t = eta * variance ** (0.5)

    row = torch.zeros(NUM_COLUMNS, dtype=torch.float32)
    row[SQRT_ABAR] = alpha_prod_t**0.5
    row[SQRT_ONE_MINUS_ABAR] = beta_prod_t**0.5
    row[COEF_X0] = alpha_prod_t_prev ** (0.5)
    row[COEF_XT] = (1 - alpha_prod_t_prev - std_dev_t**2) ** (0.5)
    row[SIGMA] = std_dev_t
    row[LOG_VAR_MIN] = torch.log(torch.clamp(variance, min=1e-20))
    row[LOG_VAR_MAX] = torch.log(1 - alpha_prod_t / alpha_prod_t_prev)
    row[NOISE_ON] = 1.0 if eta > 0 else 0.0
    return row


class DDIMScheduler(Scheduler):
    """Denoising diffusion implicit models (Song et al. 2021), as diffusers.DDIMScheduler."""

    kind = "ddim"

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Any = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
        **kwargs: Any,
    ) -> None:
        self._setup(kwargs)
        self.final_alpha_cumprod = (
            torch.tensor(1.0) if self.config.set_alpha_to_one else self.alphas_cumprod[0]
        )

    def _get_variance(self, timestep: int, prev_timestep: int) -> torch.Tensor:
        """(1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev), as diffusers' DDIM computes it."""
        alpha_prod_t = self.alphas_cumprod[as_int(timestep)]
        prev = as_int(prev_timestep)
        alpha_prod_t_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod
        return (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)

    def previous_timestep(self, timestep: int | torch.Tensor) -> int:
        timestep = as_int(timestep)
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step: DDIM needs the number of inference steps")
        if self.custom_timesteps:
            return self._next_timestep(timestep)
        # diffusers steps back by a fixed stride, whatever the spacing put in the timestep list.
        return timestep - self.config.num_train_timesteps // self.num_inference_steps

    def _row(self, timestep: int, eta: float = 0.0, **options: Any) -> torch.Tensor:
        prev = self.previous_timestep(timestep)
        return self._cached_row(
            (timestep, prev, float(eta)),
            lambda: ddim_row(self.alphas_cumprod, self.final_alpha_cumprod, timestep, prev, eta),
        )

    def _table_options(self, eta: float) -> dict[str, Any]:
        return {"eta": eta}

    def _variance_options(self, use_clipped_model_output: bool) -> dict[str, Any]:
        return {"variance_type": "fixed", "use_clipped_model_output": use_clipped_model_output}

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | list[torch.Generator] | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """x_prev by the DDIM update with stochasticity ``eta`` (0: deterministic)."""
        t = as_int(timestep)
        channels = sample.shape[1]
        if model_output.shape[1] == 2 * channels:
            model_output = model_output[:, :channels]  # a learned-variance model: DDIM uses its mean half
        noise = None
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError("pass either generator or variance_noise, not both")
            noise = variance_noise
            if noise is None:
                noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
        row = self._row(t, eta=eta).to(sample.device)
        prev, x0 = ops.sampler_step(
            model_output, sample, row, noise, kind="ddim", prediction_type=self.config.prediction_type,
            use_clipped_model_output=bool(use_clipped_model_output), **self._clip_options(),
        )  # fmt: skip
        return SchedulerOutput(prev, x0) if return_dict else (prev, x0)
