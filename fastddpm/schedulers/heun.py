"""HeunDiscreteScheduler: Heun's second-order method on the probability-flow ODE (Karras et al. 2022,
algorithm 1 without churn), with diffusers 0.42's numbers.

Each step evaluates the network twice, so the timestep list repeats every step after the first: the first
call of a pair takes an Euler step to sigma_next and keeps its slope; the second averages the two slopes
and redoes the step from the kept sample.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fastddpm.schedulers import schedules, sigmas
from fastddpm.schedulers.base import SchedulerOutput
from fastddpm.schedulers.config_mixin import register_to_config
from fastddpm.schedulers.discrete_sigma import DiscreteSigmaScheduler
from fastddpm.schedulers.euler import input_divisor, x0_from_output
from fastddpm.schedulers.linear_rows import OUT, LinearStep, X, slot


class HeunDiscreteScheduler(DiscreteSigmaScheduler):
    """Heun's method, as diffusers.HeunDiscreteScheduler (order 2: two network calls per step)."""

    kind = "heun"
    order = 2
    beta_schedules = (*schedules.BETA_SCHEDULES, "exp")  # diffusers' Heun also has exp(-12 t)

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: Any = None,
        prediction_type: str = "epsilon",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ) -> None:
        self._setup_schedule()
        self.prev_derivative = None
        self.dt = None
        self.sample = None

    @property
    def state_in_first_order(self) -> bool:
        return self.dt is None

    def set_timesteps(
        self, num_inference_steps: int | None = None, device: torch.device | str | None = None, **kwargs: Any
    ) -> None:
        custom = kwargs.get("timesteps")
        train = kwargs.pop("num_train_timesteps", None)
        steps = self._check_steps(num_inference_steps, kwargs, custom=("timesteps",))
        self.num_inference_steps = steps
        if custom is not None:
            timesteps = np.array(custom, dtype=np.float32)
        else:
            timesteps = self._spaced_timesteps(steps, train)
        train = sigmas.train_sigmas(self.alphas_cumprod)
        step_sigmas = np.interp(timesteps, np.arange(0, len(train)), train)
        step_sigmas, timesteps = self._spaced_sigmas(step_sigmas, timesteps, steps)
        sig = torch.from_numpy(np.concatenate([step_sigmas, [0.0]]).astype(np.float32)).to(device=device)
        self.sigmas = torch.cat([sig[:1], sig[1:-1].repeat_interleave(2), sig[-1:]]).to("cpu")
        timesteps = torch.from_numpy(timesteps)
        self.timesteps = torch.cat([timesteps[:1], timesteps[1:].repeat_interleave(2)]).to(
            device=device, dtype=torch.float32
        )
        self.prev_derivative = None
        self.dt = None
        self.sample = None
        self._step_index = None
        self._begin_index = None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        self._start_step(timestep)
        first = self.state_in_first_order
        i = self.step_index
        sigma, sigma_next = (
            (self.sigmas[i], self.sigmas[i + 1]) if first else (self.sigmas[i - 1], self.sigmas[i])
        )
        sigma_input = sigma if first else sigma_next
        x0 = x0_from_output(self.config, model_output, sample, sigma_input)
        if self.config.clip_sample:
            x0 = x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        if first:
            derivative = (sample - x0) / sigma
            dt = sigma_next - sigma
            self.prev_derivative, self.dt, self.sample = derivative, dt, sample
        else:
            derivative = (self.prev_derivative + (sample - x0) / sigma_next) / 2
            dt, sample = self.dt, self.sample
            self.prev_derivative = self.dt = self.sample = None
        prev = sample + derivative * dt
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev, pred_original_sample=x0) if return_dict else (prev, x0)

    state_slots = 2  # the first evaluation's sample and slope, for the second

    def graph_refusal(self) -> str | None:
        if self.config.clip_sample:
            return "clip_sample is not a linear update"
        return super().graph_refusal()

    def linear_steps(self) -> list[LinearStep]:
        """The evaluations in pairs as ``step`` takes them: an Euler step that keeps (x, slope) in slots
        0 and 1, then the step redone from the kept x with the mean slope (the last step is Euler only)."""
        sig = [float(s) for s in self.sigmas]
        steps, first = [], True
        for i in range(len(self.timesteps)):
            if first:
                slope = (X - x0_from_output(self.config, OUT, X, sig[i])) / sig[i]
                steps.append(
                    LinearStep(X + slope * (sig[i + 1] - sig[i]), [X, slope], input_divisor(self.sigmas[i]))
                )
            else:
                slope = (slot(1) + (X - x0_from_output(self.config, OUT, X, sig[i])) / sig[i]) / 2
                x_next = slot(0) + slope * (sig[i] - sig[i - 1])
                steps.append(LinearStep(x_next, [slot(0), slot(1)], input_divisor(self.sigmas[i])))
            first = not first
        return steps
