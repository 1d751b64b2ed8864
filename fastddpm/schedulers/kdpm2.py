"""KDPM2DiscreteScheduler and KDPM2AncestralDiscreteScheduler: k-diffusion's sample_dpm_2 and
sample_dpm_2_ancestral (DPM-Solver-2 on the probability-flow ODE), with diffusers 0.42's numbers.

Heun's sibling: each step evaluates the network twice, so the timestep list interleaves a midpoint timestep
with every step's after the first. With d = (x - x0_hat(sigma)) / sigma:
    first call, at sigma:        keep x; x_mid = x + d * (sigma_mid - sigma)
    second call, at sigma_mid:   x_next = x_kept + d_mid * (sigma_target - sigma)
sigma_mid is the log-midpoint (geometric mean) of sigma and sigma_target. The plain variant targets
sigma_next; the ancestral one targets sigma_down and adds sigma_up * z after the second call (the same
sigma_up / sigma_down split as Euler ancestral), so only the second call draws noise. The last step is the
first call alone, to sigma 0.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from fastddpm.engine.plan import SamplingPlan
from fastddpm.ops.noise import randn_tensor
from fastddpm.schedulers import sigmas
from fastddpm.schedulers.base import SchedulerOutput
from fastddpm.schedulers.config_mixin import register_to_config
from fastddpm.schedulers.discrete_sigma import DiscreteSigmaScheduler
from fastddpm.schedulers.euler import input_divisor, x0_from_output
from fastddpm.schedulers.linear_rows import NOISE, OUT, LinearStep, X, slot


def _pairs(values: torch.Tensor) -> torch.Tensor:
    """Per-step values laid out per network call: the first once, every later one twice, the last again."""
    return torch.cat([values[:1], values[1:].repeat_interleave(2), values[-1:]])


def _log_midpoint(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """exp of the mean of log a and log b, in float32 through torch.lerp as diffusers computes it."""
    return a.log().lerp(b.log(), 0.5).exp()


def _sigma_to_t_float32(sigma: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """sigmas.sigma_to_t for a 0-d float32 tensor against float32 log sigmas, in float32 throughout: diffusers
    maps the midpoint sigmas back to timesteps with torch operands, so every operation stays float32."""
    log_sigma = torch.from_numpy(np.asarray(np.log(np.maximum(sigma.numpy(), np.float32(1e-10)))))
    dists = log_sigma - log_sigmas[:, None]
    low_idx = (dists >= 0).cumsum(dim=0).argmax(dim=0).clamp(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = ((low - log_sigma) / (low - high)).clamp(0, 1)
    return ((1 - w) * low_idx + w * high_idx).reshape(sigma.shape)


class _KDPM2Common(DiscreteSigmaScheduler):
    """What the two variants share: the schedule with its midpoints, the two-call state and the input scale."""

    order = 2
    prediction_types = ("epsilon", "v_prediction")  # diffusers raises for "sample" (not implemented)
    state_slots = 1  # the first call's sample, for the second
    midpoint_timesteps = slice(1, -1)  # which per-step midpoint timesteps the calls use

    def _setup(self) -> None:
        self._setup_schedule()
        # diffusers' constructor sets every training step as the schedule; set_timesteps has not been called
        self._build_schedule(self.config.num_train_timesteps)
        self.num_inference_steps = None

    @property
    def state_in_first_order(self) -> bool:
        return self.sample is None

    def _midpoints(self, step_sigmas: torch.Tensor) -> torch.Tensor:
        """Per-step midpoint sigmas (float32, as many as ``step_sigmas``); may set per-call extras."""
        raise NotImplementedError

    def _build_schedule(self, steps: int, device=None, train: int | None = None) -> None:
        timesteps = self._spaced_timesteps(steps, train)
        train_sigmas = sigmas.train_sigmas(self.alphas_cumprod)
        step_sigmas = np.interp(timesteps, np.arange(0, len(train_sigmas)), train_sigmas)
        step_sigmas, timesteps = self._spaced_sigmas(step_sigmas, timesteps, steps)
        if sigmas.spacing_of(self.config) == "karras":
            timesteps = timesteps.round()  # diffusers' KDPM2 rounds Karras timesteps (its Heun does not)
        # float32 without a sigma spacing, float64 with one (as diffusers leaves them)
        timesteps = torch.from_numpy(timesteps)
        step_sigmas = torch.from_numpy(np.concatenate([step_sigmas, [0.0]]).astype(np.float32))
        midpoints = self._midpoints(step_sigmas)
        log_sigmas = torch.from_numpy(np.log(train_sigmas))
        mid_timesteps = torch.stack([_sigma_to_t_float32(s, log_sigmas) for s in midpoints])
        mid_timesteps = mid_timesteps[self.midpoint_timesteps].to(timesteps.dtype)
        self.sigmas = _pairs(step_sigmas)
        self.sigmas_interpol = _pairs(midpoints)
        self.log_sigmas = log_sigmas.to(device=device)
        calls = torch.stack([mid_timesteps, timesteps[1:]], dim=-1).flatten()
        self.timesteps = torch.cat([timesteps[:1], calls]).to(device=device)
        self.sample = None
        self._step_index = None
        self._begin_index = None

    def set_timesteps(
        self, num_inference_steps: int | None = None, device: torch.device | str | None = None, **kwargs: Any
    ) -> None:
        train = kwargs.pop("num_train_timesteps", None)
        steps = self._check_steps(num_inference_steps, kwargs)
        self.num_inference_steps = steps
        self._build_schedule(steps, device, train)

    def _input_sigma(self, i: int) -> torch.Tensor:
        """The sigma the network's input is scaled for at call i."""
        raise NotImplementedError

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        """x / sqrt(sigma^2 + 1), sigma the call's: the step's on a first call, the midpoint on a second."""
        if self._step_index is None:
            self._init_step_index(timestep)
        self.is_scale_input_called = True
        return sample / ((self._input_sigma(self._step_index) ** 2 + 1) ** 0.5)

    def _first_order_row(self, i: int, sigma: float, sigma_mid: float) -> LinearStep:
        """The first call of a pair: keep x in slot 0, go to the midpoint."""
        slope = (X - x0_from_output(self.config, OUT, X, sigma)) / sigma
        return LinearStep(X + slope * (sigma_mid - sigma), [X], input_divisor(self.sigmas[i]))


