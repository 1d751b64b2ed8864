"""DPMSolverSinglestepScheduler: singlestep DPM-Solver and DPM-Solver++ (Lu et al. 2022), ODE and SDE,
orders 1-3, with diffusers 0.42's numbers.

A singlestep solver of order k spends k network calls on one step of the ODE: its schedule's per-step orders
(``order_list``) run 1, 2, ..., k in groups. The group's first call steps from the kept sample with order 1
and keeps that sample; each later call redoes the group's step from the kept sample with one more order, out
to the next sigma, from the converted outputs (x0 for the ++ variants, eps otherwise) of the group's calls:

    x_next = a * x_kept + w0 * D0 + w1 * D1 (+ w2 * D2) (+ s * z)

with h = lambda_next - lambda_kept and D the divided differences of the outputs in lambda. As a table (one
row per call) the state is the kept sample and the previous one or two converted outputs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from fastddpm.ops.noise import randn_tensor
from fastddpm.schedulers.base import SchedulerOutput
from fastddpm.schedulers.config_mixin import register_to_config
from fastddpm.schedulers.dpm_solver import DPMSolverMultistepScheduler
from fastddpm.schedulers.linear_rows import NOISE, OUT, LinearStep, X, slot
from fastddpm.schedulers.multistep import MultistepScheduler

ALGORITHMS = ("dpmsolver", "dpmsolver++", "sde-dpmsolver++")  # diffusers' singlestep has no sde-dpmsolver
SOLVER_TYPES = ("midpoint", "heun")


def order_list(steps: int, solver_order: int, lower_order_final: bool, final_zero: bool) -> list[int]:
    """Each step's order, as diffusers' get_order_list: groups 1, 2, ..., solver_order; with
    lower_order_final the last group is cut short to fit the steps exactly; a final sigma of 0 ends on
    order 1. (Without lower_order_final a count not divisible by the order leaves the list short; diffusers'
    set_timesteps turns lower_order_final on in that case.)"""
    group = list(range(1, solver_order + 1))
    full, rest = divmod(steps, solver_order)
    if not lower_order_final or solver_order == 1:
        orders = group * full
    elif solver_order == 3 and rest == 0:
        orders = group * (full - 1) + [1, 2, 1]
    elif solver_order == 2 and rest == 0:
        orders = group * (full - 1) + [1, 1]
    else:
        orders = group * full + group[:rest]
    if final_zero and orders:  # (diffusers raises IndexError on the empty list: fewer steps than the order)
        orders[-1] = 1
    return orders


class DPMSolverSinglestepScheduler(MultistepScheduler):
    """Singlestep DPM-Solver(++), as diffusers.DPMSolverSinglestepScheduler."""

    kind = "dpm_solver_singlestep"
    karras_rounds_always = True  # diffusers' singlestep rounds Karras timesteps for every beta schedule
    takes_custom_timesteps = True
    final_sigma_from_spacing = False

    # The conversion of the model output, lambda_min_clipped and the SDE / x0 switches are the multistep
    # solver's (diffusers' two classes share that code too).
    _last_timestep = DPMSolverMultistepScheduler._last_timestep
    _is_sde = DPMSolverMultistepScheduler._is_sde
    _predicts_x0 = DPMSolverMultistepScheduler._predicts_x0
    convert_model_output = DPMSolverMultistepScheduler.convert_model_output
    _conversion_row = DPMSolverMultistepScheduler._conversion_row

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
        lower_order_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
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
        if algorithm_type not in ("dpmsolver++", "sde-dpmsolver++") and final_sigmas_type == "zero":
            # the name as given: diffusers refuses 'deis' here too, before mapping it to dpmsolver++
            raise ValueError(
                f"scheduler config field final_sigmas_type='zero' needs algorithm_type dpmsolver++ or "
                f"sde-dpmsolver++, not {algorithm_type!r}: set final_sigmas_type='sigma_min'"
            )
        if c.algorithm_type == "dpmsolver" and thresholding:
            raise ValueError(
                "scheduler config field thresholding=True needs algorithm_type dpmsolver++ or sde-dpmsolver++: "
                "diffusers' singlestep 'dpmsolver' indexes alpha_t with no timestep there and fails"
            )
        self._setup_schedule(
            {"use_flow_sigmas": use_flow_sigmas, "use_dynamic_shifting": use_dynamic_shifting}
        )
        self.sample = None
        self.order_list = self.get_order_list(num_train_timesteps)

    def _timestep_spacing(self) -> str:
        return "linspace"  # diffusers' singlestep has no timestep_spacing field

    def get_order_list(self, num_inference_steps: int) -> list[int]:
        c = self.config
        return order_list(
            num_inference_steps, c.solver_order, c.lower_order_final, c.final_sigmas_type == "zero"
        )

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        mu: float | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """The timesteps as the multistep solver spaces them (linspace), then the per-step orders; like
        diffusers this turns lower_order_final on (in the config) when the steps do not fill whole groups
        or the final sigma is 0."""
        if mu is not None:
            raise ValueError("set_timesteps argument 'mu' (dynamic shifting) is not supported by fastddpm")
        super().set_timesteps(num_inference_steps, device, timesteps=timesteps)
        c = self.config
        if not c.lower_order_final and (
            self.num_inference_steps % c.solver_order != 0 or c.final_sigmas_type == "zero"
        ):
            self.register_to_config(lower_order_final=True)
        self.sample = None
        self.order_list = self.get_order_list(self.num_inference_steps)

    def _order_now(self) -> int:
        """The order list's order, lower while the history holds fewer outputs (a schedule entered late)."""
        order = self.order_list[self.step_index]
        while self.model_outputs[-order] is None:
            order -= 1
        return order

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        variance_noise: torch.Tensor | None = None,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """One call; ``variance_noise`` (a fastddpm extension, as DPMSolverMultistep's) replaces the SDE
        variant's draw from ``generator`` (the pipeline's Philox noise)."""
        self._start_step(timestep)
        converted = self.convert_model_output(model_output, sample=sample)
        self._push_model_output(converted)
        noise = None
        if self._is_sde:
            if variance_noise is None:
                noise = randn_tensor(converted.shape, generator, converted.device, converted.dtype)
            else:
                noise = variance_noise.to(device=converted.device, dtype=converted.dtype)
        order = self._order_now()
        if order == 1:
            self.sample = sample
        prev = self._update(order, self.sample, noise)
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def _coefficients(self, order: int, h, exp=torch.exp, sqrt=torch.sqrt) -> list[Any]:
        """[weight of the kept sample, of D0, of D1 (midpoint order 3: of D1_1), of D2, of the noise] of the
        current call's update of this order, h = lambda_next - lambda at the group's first call; each as
        diffusers writes the term, on float32 0-d tensors (``step``) or on float64 floats (the table), a
        missing term None. Heun's D1 weight is also midpoint order 3's weight of D1_1."""
        i, kind, heun = self.step_index, self.config.algorithm_type, self.config.solver_type == "heun"
        _, alpha_t, sigma_t = self._lambda_alpha_sigma(i + 1)
        _, alpha_s, sigma_s = self._lambda_alpha_sigma(i + 1 - order)
        if not torch.is_tensor(h):  # the float64 form: every operand a float
            alpha_t, sigma_t, alpha_s, sigma_s = (
                v.double().item() for v in (alpha_t, sigma_t, alpha_s, sigma_s)
            )
        w1 = w2 = s = None
        if kind == "dpmsolver++":
            a = sigma_t / sigma_s
            w0 = -(alpha_t * (exp(-h) - 1.0))
            if order >= 2 and (heun or order == 3):
                w1 = alpha_t * ((exp(-h) - 1.0) / h + 1.0)
            elif order == 2:
                w1 = -(0.5 * (alpha_t * (exp(-h) - 1.0)))
            if order == 3 and heun:
                w2 = -(alpha_t * ((exp(-h) - 1.0 + h) / h**2 - 0.5))
        elif kind == "dpmsolver":
            a = alpha_t / alpha_s
            w0 = -(sigma_t * (exp(h) - 1.0))
            if order >= 2 and (heun or order == 3):
                w1 = -(sigma_t * ((exp(h) - 1.0) / h - 1.0))
            elif order == 2:
                w1 = -(0.5 * (sigma_t * (exp(h) - 1.0)))
            if order == 3 and heun:
                w2 = -(sigma_t * ((exp(h) - 1.0 - h) / h**2 - 0.5))
        else:  # sde-dpmsolver++
            a = sigma_t / sigma_s * exp(-h)
            w0 = alpha_t * (1.0 - exp(-2.0 * h))
            if order >= 2 and (heun or order == 3):
                w1 = alpha_t * ((1.0 - exp(-2.0 * h)) / (-2.0 * h) + 1.0)
            elif order == 2:
                w1 = 0.5 * (alpha_t * (1.0 - exp(-2.0 * h)))
            if order == 3 and heun:
                w2 = alpha_t * ((1.0 - exp(-2.0 * h) + (-2.0 * h)) / (-2.0 * h) ** 2 - 0.5)
            s = sigma_t * sqrt(1.0 - exp(-2 * h))
        return [a, w0, w1, w2, s]

    def _lambdas(self, order: int) -> list[torch.Tensor]:
        """lambda at the target and at the group's calls, newest first: [lambda_t, lambda_s0, ...]."""
        i = self.step_index
        return [self._lambda_alpha_sigma(j)[0] for j in range(i + 1, i - order, -1)]

    def _update(self, order: int, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """The group's step of this order from the kept sample x, the terms summed in diffusers' order."""
        m = self.model_outputs
        lam = self._lambdas(order)
        h = lam[0] - lam[-1]
        a, w0, w1, w2, s = self._coefficients(order, h)
        if order == 1:
            d = [m[-1]]
        elif order == 2:
            r0 = (lam[1] - lam[2]) / h
            d = [m[-2], (1.0 / r0) * (m[-1] - m[-2])]
        else:
            r0, r1 = (lam[1] - lam[3]) / h, (lam[2] - lam[3]) / h
            d1_0, d1_1 = (1.0 / r1) * (m[-2] - m[-3]), (1.0 / r0) * (m[-1] - m[-3])
            if self.config.solver_type == "heun":
                d = [m[-3], (r0 * d1_0 - r1 * d1_1) / (r0 - r1), 2.0 * (d1_1 - d1_0) / (r0 - r1)]
            else:
                d = [m[-3], d1_1]
        x_t = a * x
        for weight, term in zip([w0, w1, w2], d, strict=False):
            x_t = x_t + weight * term
        if s is not None:
            x_t = x_t + s * noise
        return x_t

    @property
    def state_slots(self) -> int:
        """The kept sample and the group's earlier converted outputs (none at order 1: every step is its own)."""
        order = self.config.solver_order
        return 0 if order == 1 else order

    @property
    def noise_every_step(self) -> bool:
        return self._is_sde

    def graph_refusal(self) -> str | None:
        if self.config.thresholding:
            return "dynamic thresholding is not a linear update"
        return super().graph_refusal()

    def linear_steps(self) -> list[LinearStep]:
        """Each call from the start of the schedule: slot 0 the kept sample, slots 1 and 2 the previous
        converted outputs, newest first; the same divided differences as ``_update`` in float64."""
        saved = self._step_index
        steps = []
        try:
            with np.errstate(divide="ignore", invalid="ignore"):
                for i in range(len(self.timesteps)):
                    self._step_index = i
                    # _order_now from the start: the history holds i + 1 outputs at call i
                    steps.append(self._linear_step(min(self.order_list[i], i + 1)))
        finally:
            self._step_index = saved
        return steps

    def _linear_step(self, order: int) -> LinearStep:
        conv_x, conv_out = self._conversion_row(self.step_index)
        m0 = conv_x * X + conv_out * OUT
        kept = X if order == 1 else slot(0)
        m = [m0, slot(1), slot(2)]  # newest first
        lam = [np.float64(v.double().item()) for v in self._lambdas(order)]
        h = lam[0] - lam[-1]
        a, w0, w1, w2, s = self._coefficients(order, h, exp=math.exp, sqrt=math.sqrt)
        if order == 1:
            d = [m[0]]
        elif order == 2:
            r0 = (lam[1] - lam[2]) / h
            d = [m[1], (m[0] - m[1]) / r0]
        else:
            r0, r1 = (lam[1] - lam[3]) / h, (lam[2] - lam[3]) / h
            d1_0, d1_1 = (m[1] - m[2]) / r1, (m[0] - m[2]) / r0
            if self.config.solver_type == "heun":
                d = [m[2], (r0 * d1_0 - r1 * d1_1) / (r0 - r1), (d1_1 - d1_0) * (2.0 / (r0 - r1))]
            else:
                d = [m[2], d1_1]
        x_next = a * kept
        for weight, term in zip([w0, w1, w2], d, strict=False):
            x_next = x_next + weight * term
        if s is not None:
            x_next = x_next + s * NOISE
        state = [kept, m0, slot(1)][: self.state_slots]
        return LinearStep(x_next, state)
