"""EulerDiscreteScheduler and EulerAncestralDiscreteScheduler (Karras et al. 2022, algorithm 2; k-diffusion's
sample_euler_ancestral), with diffusers 0.42's numbers.

In the x = x0 + sigma eps parametrisation, with d = (x - x0_hat) / sigma:
    Euler:            x_next = x + d * (sigma_next - sigma)
    Euler ancestral:  x_next = x + d * (sigma_down - sigma) + sigma_up * z,
                      sigma_up = sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2),
                      sigma_down = sqrt(sigma_next^2 - sigma_up^2)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fastddpm.ops.noise import randn_tensor
from fastddpm.schedulers import sigmas
from fastddpm.schedulers.base import SchedulerOutput
from fastddpm.schedulers.config_mixin import register_to_config
from fastddpm.schedulers.discrete_sigma import DiscreteSigmaScheduler
from fastddpm.schedulers.linear_rows import NOISE, OUT, LinearStep, X


def input_divisor(sigma: torch.Tensor) -> float:
    """What scale_model_input divides the sample by at noise level sigma (a float32 0-d tensor): computed
    in float32 as it does, so the network sees the same input bit for bit."""
    return float((sigma**2 + 1) ** 0.5)


def x0_from_output(config, model_output: torch.Tensor, sample: torch.Tensor, sigma) -> torch.Tensor:
    """x0 from the network output at noise level sigma (x = x0 + sigma eps), diffusers' expressions."""
    if config.prediction_type == "epsilon":
        return sample - sigma * model_output
    if config.prediction_type == "v_prediction":
        return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))
    return model_output