class KDPM2DiscreteScheduler(_KDPM2Common):
    """DPM-Solver-2, as diffusers.KDPM2DiscreteScheduler (order 2: two network calls per step)."""

    kind = "kdpm2"

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: Any = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ) -> None:
        self._setup()

    def _midpoints(self, step_sigmas: torch.Tensor) -> torch.Tensor:
        # step k's midpoint lies between sigma_k and sigma_(k-1): the pairs layout puts it at the second call
        return _log_midpoint(step_sigmas, step_sigmas.roll(1))

    def _input_sigma(self, i: int) -> torch.Tensor:
        return self.sigmas[i] if self.state_in_first_order else self.sigmas_interpol[i]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        self._start_step(timestep)
        i, first = self.step_index, self.state_in_first_order
        if first:
            sigma, sigma_mid, sigma_next = self.sigmas[i], self.sigmas_interpol[i + 1], self.sigmas[i + 1]
        else:
            sigma, sigma_mid, sigma_next = self.sigmas[i - 1], self.sigmas_interpol[i], self.sigmas[i]
        x0 = x0_from_output(self.config, model_output, sample, sigma if first else sigma_mid)
        if first:
            derivative = (sample - x0) / sigma
            dt = sigma_mid - sigma
            self.sample = sample
        else:
            derivative = (sample - x0) / sigma_mid
            dt = sigma_next - sigma
            sample, self.sample = self.sample, None
        prev = sample + derivative * dt
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev, pred_original_sample=x0) if return_dict else (prev, x0)

    def linear_steps(self) -> list[LinearStep]:
        """The calls in pairs as ``step`` takes them: to the midpoint keeping x in slot 0, then the step redone
        from the kept x with the midpoint's slope (the last step is the first call only, to sigma 0)."""
        sig = [float(s) for s in self.sigmas]
        mid = [float(s) for s in self.sigmas_interpol]
        steps = []
        for i in range(len(self.timesteps)):
            if i % 2 == 0:
                steps.append(self._first_order_row(i, sig[i], mid[i + 1]))
            else:
                slope = (X - x0_from_output(self.config, OUT, X, mid[i])) / mid[i]
                x_next = slot(0) + slope * (sig[i] - sig[i - 1])
                steps.append(LinearStep(x_next, [slot(0)], input_divisor(self.sigmas_interpol[i])))
        return steps


