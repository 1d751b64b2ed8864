"""SASolverScheduler: SA-Solver (Xue et al. 2023, stochastic Adams predictor-corrector for diffusion SDEs),
with diffusers 0.42's numbers.

In lambda = log(alpha / sigma), each step integrates the SDE whose stochasticity tau(t) the config's
``tau_func`` sets (0: the probability-flow ODE; 1: the reverse SDE; by default 1 for timesteps 200..800):
    corrector (from the second step on): redo the previous step from its start, its noise and the history
        now including the new model output (implicit Adams-Moulton, up to corrector_order outputs)
    predictor: step on from the corrected sample with the last predictor_order outputs and new noise
        (explicit Adams-Bashforth)
Both weigh the converted outputs (x0 for data_prediction, eps for noise_prediction) by integrals of
exp(+-(1 + tau^2) lambda) against the Lagrange polynomials through the outputs' lambdas. Every step draws
noise, even where tau = 0 (which multiplies it by 0), exactly as diffusers draws it.

Each network evaluation is linear in (x, model output, noise, state), so it runs as a linear table: the
state is the previous outputs, the sample the last predictor started from and the noise it drew.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fastddpm.ops.noise import randn_tensor
from fastddpm.schedulers.base import SchedulerOutput
from fastddpm.schedulers.config_mixin import register_to_config
from fastddpm.schedulers.linear_rows import NOISE, OUT, Lin, LinearStep, X, slot
from fastddpm.schedulers.multistep import MultistepScheduler

ALGORITHMS = ("data_prediction", "noise_prediction")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")  # diffusers' SASolverScheduler has these


def default_tau(t: Any) -> int:
    """diffusers' default stochasticity: 1 (the reverse SDE) for timesteps in [200, 800], else 0 (the ODE)."""
    return 1 if t >= 200 and t <= 800 else 0


# ----------------------------------------------------------------------------------------------- the maths
# Written for 0-d float32 tensors (``step``: the same operations as diffusers, in its order) and for numpy
# float64 scalars (the table: IEEE inf / nan instead of exceptions).
def _exp(x):
    return torch.exp(x) if torch.is_tensor(x) else np.exp(x)


def _log(x):
    return torch.log(x) if torch.is_tensor(x) else np.log(x)


def _sqrt(x):
    return torch.sqrt(x) if torch.is_tensor(x) else np.sqrt(x)


def _polynomial(x, order: int, alternating: bool):
    """sum_j order! / (order - j)! x^(order - j) (j = 0..order), signs alternating from + when asked, summed
    from the highest power down (the integrals' antiderivative factors)."""
    value = 1 if order == 0 else (x if order == 1 else x**order)
    for j in range(1, order + 1):
        weight = math.factorial(order) // math.factorial(order - j)
        power = order - j
        term = weight if power == 0 else (weight * x if power == 1 else weight * x**power)
        value = value - term if alternating and j % 2 else value + term
    return value


def _integral_negative(order: int, start, end):
    """Integral of exp(-u) u^order over [start, end] (noise_prediction)."""
    return _exp(-end) * (
        _polynomial(start, order, False) * _exp(end - start) - _polynomial(end, order, False)
    )


def _integral_positive(order: int, start, end, tau):
    """Integral of exp((1 + tau^2) u) u^order over [start, end] (data_prediction), by the change of
    variable v = (1 + tau^2) u."""
    g = 1 + tau**2
    end_v, start_v = g * end, g * start
    difference = _polynomial(end_v, order, True) - _polynomial(start_v, order, True) * _exp(
        -(end_v - start_v)
    )
    return _exp(end_v) * difference / g ** (order + 1)


def _product(values: list):
    return functools.reduce(operator.mul, values)  # left to right, as a written-out product