class EulerDiscreteScheduler(DiscreteSigmaScheduler):
    """Euler's method on the probability-flow ODE, as diffusers.EulerDiscreteScheduler."""

    kind = "euler"

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Any = None,
        prediction_type: str = "epsilon",
        interpolation_type: str = "linear",
        use_karras_sigmas: bool | None = False,
        use_exponential_sigmas: bool | None = False,
        use_beta_sigmas: bool | None = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        timestep_spacing: str = "linspace",
        timestep_type: str = "discrete",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        final_sigmas_type: str = "zero",
    ) -> None:
        if interpolation_type not in ("linear", "log_linear"):
            raise ValueError(
                f"scheduler config field interpolation_type={interpolation_type!r} is not linear or log_linear"
            )
        if timestep_type not in ("discrete", "continuous"):
            raise ValueError(
                f"scheduler config field timestep_type={timestep_type!r} is not discrete or continuous"
            )
        if final_sigmas_type not in ("zero", "sigma_min"):
            raise ValueError(
                f"scheduler config field final_sigmas_type={final_sigmas_type!r} is not zero or sigma_min"
            )
        self._setup_schedule()
        if self._continuous_v:
            self.timesteps = torch.Tensor([0.25 * s.log() for s in self.sigmas[:-1]])

    @property
    def _continuous_v(self) -> bool:
        return self.config.timestep_type == "continuous" and self.config.prediction_type == "v_prediction"

    def set_timesteps(
        self, num_inference_steps: int | None = None, device: torch.device | str | None = None, **kwargs: Any
    ) -> None:
        steps = self._check_steps(num_inference_steps, kwargs, custom=("timesteps", "sigmas"))
        if kwargs.get("timesteps") is not None and self._continuous_v:
            raise ValueError(
                "set_timesteps(timesteps=...) cannot be used with continuous v_prediction timesteps"
            )
        self.num_inference_steps = steps
        train = sigmas.train_sigmas(self.alphas_cumprod)
        if kwargs.get("sigmas") is not None:  # explicit sigmas, the final one included
            step_sigmas = np.array(kwargs["sigmas"]).astype(np.float32)
            timesteps = np.array([sigmas.sigma_to_t(s, np.log(train)) for s in step_sigmas[:-1]])
        else:
            if kwargs.get("timesteps") is not None:
                timesteps = np.array(kwargs["timesteps"]).astype(np.float32)
            else:
                timesteps = self._spaced_timesteps(steps)
            if self.config.interpolation_type == "linear":
                step_sigmas = np.interp(timesteps, np.arange(0, len(train)), train)
            else:
                step_sigmas = torch.linspace(np.log(train[-1]), np.log(train[0]), steps + 1).exp().numpy()
            step_sigmas, timesteps = self._spaced_sigmas(step_sigmas, timesteps, steps)
            last = (
                0
                if self.config.final_sigmas_type == "zero"
                else ((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5
            )
            step_sigmas = np.concatenate([step_sigmas, [last]]).astype(np.float32)
        step_sigmas = torch.from_numpy(step_sigmas).to(dtype=torch.float32, device=device)
        if self._continuous_v:
            self.timesteps = torch.Tensor([0.25 * s.log() for s in step_sigmas[:-1]]).to(device=device)
        else:
            self.timesteps = torch.from_numpy(timesteps.astype(np.float32)).to(device=device)
        self.sigmas = step_sigmas.to("cpu")
        self._step_index = None
        self._begin_index = None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        self._refuse_integer_timestep(timestep)
        self._start_step(timestep)
        sample = sample.to(torch.float32)
        sigma = self.sigmas[self.step_index]
        gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:  # "churn": raise the noise level to sigma_hat before the step
            noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
            sample = sample + noise * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
        if self.config.prediction_type == "epsilon":
            x0 = sample - sigma_hat * model_output
        else:
            x0 = x0_from_output(self.config, model_output, sample, sigma)
        derivative = (sample - x0) / sigma_hat
        dt = self.sigmas[self.step_index + 1] - sigma_hat
        prev = (sample + derivative * dt).to(model_output.dtype)
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev, pred_original_sample=x0) if return_dict else (prev, x0)

    state_slots = 0  # Euler keeps nothing between steps

    def linear_steps(self) -> list[LinearStep]:
        """``step`` without churn (the pipeline never churns): x + (x - x0) / sigma * (sigma_next - sigma)."""
        sig = [float(s) for s in self.sigmas]
        steps = []
        for i in range(len(self.timesteps)):
            x0 = x0_from_output(self.config, OUT, X, sig[i])
            x_next = X + (X - x0) * ((sig[i + 1] - sig[i]) / sig[i])
            steps.append(LinearStep(x_next, [], input_divisor(self.sigmas[i])))
        return steps


class EulerAncestralDiscreteScheduler(DiscreteSigmaScheduler):
    """Euler ancestral sampling, as diffusers.EulerAncestralDiscreteScheduler."""

    kind = "euler_ancestral"
    prediction_types = ("epsilon", "v_prediction")  # diffusers raises for "sample" too

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Any = None,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        self._setup_schedule()

    def set_timesteps(
        self, num_inference_steps: int | None = None, device: torch.device | str | None = None, **kwargs: Any
    ) -> None:
        steps = self._check_steps(num_inference_steps, kwargs)
        self.num_inference_steps = steps
        timesteps = self._spaced_timesteps(steps)
        train = sigmas.train_sigmas(self.alphas_cumprod)
        step_sigmas = np.interp(timesteps, np.arange(0, len(train)), train)
        self.sigmas = torch.from_numpy(np.concatenate([step_sigmas, [0.0]]).astype(np.float32))
        self.timesteps = torch.from_numpy(timesteps).to(device=device)
        self._step_index = None
        self._begin_index = None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        variance_noise: torch.Tensor | None = None,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One ancestral step; ``variance_noise`` (a fastddpm extension, as DPMSolver's) replaces the
        draw from ``generator`` (the pipeline's Philox noise)."""
        self._refuse_integer_timestep(timestep)
        self._start_step(timestep)
        sigma = self.sigmas[self.step_index]
        sample = sample.to(torch.float32)
        x0 = x0_from_output(self.config, model_output, sample, sigma)
        sigma_from, sigma_to = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
        sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        derivative = (sample - x0) / sigma
        prev = sample + derivative * (sigma_down - sigma)
        if variance_noise is not None:
            noise = variance_noise.to(device=model_output.device, dtype=model_output.dtype)
        else:
            noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
        prev = (prev + noise * sigma_up).to(model_output.dtype)
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev, pred_original_sample=x0) if return_dict else (prev, x0)

    state_slots = 0
    noise_every_step = True  # diffusers draws every step's noise, the last one's (sigma_up = 0) too

    def linear_steps(self) -> list[LinearStep]:
        sig = [float(s) for s in self.sigmas]
        steps = []
        for i in range(len(self.timesteps)):
            sigma_from, sigma_to = sig[i], sig[i + 1]
            sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
            sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
            x0 = x0_from_output(self.config, OUT, X, sigma_from)
            x_next = X + (X - x0) * ((sigma_down - sigma_from) / sigma_from) + sigma_up * NOISE
            steps.append(LinearStep(x_next, [], input_divisor(self.sigmas[i])))
        return steps
