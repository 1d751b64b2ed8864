"""LMSDiscreteScheduler: k-diffusion's sample_lms (a linear multistep method on the probability-flow ODE),
with diffusers 0.42's numbers.

In the x = x0 + sigma eps parametrisation, with d_k = (x_k - x0_hat_k) / sigma_k the ODE's derivative at
step k, step i of order p (p = min(i + 1, order), order 4 by default) is

    x_next = x + sum_{j < p} c_j d_(i-j),   c_j = integral from sigma_i to sigma_(i+1) of L_j(tau) d tau,

L_j the Lagrange basis polynomial through sigma_i, ..., sigma_(i-p+1) that is 1 at sigma_(i-j). diffusers
integrates L_j with scipy.integrate.quad on a float32 integrand; L_j has degree p - 1 <= 3, so Gauss-Legendre
with p nodes integrates it exactly, and fastddpm does that in float64 (no scipy at run time).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fastddpm.schedulers import sigmas
from fastddpm.schedulers.base import SchedulerOutput
from fastddpm.schedulers.config_mixin import register_to_config
from fastddpm.schedulers.discrete_sigma import DiscreteSigmaScheduler
from fastddpm.schedulers.euler import input_divisor, x0_from_output
from fastddpm.schedulers.linear_rows import OUT, LinearStep, X, shifted, slot

DEFAULT_ORDER = 4  # step()'s default in diffusers, and what a pipeline's loop (which never passes it) uses


def lms_coefficient(step_sigmas: np.ndarray, i: int, order: int, j: int) -> float:
    """c_j of step i at this order: the integral of the Lagrange basis polynomial that is 1 at
    sigma_(i-j) and 0 at the other nodes sigma_i, ..., sigma_(i-order+1), from sigma_i to sigma_(i+1).

    The polynomial has degree order - 1, so ``order`` Gauss-Legendre nodes (exact to degree 2 order - 1)
    give the integral exactly up to float64 rounding; it is evaluated in its product form at the nodes."""
    nodes = np.asarray([step_sigmas[i - k] for k in range(order)], dtype=np.float64)
    a, b = np.float64(step_sigmas[i]), np.float64(step_sigmas[i + 1])
    points, weights = np.polynomial.legendre.leggauss(order)
    tau = (b - a) / 2 * points + (a + b) / 2
    basis = np.ones_like(tau)
    for k in range(order):
        if k != j:
            basis *= (tau - nodes[k]) / (nodes[j] - nodes[k])
    return float((b - a) / 2 * np.dot(weights, basis))


class LMSDiscreteScheduler(DiscreteSigmaScheduler):
    """Linear multistep sampling, as diffusers.LMSDiscreteScheduler."""

    kind = "lms"
    state_slots = DEFAULT_ORDER - 1  # the derivatives of the three previous steps, newest first

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Any = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ) -> None:
        self._setup_schedule()
        # diffusers' constructor sets every training step as the schedule (num_inference_steps included)
        self.set_timesteps(num_train_timesteps)

    def set_timesteps(
        self, num_inference_steps: int | None = None, device: torch.device | str | None = None, **kwargs: Any
    ) -> None:
        steps = self._check_steps(num_inference_steps, kwargs)
        self.num_inference_steps = steps
        timesteps = self._spaced_timesteps(steps)
        train = sigmas.train_sigmas(self.alphas_cumprod)
        step_sigmas = np.interp(timesteps, np.arange(0, len(train)), train)
        step_sigmas, timesteps = self._spaced_sigmas(step_sigmas, timesteps, steps)
        self.sigmas = torch.from_numpy(np.concatenate([step_sigmas, [0.0]]).astype(np.float32))
        self.timesteps = torch.from_numpy(np.asarray(timesteps)).to(device=device, dtype=torch.float32)
        self.derivatives: list[torch.Tensor] = []
        self._step_index = None
        self._begin_index = None

    def _spaced_sigmas(self, step_sigmas: np.ndarray, timesteps: np.ndarray, steps: int):
        """As the other sigma samplers, except that diffusers' LMS spaces Karras sigmas between the step
        sigmas' own ends whatever sigma_min / sigma_max a config holds (its exponential and beta spacings
        read them)."""
        if sigmas.spacing_of(self.config) != "karras":
            return super()._spaced_sigmas(step_sigmas, timesteps, steps)
        log_sigmas = np.log(sigmas.train_sigmas(self.alphas_cumprod))
        spaced = sigmas.karras(step_sigmas, steps)
        return spaced, np.array([sigmas.sigma_to_t(s, log_sigmas) for s in spaced])

    def get_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
        """diffusers' name for c_(current_order) of step t at this order (see ``lms_coefficient``)."""
        return lms_coefficient(self.sigmas.numpy(), t, order, current_order)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        order: int = DEFAULT_ORDER,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One step of the given order (lower while the history is shorter), keeping the last ``order``
        derivatives, in diffusers' order of operations."""
        self._start_step(timestep)
        i = self.step_index
        sigma = self.sigmas[i]
        x0 = x0_from_output(self.config, model_output, sample, sigma)
        self.derivatives.append((sample - x0) / sigma)
        if len(self.derivatives) > order:
            self.derivatives.pop(0)
        order = min(i + 1, order)
        coefficients = [self.get_lms_coefficient(order, i, j) for j in range(order)]
        prev = sample + sum(c * d for c, d in zip(coefficients, reversed(self.derivatives), strict=False))
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev, pred_original_sample=x0) if return_dict else (prev, x0)

    def linear_steps(self) -> list[LinearStep]:
        """``step`` at the default order from the start of the schedule: the derivative is linear in x and the
        model output; slots 0..2 hold the previous steps' derivatives, newest first."""
        sig = self.sigmas.numpy()
        steps = []
        for i in range(len(self.timesteps)):
            sigma = float(sig[i])
            derivative = (X - x0_from_output(self.config, OUT, X, sigma)) / sigma
            history = [derivative] + [slot(k) for k in range(self.state_slots)]
            order = min(i + 1, DEFAULT_ORDER)
            x_next = X
            for j in range(order):
                x_next = x_next + lms_coefficient(sig, i, order, j) * history[j]
            steps.append(
                LinearStep(x_next, shifted(derivative, self.state_slots), input_divisor(self.sigmas[i]))
            )
        return steps