def _lagrange_basis(nodes: list) -> list[list]:
    """Each Lagrange basis polynomial over ``nodes`` in expanded form, highest power first:
    prod_{j != i} (u - nodes[j]) / prod_{j != i} (nodes[i] - nodes[j]), the coefficient of u^(k - d) being
    (-1)^d times the d-th elementary symmetric sum of the other nodes."""
    if len(nodes) == 1:
        return [[1]]
    rows = []
    for i, node in enumerate(nodes):
        others = nodes[:i] + nodes[i + 1 :]
        denominator = _product([node - other for other in others])
        row = [1 / denominator]
        for degree in range(1, len(others) + 1):
            symmetric = functools.reduce(
                operator.add, [_product(list(chosen)) for chosen in itertools.combinations(others, degree)]
            )
            row.append((-symmetric if degree % 2 else symmetric) / denominator)
        rows.append(row)
    return rows


class SASolverScheduler(MultistepScheduler):
    """SA-Solver, as diffusers.SASolverScheduler."""

    kind = "sa_solver"
    noise_every_step = True  # diffusers draws noise in every step, the last one and tau = 0 included

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Any = None,
        predictor_order: int = 2,
        corrector_order: int = 2,
        prediction_type: str = "epsilon",
        tau_func: Callable | None = None,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "data_prediction",
        lower_order_final: bool = True,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ) -> None:
        if algorithm_type not in ALGORITHMS:
            raise ValueError(
                f"scheduler config field algorithm_type={algorithm_type!r} is not one of {', '.join(ALGORITHMS)}"
            )
        if trained_betas is None and beta_schedule not in BETA_SCHEDULES:
            raise ValueError(
                f"scheduler config field beta_schedule={beta_schedule!r} is not one of {', '.join(BETA_SCHEDULES)}"
            )
        if thresholding and algorithm_type == "noise_prediction":  # diffusers' step fails on it
            raise ValueError(
                "scheduler config field thresholding=True needs algorithm_type='data_prediction' "
                "(diffusers' noise_prediction step cannot threshold)"
            )
        if tau_func is not None and not callable(tau_func):
            raise ValueError(f"scheduler config field tau_func must be callable or None, got {tau_func!r}")
        self._setup_schedule({"use_flow_sigmas": use_flow_sigmas})
        self.tau_func = default_tau if tau_func is None else tau_func
        self.predict_x0 = algorithm_type == "data_prediction"
        self.timestep_list: list[Any] = [None] * self._history_length()
        self.last_sample: torch.Tensor | None = None
        self.last_noise: torch.Tensor | None = None

    def _check_orders(self) -> None:
        for field in ("predictor_order", "corrector_order"):
            if self.config[field] not in (1, 2, 3, 4):
                raise ValueError(
                    f"scheduler config field {field}={self.config[field]!r} must be 1, 2, 3 or 4"
                )

    def _history_length(self) -> int:
        return max(self.config.predictor_order, self.config.corrector_order - 1)

    def set_timesteps(self, num_inference_steps=None, device=None, **kwargs: Any) -> None:
        super().set_timesteps(num_inference_steps, device, **kwargs)
        self.last_sample = None

    def convert_model_output(
        self, model_output: torch.Tensor, *args: Any, sample: torch.Tensor | None = None
    ):
        """x0 (data_prediction) or eps (noise_prediction) from the model output at the current step."""
        sample = args[-1] if sample is None and args else sample
        if sample is None:
            raise ValueError("convert_model_output needs sample")
        if self.predict_x0:
            return self._x0_prediction(model_output, sample)
        return self._eps_prediction(model_output, sample)

    # ----------------------------------------------------------------------------------- the update
    def _lambda_alpha_sigma_of(self, sigma):
        alpha, sigma_t = self._sigma_to_alpha_sigma_t(sigma)
        return _log(alpha) - _log(sigma_t), alpha, sigma_t

    def _gradient_coefficients(self, order: int, start, end, nodes: list, tau) -> list:
        """The weights of the last ``order`` outputs (newest first): the Lagrange basis through their lambdas
        integrated against the exponential over [start, end]."""
        if self.predict_x0:
            integrals = [_integral_positive(order - 1 - j, start, end, tau) for j in range(order)]
        else:
            integrals = [_integral_negative(order - 1 - j, start, end) for j in range(order)]
        coefficients = []
        for row in _lagrange_basis(nodes):
            coefficient = 0
            for weight, integral in zip(row, integrals, strict=True):
                coefficient = coefficient + weight * integral
            coefficients.append(coefficient)
        return coefficients

    def _weights(self, sigmas, i: int, order: int, tau, corrector: bool):
        """(a, [w_k], s) of one predictor (from step i to i + 1) or corrector (from i - 1 to i) update:
        x_new = a x_start + sum_k w_k output_k + s z, outputs newest first (the corrector's newest is step i's).
        ``sigmas``: float32 tensors (the step) or numpy float64 (the table)."""
        start, target = (i - 1, i) if corrector else (i, i + 1)
        lam_t, alpha_t, sigma_t = self._lambda_alpha_sigma_of(sigmas[target])
        lam_s0, alpha_s0, sigma_s0 = self._lambda_alpha_sigma_of(sigmas[start])
        h = lam_t - lam_s0
        nodes = [self._lambda_alpha_sigma_of(sigmas[i - k])[0] for k in range(order)]
        coefficients = self._gradient_coefficients(order, lam_s0, lam_t, nodes, tau)
        g = 1 + tau**2
        if self.predict_x0 and order == 2:
            # SA-Solver's O(h^3) modification of the second-order weights (as UniPC's), corrector and predictor
            if corrector:
                shift = 1.0 * _exp(g * lam_t) * (h / 2 - (h * g - 1 + _exp(g * (-h))) / (g**2 * h))
            else:
                lam_previous = self._lambda_alpha_sigma_of(sigmas[i - 1])[0]
                shift = 1.0 * _exp(g * lam_t) * (h**2 / 2 - (h * g - 1 + _exp(g * (-h))) / g**2)
                shift = shift / (lam_s0 - lam_previous)
            coefficients[0] = coefficients[0] + shift
            coefficients[1] = coefficients[1] - shift
        if self.predict_x0:
            a = _exp(-(tau**2) * h) * (sigma_t / sigma_s0)
            weights = [g * sigma_t * _exp(-(tau**2) * lam_t) * c for c in coefficients]
            s = sigma_t * _sqrt(1 - _exp(-2 * tau**2 * h))
        else:
            a = alpha_t / alpha_s0
            weights = [-g * alpha_t * c for c in coefficients]
            s = tau * sigma_t * _sqrt(_exp(2 * h) - 1)
        return a, weights, s

    def _update(self, x, outputs, noise, order: int, tau, corrector: bool) -> torch.Tensor:
        a, weights, s = self._weights(self.sigmas, self.step_index, order, tau, corrector)
        gradient = torch.zeros_like(x)
        for k, weight in enumerate(weights):
            gradient += weight * outputs[-(k + 1)]
        return (a * x + gradient + s * noise).to(x.dtype)

    def _orders(self, i: int, lower_order_nums: int) -> tuple[int, int]:
        """(this step's predictor order, the next step's corrector order), with the warm-up and, with
        lower_order_final, the last steps' lower orders."""
        c, n = self.config, len(self.timesteps)
        predictor, corrector = c.predictor_order, c.corrector_order
        if c.lower_order_final:
            predictor, corrector = min(predictor, n - i), min(corrector, n - i + 1)
        return min(predictor, lower_order_nums + 1), min(corrector, lower_order_nums + 2)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        variance_noise: torch.Tensor | None = None,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """Correct the previous step with this model output, then predict the next sample with new noise.
        ``variance_noise`` (a fastddpm extension) replaces the draw from ``generator`` (Philox noise)."""
        self._start_step(timestep)
        i = self.step_index
        converted = self.convert_model_output(model_output, sample=sample)
        if i > 0 and self.last_sample is not None:
            tau = self.tau_func(self.timestep_list[-1])  # the previous step's
            # the last predictor's step redone from its start, with its noise and the new output
            outputs = [*self.model_outputs, converted]
            sample = self._update(
                self.last_sample, outputs, self.last_noise, self.this_corrector_order, tau, True
            )
        for k in range(self._history_length() - 1):
            self.model_outputs[k] = self.model_outputs[k + 1]
            self.timestep_list[k] = self.timestep_list[k + 1]
        self.model_outputs[-1] = converted
        self.timestep_list[-1] = timestep
        if variance_noise is not None:
            noise = variance_noise.to(device=model_output.device, dtype=model_output.dtype)
        else:  # the sample's shape: diffusers' (the model output's) fails later for a learned-variance output
            noise = randn_tensor(sample.shape, generator, model_output.device, model_output.dtype)
        self.this_predictor_order, self.this_corrector_order = self._orders(i, self.lower_order_nums)
        self.last_sample, self.last_noise = sample, noise
        tau = self.tau_func(timestep)
        prev = self._update(sample, self.model_outputs, noise, self.this_predictor_order, tau, False)
        if self.lower_order_nums < self._history_length():
            self.lower_order_nums += 1
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """q-sampling by training timestep, sqrt(abar_t) x0 + sqrt(1 - abar_t) noise (diffusers' SA-Solver
        takes DDPM's, not the step sigmas)."""
        abar = self.alphas_cumprod.to(device=original_samples.device, dtype=original_samples.dtype)
        abar = abar[timesteps.to(original_samples.device)].flatten()
        shape = (-1,) + (1,) * (original_samples.dim() - 1)
        return (abar**0.5).reshape(shape) * original_samples + ((1 - abar) ** 0.5).reshape(shape) * noise

    # ------------------------------------------------------------------------------- the step table
    @property
    def state_slots(self) -> int:
        """max(orders) - 1 earlier converted outputs (newest first), the predictor's start and its noise."""
        return max(self.config.predictor_order, self.config.corrector_order) + 1

    def graph_refusal(self) -> str | None:
        if self.config.thresholding:
            return "dynamic thresholding is not a linear update"
        return super().graph_refusal()

    def _converted(self, i: int, sigmas: np.ndarray) -> Lin:
        """convert_model_output at step i."""
        _, alpha, sigma = self._lambda_alpha_sigma_of(sigmas[i])
        prediction = self.config.prediction_type
        if self.predict_x0:
            return {
                "epsilon": (X - sigma * OUT) / alpha,
                "sample": OUT,
                "v_prediction": alpha * X - sigma * OUT,
            }[prediction]
        return {"epsilon": OUT, "sample": (X - alpha * OUT) / sigma, "v_prediction": alpha * OUT + sigma * X}[
            prediction
        ]

    def linear_steps(self) -> list[LinearStep]:
        """Per step as ``step`` takes it: the corrector from the kept start and noise (slots history, history
        + 1) with the new output, then the predictor; tau_func evaluated here, on the host, per timestep."""
        history_slots = self.state_slots - 2
        kept_sample, kept_noise = slot(history_slots), slot(history_slots + 1)
        sigmas = self.sigmas.double().numpy()
        taus = [float(self.tau_func(t)) for t in self.timesteps]
        steps, lower_order_nums, corrector_order = [], 0, 1
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for i in range(len(self.timesteps)):
                outputs = [self._converted(i, sigmas)] + [
                    slot(k) for k in range(history_slots)
                ]  # newest first
                sample = X
                if i > 0:
                    a, weights, s = self._weights(sigmas, i, corrector_order, taus[i - 1], True)
                    sample = a * kept_sample + s * kept_noise
                    for k, weight in enumerate(weights):
                        sample = sample + weight * outputs[k]
                predictor_order, corrector_order = self._orders(i, lower_order_nums)
                a, weights, s = self._weights(sigmas, i, predictor_order, taus[i], False)
                x_next = a * sample + s * NOISE
                for k, weight in enumerate(weights):
                    x_next = x_next + weight * outputs[k]
                steps.append(LinearStep(x_next, [*outputs[:history_slots], sample, NOISE]))
                lower_order_nums = min(lower_order_nums + 1, self._history_length())
        return steps

    # ----------------------------------------------------------------------------------- the config
    def to_json_string(self) -> str:
        if self.config.tau_func is not None:
            raise ValueError(
                "scheduler config field tau_func is a function, which a JSON config cannot hold: save the "
                "scheduler with tau_func=None (diffusers' default) and pass the function again after loading"
            )
        return super().to_json_string()

    def __repr__(self) -> str:
        if self.config.tau_func is None:
            return super().__repr__()
        return f"{type(self).__name__}({dict(self.config)})"