class KDPM2AncestralDiscreteScheduler(_KDPM2Common):
    """DPM-Solver-2 with ancestral noise, as diffusers.KDPM2AncestralDiscreteScheduler."""

    kind = "kdpm2_ancestral"
    midpoint_timesteps = slice(0, -2)
    noise_every_step = True  # the loop supplies noise; only the second call of a pair uses (and draws) it

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: Any = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ) -> None:
        self.dt = None
        self._setup()

    def _midpoints(self, step_sigmas: torch.Tensor) -> torch.Tensor:
        # sigma_up / sigma_down of the step from sigma_k to sigma_(k+1), as Euler ancestral's
        sigma_next = step_sigmas.roll(-1)
        sigma_next[-1] = 0.0
        sigma_up = (sigma_next**2 * (step_sigmas**2 - sigma_next**2) / step_sigmas**2) ** 0.5
        sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
        sigma_down[-1] = 0.0
        midpoints = _log_midpoint(step_sigmas, sigma_down)
        midpoints[-2:] = 0.0  # the last step goes straight to 0
        self.sigmas_up, self.sigmas_down = _pairs(sigma_up), _pairs(sigma_down)
        return midpoints

    def _input_sigma(self, i: int) -> torch.Tensor:
        return self.sigmas[i] if self.state_in_first_order else self.sigmas_interpol[i - 1]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        variance_noise: torch.Tensor | None = None,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One call's update; on a second call ``variance_noise`` (a fastddpm extension, as Euler ancestral's)
        replaces the draw from ``generator`` (the pipeline's Philox noise)."""
        self._start_step(timestep)
        i, first = self.step_index, self.state_in_first_order
        k = i if first else i - 1  # the pair's first call
        sigma, sigma_mid = self.sigmas[k], self.sigmas_interpol[k]
        x0 = x0_from_output(self.config, model_output, sample, sigma if first else sigma_mid)
        if first:
            derivative = (sample - x0) / sigma
            self.dt = sigma_mid - sigma
            self.sample = sample
            prev = sample + derivative * self.dt
        else:
            derivative = (sample - x0) / sigma_mid
            dt = self.sigmas_down[k] - sigma
            sample, self.sample = self.sample, None
            prev = sample + derivative * dt
            if variance_noise is not None:
                noise = variance_noise.to(device=model_output.device, dtype=model_output.dtype)
            else:
                noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
            prev = prev + noise * self.sigmas_up[k]
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev, pred_original_sample=x0) if return_dict else (prev, x0)

    def linear_steps(self) -> list[LinearStep]:
        """As KDPM2's, the second call going to sigma_down and adding sigma_up times the step's noise."""
        sig = [float(s) for s in self.sigmas]
        mid = [float(s) for s in self.sigmas_interpol]
        up, down = [float(s) for s in self.sigmas_up], [float(s) for s in self.sigmas_down]
        steps = []
        for i in range(len(self.timesteps)):
            if i % 2 == 0:
                steps.append(self._first_order_row(i, sig[i], mid[i]))
            else:
                k = i - 1
                slope = (X - x0_from_output(self.config, OUT, X, mid[k])) / mid[k]
                x_next = slot(0) + slope * (down[k] - sig[k]) + up[k] * NOISE
                steps.append(LinearStep(x_next, [slot(0)], input_divisor(self.sigmas_interpol[k])))
        return steps

    def sampling_plan(self, num_inference_steps: int | None = None, **settings: Any):
        """The table plan, noise="torch" drawing before the second call of each pair only, as ``step`` does."""
        plan = super().sampling_plan(num_inference_steps, **settings)
        if not isinstance(plan, SamplingPlan):
            return plan
        return dataclasses.replace(plan, noise_draws=tuple(i % 2 == 1 for i in range(plan.steps)))
