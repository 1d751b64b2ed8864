"""DPMSolverMultistepScheduler: DPM-Solver and DPM-Solver++ (Lu et al. 2022), ODE and SDE, orders 1-3,
with diffusers 0.42's numbers.

With lambda = log(alpha / sigma), h = lambda_next - lambda_now and D0, D1, D2 the divided differences of
the last converted outputs (x0 for the ++ variants, eps otherwise), one step is

    x_next = a * x + b0 * D0 + b1 * D1 + b2 * D2 + s * z

``step`` evaluates the coefficients in diffusers' order (bit-exact with it); ``update_row`` gives the same
coefficients over the raw history (m0, m1, m2), the form a fused linear-combination update reads.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from fastddpm.ops.noise import randn_tensor
from fastddpm.schedulers.base import SchedulerOutput
from fastddpm.schedulers.config_mixin import register_to_config
from fastddpm.schedulers.linear_rows import NOISE, OUT, LinearStep, X, shifted, slot
from fastddpm.schedulers.multistep import MultistepScheduler

ALGORITHMS = ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++")
SOLVER_TYPES = ("midpoint", "heun")


class DPMSolverMultistepScheduler(MultistepScheduler):
    """DPM-Solver(++) multistep, as diffusers.DPMSolverMultistepScheduler."""

    kind = "dpm_solver"
    karras_rounds_always = False
    takes_custom_timesteps = True
    final_sigma_from_spacing = False

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
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ) -> None:
        if algorithm_type == "deis":  # diffusers maps the other solvers' names onto its own
            self.register_to_config(algorithm_type="dpmsolver++")
        if solver_type in ("logrho", "bh1", "bh2"):
            self.register_to_config(solver_type="midpoint")
        c = self.config
        if c.algorithm_type not in ALGORITHMS:
            raise ValueError(
                f"scheduler config field algorithm_type={c.algorithm_type!r} is not one of {', '.join(ALGORITHMS)}"
            )
        if c.solver_type not in SOLVER_TYPES:
            raise ValueError(
                f"scheduler config field solver_type={c.solver_type!r} is not one of {', '.join(SOLVER_TYPES)}"
            )
        if final_sigmas_type not in ("zero", "sigma_min"):
            raise ValueError(
                f"scheduler config field final_sigmas_type={final_sigmas_type!r} is not zero or sigma_min"
            )
        if c.algorithm_type not in ("dpmsolver++", "sde-dpmsolver++") and final_sigmas_type == "zero":
            raise ValueError(
                f"scheduler config field final_sigmas_type='zero' needs algorithm_type dpmsolver++ or "
                f"sde-dpmsolver++, not {c.algorithm_type!r}: set final_sigmas_type='sigma_min'"
            )
        self._setup_schedule(
            {"use_flow_sigmas": use_flow_sigmas, "use_dynamic_shifting": use_dynamic_shifting}
        )

    @property
    def _is_sde(self) -> bool:
        return self.config.algorithm_type.startswith("sde-")

    @property
    def _predicts_x0(self) -> bool:
        return self.config.algorithm_type.endswith("++")

    def convert_model_output(
        self, model_output: torch.Tensor, *args: Any, sample: torch.Tensor | None = None
    ):
        """x0 (dpmsolver++ variants) or eps (dpmsolver variants) from the model output at the current step."""
        sample = args[-1] if sample is None and args else sample
        if sample is None:
            raise ValueError("convert_model_output needs sample")
        if self._predicts_x0:
            return self._x0_prediction(model_output, sample)
        return self._eps_prediction(model_output, sample)

    def _order_now(self) -> int:
        """This step's order: lower near the start (too little history) and, optionally, at the end."""
        c, n = self.config, len(self.timesteps)
        last = self._is_last() and (
            c.euler_at_final or (c.lower_order_final and n < 15) or c.final_sigmas_type == "zero"
        )
        second_last = self._is_last(2) and c.lower_order_final and n < 15
        if c.solver_order == 1 or self.lower_order_nums < 1 or last:
            return 1
        if c.solver_order == 2 or self.lower_order_nums < 2 or second_last:
            return 2
        return 3

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        self._start_step(timestep)
        order = self._order_now()
        converted = self.convert_model_output(model_output, sample=sample)
        self._push_model_output(converted)
        sample = sample.to(torch.float32)
        noise = None
        if self._is_sde:
            if variance_noise is None:
                noise = randn_tensor(converted.shape, generator, converted.device, torch.float32)
            else:
                noise = variance_noise.to(device=converted.device, dtype=torch.float32)
        prev = self._update(order, sample, noise)
        if self.lower_order_nums < self.config.solver_order:
            self.lower_order_nums += 1
        prev = prev.to(converted.dtype)
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def _update(self, order: int, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """One step of the given order, the terms in diffusers' order of evaluation."""
        i, kind, heun = self.step_index, self.config.algorithm_type, self.config.solver_type == "heun"
        lam_t, alpha_t, sigma_t = self._lambda_alpha_sigma(i + 1)
        lam_s0, alpha_s0, sigma_s0 = self._lambda_alpha_sigma(i)
        h = lam_t - lam_s0
        m = self.model_outputs
        D0 = m[-1]
        if order == 2:
            lam_s1 = self._lambda_alpha_sigma(i - 1)[0]
            r0 = (lam_s0 - lam_s1) / h
            D1 = (1.0 / r0) * (m[-1] - m[-2])
        elif order == 3:
            lam_s1 = self._lambda_alpha_sigma(i - 1)[0]
            lam_s2 = self._lambda_alpha_sigma(i - 2)[0]
            r0, r1 = (lam_s0 - lam_s1) / h, (lam_s1 - lam_s2) / h
            D1_0, D1_1 = (1.0 / r0) * (m[-1] - m[-2]), (1.0 / r1) * (m[-2] - m[-3])
            D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
            D2 = (1.0 / (r0 + r1)) * (D1_0 - D1_1)

        if kind == "dpmsolver++":
            phi = torch.exp(-h) - 1.0
            x_t = (sigma_t / sigma_s0) * x - (alpha_t * phi) * D0
            if order == 2 and not heun:
                x_t = x_t - 0.5 * (alpha_t * phi) * D1
            elif order >= 2:
                x_t = x_t + (alpha_t * (phi / h + 1.0)) * D1
            if order == 3:
                x_t = x_t - (alpha_t * ((torch.exp(-h) - 1.0 + h) / h**2 - 0.5)) * D2
            return x_t
        if kind == "dpmsolver":
            phi = torch.exp(h) - 1.0
            x_t = (alpha_t / alpha_s0) * x - (sigma_t * phi) * D0
            if order == 2 and not heun:
                x_t = x_t - 0.5 * (sigma_t * phi) * D1
            elif order >= 2:
                x_t = x_t - (sigma_t * (phi / h - 1.0)) * D1
            if order == 3:
                x_t = x_t - (sigma_t * ((torch.exp(h) - 1.0 - h) / h**2 - 0.5)) * D2
            return x_t
        if kind == "sde-dpmsolver++":
            decay = 1.0 - torch.exp(-2.0 * h)
            x_t = (sigma_t / sigma_s0 * torch.exp(-h)) * x + (alpha_t * decay) * D0
            if order == 2 and not heun:
                x_t = x_t + 0.5 * (alpha_t * decay) * D1
            elif order >= 2:
                x_t = x_t + (alpha_t * (decay / (-2.0 * h) + 1.0)) * D1
            if order == 3:
                x_t = x_t + (alpha_t * ((decay - 2.0 * h) / (2.0 * h) ** 2 - 0.5)) * D2
            return x_t + sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise
        # sde-dpmsolver: diffusers has orders 1 and 2 only (order 3 returns nothing there)
        if order == 3:
            raise ValueError("algorithm_type='sde-dpmsolver' supports solver_order 1 and 2 (as in diffusers)")
        phi = torch.exp(h) - 1.0
        x_t = (alpha_t / alpha_s0) * x - 2.0 * (sigma_t * phi) * D0
        if order == 2 and not heun:
            x_t = x_t - (sigma_t * phi) * D1
        elif order == 2:
            x_t = x_t - 2.0 * (sigma_t * (phi / h - 1.0)) * D1
        return x_t + sigma_t * torch.sqrt(torch.exp(2 * h) - 1.0) * noise

    state_slots = 2  # the converted outputs of the two previous steps (order 3 reads both)

    @property
    def noise_every_step(self) -> bool:
        return self._is_sde

    def graph_refusal(self) -> str | None:
        c = self.config
        if c.thresholding:
            return "dynamic thresholding is not a linear update"
        if c.algorithm_type == "sde-dpmsolver" and c.solver_order == 3:
            return "sde-dpmsolver has no order 3 (as in diffusers)"
        return super().graph_refusal()

    def linear_steps(self) -> list[LinearStep]:
        """Each step's conversion of the model output and its update, with the order ``step`` takes."""
        saved = (self._step_index, self.lower_order_nums)
        steps = []
        try:
            for i in range(len(self.timesteps)):
                self._step_index, self.lower_order_nums = i, min(i, self.config.solver_order)
                conv_x, conv_out = self._conversion_row(i)
                a, c0, c1, c2, s = self.update_row().tolist()
                m = conv_x * X + conv_out * OUT
                x_next = a * X + c0 * m + c1 * slot(0) + c2 * slot(1) + s * NOISE
                steps.append(LinearStep(x_next, shifted(m, self.state_slots)))
        finally:
            self._step_index, self.lower_order_nums = saved
        return steps

    def _conversion_row(self, i: int) -> tuple[float, float]:
        """(weight of x, weight of the model output) of convert_model_output at step i (it is linear)."""
        alpha, sigma = (v.double().item() for v in self._sigma_to_alpha_sigma_t(self.sigmas[i]))
        prediction = self.config.prediction_type
        if self._predicts_x0:
            return {
                "epsilon": (1 / alpha, -sigma / alpha),
                "sample": (0.0, 1.0),
                "v_prediction": (alpha, -sigma),
            }[prediction]
        return {"epsilon": (0.0, 1.0), "sample": (1 / sigma, -alpha / sigma), "v_prediction": (sigma, alpha)}[
            prediction
        ]

    def update_row(self, order: int | None = None) -> torch.Tensor:
        """float64 coefficients (a, c0, c1, c2, s) of x_next = a x + c0 m0 + c1 m1 + c2 m2 + s z for the
        current step, m0 the newest converted output: the linear-combination form of ``_update``.

        A zero-length step (h = 0: Karras sigmas with final_sigmas_type="sigma_min" end on the last step's
        own sigma) follows IEEE arithmetic as torch does in ``step``: r0 = inf, 1 / r0 = 0, so the step
        leaves x unchanged instead of dividing by zero in Python."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self._update_row(order)

    def _update_row(self, order: int | None) -> torch.Tensor:
        order = self._order_now() if order is None else order
        i, kind = self.step_index, self.config.algorithm_type
        heun = self.config.solver_type == "heun" or order == 3  # order 3 has one D1 weight, heun's
        lam = lambda j: self._lambda_alpha_sigma(j)[0].double().item()  # noqa: E731
        _, alpha_t, sigma_t = (v.double().item() for v in self._lambda_alpha_sigma(i + 1))
        _, alpha_s0, sigma_s0 = (v.double().item() for v in self._lambda_alpha_sigma(i))
        h = np.float64(lam(i + 1) - lam(i))  # numpy: x / 0 is inf or nan, as in torch
        # weights of D0, D1, D2 as in _update, then D in terms of m0, m1, m2
        if kind.endswith("++") and not kind.startswith("sde"):
            a, phi = sigma_t / sigma_s0, math.expm1(-h)
            w = [-alpha_t * phi, -0.5 * alpha_t * phi if not heun else alpha_t * (phi / h + 1.0)]
            w.append(-alpha_t * ((math.exp(-h) - 1.0 + h) / h**2 - 0.5))
            s = 0.0
        elif kind == "dpmsolver":
            a, phi = alpha_t / alpha_s0, math.expm1(h)
            w = [-sigma_t * phi, -0.5 * sigma_t * phi if not heun else -sigma_t * (phi / h - 1.0)]
            w.append(-sigma_t * ((math.exp(h) - 1.0 - h) / h**2 - 0.5))
            s = 0.0
        elif kind == "sde-dpmsolver++":
            decay = -math.expm1(-2.0 * h)
            a = sigma_t / sigma_s0 * math.exp(-h)
            w = [alpha_t * decay, 0.5 * alpha_t * decay if not heun else alpha_t * (decay / (-2.0 * h) + 1.0)]
            w.append(alpha_t * ((decay - 2.0 * h) / (2.0 * h) ** 2 - 0.5))
            s = sigma_t * math.sqrt(-math.expm1(-2 * h))
        else:
            a, phi = alpha_t / alpha_s0, math.expm1(h)
            w = [-2.0 * sigma_t * phi, -sigma_t * phi if not heun else -2.0 * sigma_t * (phi / h - 1.0), 0.0]
            s = sigma_t * math.sqrt(math.expm1(2 * h))
        c = [w[0], 0.0, 0.0]
        if order == 2:
            r0 = (lam(i) - lam(i - 1)) / h
            c[0] += w[1] / r0
            c[1] -= w[1] / r0
        elif order == 3:
            r0, r1 = (lam(i) - lam(i - 1)) / h, (lam(i - 1) - lam(i - 2)) / h
            # D1_0 = (m0 - m1) / r0, D1_1 = (m1 - m2) / r1; D1 = D1_0 + r0/(r0+r1) (D1_0 - D1_1);
            # D2 = (D1_0 - D1_1) / (r0 + r1)
            k = w[1] * r0 / (r0 + r1) + w[2] / (r0 + r1)  # weight of (D1_0 - D1_1)
            d10, d11 = w[1] + k, -k  # weights of D1_0, D1_1
            c[0] += d10 / r0
            c[1] += -d10 / r0 + d11 / r1
            c[2] += -d11 / r1
        return torch.tensor([a, *c, s], dtype=torch.float64)
