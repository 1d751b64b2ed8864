"""DEISMultistepScheduler: diffusion exponential integrator sampling (Zhang & Chen 2023), log-rho
multistep of order 1-3, with diffusers 0.42's numbers.

With rho = sigma / alpha, the step integrates the Lagrange polynomial through the last eps predictions in
log rho exactly: x_next = alpha_next (x / alpha_now + sum_k c_k eps_k).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from fastddpm.schedulers.base import SchedulerOutput
from fastddpm.schedulers.config_mixin import register_to_config
from fastddpm.schedulers.linear_rows import OUT, LinearStep, X, shifted, slot
from fastddpm.schedulers.multistep import MultistepScheduler


def _log(x: torch.Tensor) -> torch.Tensor:
    """numpy's float32 log of a 0-d tensor, as a tensor: diffusers takes np.log of these tensors, and
    numpy's log can differ from torch's in the last bit."""
    return torch.from_numpy(np.asarray(np.log(x.cpu().numpy())))


def _integral_2(t, b, c):
    """Antiderivative in rho of the order-2 Lagrange basis through log b, log c (diffusers' ind_fn)."""
    return t * (-_log(c) + _log(t) - 1) / (_log(b) - _log(c))


def _integral_3(t, b, c, d):
    numerator = t * (
        _log(c) * (_log(d) - _log(t) + 1) - _log(d) * _log(t) + _log(d) + _log(t) ** 2 - 2 * _log(t) + 2
    )
    return numerator / ((_log(b) - _log(c)) * (_log(b) - _log(d)))


def _integral_2_float(t: float, b: float, c: float) -> float:
    """_integral_2 in float64 (the step table's coefficients); IEEE division as torch's (b = c: inf)."""
    t, b, c = np.float64(t), np.float64(b), np.float64(c)
    return t * (-np.log(c) + np.log(t) - 1) / (np.log(b) - np.log(c))


def _integral_3_float(t: float, b: float, c: float, d: float) -> float:
    t, b, c, d = np.float64(t), np.float64(b), np.float64(c), np.float64(d)
    lt, lc, ld = np.log(t), np.log(c), np.log(d)
    numerator = t * (lc * (ld - lt + 1) - ld * lt + ld + lt**2 - 2 * lt + 2)
    return numerator / ((np.log(b) - lc) * (np.log(b) - ld))


class DEISMultistepScheduler(MultistepScheduler):
    """DEIS (log-rho), as diffusers.DEISMultistepScheduler."""

    kind = "deis"

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Any = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "deis",
        solver_type: str = "logrho",
        lower_order_final: bool = True,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ) -> None:
        if algorithm_type in ("dpmsolver", "dpmsolver++"):  # diffusers maps the other solvers' names
            self.register_to_config(algorithm_type="deis")
        elif algorithm_type != "deis":
            raise ValueError(f"scheduler config field algorithm_type={algorithm_type!r} is not deis")
        if solver_type in ("midpoint", "heun", "bh1", "bh2"):
            self.register_to_config(solver_type="logrho")
        elif solver_type != "logrho":
            raise ValueError(f"scheduler config field solver_type={solver_type!r} is not logrho")
        self._setup_schedule(
            {"use_flow_sigmas": use_flow_sigmas, "use_dynamic_shifting": use_dynamic_shifting}
        )

    def convert_model_output(
        self, model_output: torch.Tensor, *args: Any, sample: torch.Tensor | None = None
    ):
        """eps at the current step, through x0 (so thresholding applies)."""
        sample = args[-1] if sample is None and args else sample
        alpha_t, sigma_t = self._sigma_to_alpha_sigma_t(self.sigmas[self.step_index])
        c = self.config
        if c.prediction_type == "epsilon":
            x0 = (sample - sigma_t * model_output) / alpha_t
        elif c.prediction_type == "sample":
            x0 = model_output
        else:
            x0 = alpha_t * sample - sigma_t * model_output
        if c.thresholding:
            x0 = self._threshold_sample(x0)
        return (sample - alpha_t * x0) / sigma_t

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        self._start_step(timestep)
        c, n = self.config, len(self.timesteps)
        last = self._is_last() and c.lower_order_final and n < 15
        second_last = self._is_last(2) and c.lower_order_final and n < 15
        converted = self.convert_model_output(model_output, sample=sample)
        self._push_model_output(converted)
        if c.solver_order == 1 or self.lower_order_nums < 1 or last:
            prev = self._update(1, sample)
        elif c.solver_order == 2 or self.lower_order_nums < 2 or second_last:
            prev = self._update(2, sample)
        else:
            prev = self._update(3, sample)
        if self.lower_order_nums < c.solver_order:
            self.lower_order_nums += 1
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def _update(self, order: int, x: torch.Tensor) -> torch.Tensor:
        i, m = self.step_index, self.model_outputs
        alpha_t, sigma_t = self._sigma_to_alpha_sigma_t(self.sigmas[i + 1])
        alpha_s0, sigma_s0 = self._sigma_to_alpha_sigma_t(self.sigmas[i])
        if order == 1:
            h = (torch.log(alpha_t) - torch.log(sigma_t)) - (torch.log(alpha_s0) - torch.log(sigma_s0))
            return (alpha_t / alpha_s0) * x - (sigma_t * (torch.exp(h) - 1.0)) * m[-1]
        alpha_s1, sigma_s1 = self._sigma_to_alpha_sigma_t(self.sigmas[i - 1])
        rho_t, rho_s0, rho_s1 = sigma_t / alpha_t, sigma_s0 / alpha_s0, sigma_s1 / alpha_s1
        if order == 2:
            coef1 = _integral_2(rho_t, rho_s0, rho_s1) - _integral_2(rho_s0, rho_s0, rho_s1)
            coef2 = _integral_2(rho_t, rho_s1, rho_s0) - _integral_2(rho_s0, rho_s1, rho_s0)
            return alpha_t * (x / alpha_s0 + coef1 * m[-1] + coef2 * m[-2])
        alpha_s2, sigma_s2 = self._sigma_to_alpha_sigma_t(self.sigmas[i - 2])
        rho_s2 = sigma_s2 / alpha_s2
        coef1 = _integral_3(rho_t, rho_s0, rho_s1, rho_s2) - _integral_3(rho_s0, rho_s0, rho_s1, rho_s2)
        coef2 = _integral_3(rho_t, rho_s1, rho_s2, rho_s0) - _integral_3(rho_s0, rho_s1, rho_s2, rho_s0)
        coef3 = _integral_3(rho_t, rho_s2, rho_s0, rho_s1) - _integral_3(rho_s0, rho_s2, rho_s0, rho_s1)
        return alpha_t * (x / alpha_s0 + coef1 * m[-1] + coef2 * m[-2] + coef3 * m[-3])

    def graph_refusal(self) -> str | None:
        if self.config.thresholding:
            return "dynamic thresholding is not a linear update"
        return super().graph_refusal()

    def _order_at(self, i: int) -> int:
        """The order ``step`` takes at step i (lower near the start and, optionally, at the end)."""
        c, n = self.config, len(self.timesteps)
        lower_final = c.lower_order_final and n < 15
        if c.solver_order == 1 or i < 1 or (i == n - 1 and lower_final):
            return 1
        if c.solver_order == 2 or i < 2 or (i == n - 2 and lower_final):
            return 2
        return 3

    def linear_steps(self) -> list[LinearStep]:
        """convert_model_output (eps through x0) and ``_update`` of the order ``step`` takes, in float64."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self._linear_steps()

    def _linear_steps(self) -> list[LinearStep]:

        def alpha_sigma(j: int) -> tuple[float, float]:
            alpha = 1 / (float(self.sigmas[j]) ** 2 + 1) ** 0.5
            return alpha, float(self.sigmas[j]) * alpha

        prediction, steps = self.config.prediction_type, []
        for i in range(len(self.timesteps)):
            alpha_s0, sigma_s0 = alpha_sigma(i)
            if prediction == "epsilon":
                x0 = (X - sigma_s0 * OUT) / alpha_s0
            elif prediction == "sample":
                x0 = OUT
            else:
                x0 = alpha_s0 * X - sigma_s0 * OUT
            m = (X - alpha_s0 * x0) / sigma_s0
            alpha_t, sigma_t = alpha_sigma(i + 1)
            order = self._order_at(i)
            if order == 1:
                h = (math.log(alpha_t) - math.log(sigma_t)) - (math.log(alpha_s0) - math.log(sigma_s0))
                x_next = (alpha_t / alpha_s0) * X - (sigma_t * math.expm1(h)) * m
            else:
                rho_t, rho_s0 = sigma_t / alpha_t, sigma_s0 / alpha_s0
                alpha_s1, sigma_s1 = alpha_sigma(i - 1)
                rho_s1 = sigma_s1 / alpha_s1
                if order == 2:
                    coef1 = _integral_2_float(rho_t, rho_s0, rho_s1) - _integral_2_float(
                        rho_s0, rho_s0, rho_s1
                    )
                    coef2 = _integral_2_float(rho_t, rho_s1, rho_s0) - _integral_2_float(
                        rho_s0, rho_s1, rho_s0
                    )
                    x_next = alpha_t * (X / alpha_s0 + coef1 * m + coef2 * slot(0))
                else:
                    alpha_s2, sigma_s2 = alpha_sigma(i - 2)
                    rho_s2 = sigma_s2 / alpha_s2
                    i3 = _integral_3_float
                    coef1 = i3(rho_t, rho_s0, rho_s1, rho_s2) - i3(rho_s0, rho_s0, rho_s1, rho_s2)
                    coef2 = i3(rho_t, rho_s1, rho_s2, rho_s0) - i3(rho_s0, rho_s1, rho_s2, rho_s0)
                    coef3 = i3(rho_t, rho_s2, rho_s0, rho_s1) - i3(rho_s0, rho_s2, rho_s0, rho_s1)
                    x_next = alpha_t * (X / alpha_s0 + coef1 * m + coef2 * slot(0) + coef3 * slot(1))
            steps.append(LinearStep(x_next, shifted(m, self.state_slots)))
        return steps
