"""DPMSolverSDEScheduler: k-diffusion's sample_dpmpp_sde (DPM-Solver++ SDE, second order, Brownian-tree
noise), with diffusers 0.42's numbers.

Each step from sigma to sigma_next evaluates the network twice, like Heun's: the timestep list interleaves
the step's log-midpoint sigma_mid (t = -log sigma, t_mid = (t + t_next) / 2) with every step after the first.
Both calls take an ancestral DPM-Solver++(1) step from the step's start x, with x0_hat of the call's sigma:
    to a target sigma_to, sigma_up = min(sigma_to, sqrt(sigma_to^2 (sigma^2 - sigma_to^2) / sigma^2)),
    sigma_down = sqrt(sigma_to^2 - sigma_up^2):  x' = (sigma_down / sigma) x + (1 - sigma_down / sigma) x0_hat
                                                       + sigma_up * n
the first call to sigma_mid (x0_hat at sigma), the second to sigma_next (x0_hat at sigma_mid, from the kept x);
n is the Brownian path's normalised increment over the same interval (brownian_noise.py: a torchsde tree for
noise="torch" and diffusers' numbers, a bridge over Philox normals for noise="philox"). The last step is one
Euler call to sigma 0. prediction_type "sample" is refused at construction (diffusers raises in step).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np
import torch

from fastddpm.engine.plan import SamplingPlan
from fastddpm.schedulers import sigmas
from fastddpm.schedulers.base import SchedulerOutput
from fastddpm.schedulers.brownian_noise import BrownianTreeNoise, TreeDraws, bridge_weights, import_torchsde
from fastddpm.schedulers.config_mixin import register_to_config
from fastddpm.schedulers.discrete_sigma import DiscreteSigmaScheduler
from fastddpm.schedulers.euler import input_divisor, x0_from_output
from fastddpm.schedulers.linear_rows import NOISE, OUT, LinearStep, X, slot

NOISE_MODES = ("torch", "philox")


def _t(sigma: torch.Tensor) -> torch.Tensor:
    return sigma.log().neg()


def _sigma(t: torch.Tensor) -> torch.Tensor:
    return t.neg().exp()


@dataclasses.dataclass
class CallTerms:
    """One call's float32 quantities, in diffusers' operations (``step`` and the table rows share them)."""

    sigma: torch.Tensor  # the step's start
    sigma_next: torch.Tensor  # the step's end
    sigma_input: torch.Tensor  # x0_hat's (and the network input's) sigma: sigma, or the midpoint
    scale_x: torch.Tensor | None = None  # sigma_down / sigma (None: the final Euler call)
    x0_weight: torch.Tensor | None = None  # 1 - sigma_down / sigma, as -expm1(t - t_down)
    sigma_up: torch.Tensor | None = None
    query: tuple[torch.Tensor, torch.Tensor] | None = None  # the noise's interval (from, to)


class DPMSolverSDEScheduler(DiscreteSigmaScheduler):
    """DPM-Solver++ SDE, as diffusers.DPMSolverSDEScheduler (order 2: two network calls per step)."""

    kind = "dpm_sde"
    order = 2
    prediction_types = ("epsilon", "v_prediction")  # diffusers raises for "sample" (not implemented)
    beta_schedules = ("linear", "scaled_linear", "squaredcos_cap_v2")  # diffusers' three
    state_slots = 2  # the step's start x, and the first call's noise (the Philox bridge reads it)
    noise_every_step = True

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
        noise_sampler_seed: int | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ) -> None:
        self._setup_schedule()
        # diffusers' constructor sets every training step as the schedule (num_inference_steps included)
        self.set_timesteps(num_train_timesteps, None, num_train_timesteps)
        self.use_karras_sigmas = use_karras_sigmas
        self.noise_sampler_seed = noise_sampler_seed

    @property
    def state_in_first_order(self) -> bool:
        return self.sample is None

    # ------------------------------------------------------------------------------------------ schedule
    def _float64_timesteps(self, steps: int, train: int) -> np.ndarray:
        """Descending timesteps in float64 (this class's dtype in diffusers, unlike its Euler / Heun)."""
        c = self.config
        if c.timestep_spacing == "linspace":
            return np.linspace(0, train - 1, steps, dtype=float)[::-1].copy()
        if c.timestep_spacing == "leading":
            ratio = train // steps
            return (np.arange(0, steps) * ratio).round()[::-1].copy().astype(float) + c.steps_offset
        return np.arange(train, 0, -train / steps).round().copy().astype(float) - 1

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        num_train_timesteps: int | None = None,
        **kwargs: Any,
    ) -> None:
        steps = self._check_steps(num_inference_steps, kwargs)
        self.num_inference_steps = steps
        train = num_train_timesteps or self.config.num_train_timesteps
        timesteps = self._float64_timesteps(steps, train)
        train_sigmas = sigmas.train_sigmas(self.alphas_cumprod)
        log_sigmas = np.log(train_sigmas)
        step_sigmas = np.interp(timesteps, np.arange(0, len(train_sigmas)), train_sigmas)
        step_sigmas, timesteps = self._spaced_sigmas(step_sigmas, timesteps, steps)
        # the midpoint of each step in t = -log sigma, mapped back to a (fractional) training timestep
        t = -np.log(step_sigmas)
        midpoints = np.exp(-(t[:-1] + np.diff(t) * 0.5))
        mid_timesteps = np.array([sigmas.sigma_to_t(s, log_sigmas) for s in midpoints])
        step = torch.from_numpy(np.concatenate([step_sigmas, [0.0]]).astype(np.float32))
        self.sigmas = torch.cat([step[:1], step[1:-1].repeat_interleave(2), step[-1:]])
        calls = torch.from_numpy(timesteps)
        calls = torch.cat([calls[:1], calls[1:].repeat_interleave(2)])
        calls[1::2] = torch.from_numpy(mid_timesteps).to(calls.dtype)
        self.timesteps = calls.to(device=device)
        self.sample = None
        self.mid_point_sigma = None
        self._first_noise = None  # the first call's variance_noise, for the second's bridge
        self._step_index = None
        self._begin_index = None
        self.noise_sampler = None

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        """x / sqrt(sigma^2 + 1), sigma the call's: the step's on a first call, the midpoint on a second."""
        if self._step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self._step_index] if self.state_in_first_order else self.mid_point_sigma
        self.is_scale_input_called = True
        return sample / ((sigma**2 + 1) ** 0.5)

    # ---------------------------------------------------------------------------------------------- step
    def _terms(self, i: int, first: bool) -> CallTerms:
        """Call i's quantities in diffusers' float32 operations; ``first``: a pair's first call (or the last)."""
        sigma, sigma_next = (
            (self.sigmas[i], self.sigmas[i + 1]) if first else (self.sigmas[i - 1], self.sigmas[i])
        )
        t, t_next = _t(sigma), _t(sigma_next)
        t_mid = t + (t_next - t) * 0.5
        terms = CallTerms(sigma, sigma_next, sigma if first else _sigma(t_mid))
        if sigma_next == 0:
            return terms  # the last step: Euler to 0, no noise
        if first:
            t_next = t_mid
        sigma_from, sigma_to = _sigma(t), _sigma(t_next)
        sigma_up = min(sigma_to, (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
        t_down = _t((sigma_to**2 - sigma_up**2) ** 0.5)
        # diffusers subtracts expm1(t - t_down) * x0; adding its negation is the same float32 operation
        terms.scale_x, terms.x0_weight = _sigma(t_down) / _sigma(t), -(t - t_down).expm1()
        terms.sigma_up, terms.query = sigma_up, (sigma_from, sigma_to)
        return terms

    def _noise_range(self) -> tuple[float, float]:
        """The tree's interval: the smallest positive and the largest sigma of the schedule."""
        return self.sigmas[self.sigmas > 0].min().item(), self.sigmas.max().item()

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
        s_noise: float = 1.0,
        variance_noise: torch.Tensor | None = None,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One call's update. ``variance_noise`` (a fastddpm extension: the eager loop's Philox normal) is the
        call's independent N(0, I); the second call bridges it with the first's (brownian_noise.py) instead
        of querying the Brownian tree, which then is never built."""
        self._start_step(timestep)
        if self.noise_sampler is None and variance_noise is None:
            self.noise_sampler = BrownianTreeNoise(sample, *self._noise_range(), self.noise_sampler_seed)
        first = self.state_in_first_order
        terms = self._terms(self._step_index, first)
        x0 = x0_from_output(self.config, model_output, sample, terms.sigma_input)
        if terms.query is None:
            derivative = (sample - x0) / terms.sigma
            prev = sample + derivative * (terms.sigma_next - terms.sigma)
        else:
            start = sample if first else self.sample
            prev = terms.scale_x * start + terms.x0_weight * x0
            noise = self._call_noise(terms, first, variance_noise, model_output)
            prev = prev + noise * s_noise * terms.sigma_up
            if first:
                self.sample, self.mid_point_sigma = start, terms.query[1]
            else:
                self.sample = self.mid_point_sigma = self._first_noise = None
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev, pred_original_sample=x0) if return_dict else (prev, x0)

    def _call_noise(self, terms: CallTerms, first: bool, variance_noise, like: torch.Tensor) -> torch.Tensor:
        if variance_noise is None:
            return self.noise_sampler(*terms.query)
        z = variance_noise.to(device=like.device, dtype=like.dtype)
        if first:
            self._first_noise = z
            return z
        w1, w2 = bridge_weights(float(terms.sigma), float(terms.sigma_input), float(terms.sigma_next))
        return w1 * self._first_noise + w2 * z

    # -------------------------------------------------------------------------------------------- tables
    def _rows(self, bridge: bool) -> list[LinearStep]:
        """The calls as ``step`` takes them. Slot 0 keeps the step's start x, slot 1 the first call's noise;
        ``bridge``: the second call's noise is the Philox bridge of slot 1 and its own normal (else the
        loop's noise buffer holds the tree's increment itself)."""
        rows, first = [], True
        for i in range(len(self.timesteps)):
            terms = self._terms(i, first)
            x0 = x0_from_output(self.config, OUT, X, float(terms.sigma_input))
            divisor = input_divisor(terms.sigma_input)
            if terms.query is None:
                slope = (X - x0) / float(terms.sigma)
                rows.append(
                    LinearStep(X + slope * float(terms.sigma_next - terms.sigma), [slot(0), slot(1)], divisor)
                )
                continue
            noise = NOISE
            if bridge and not first:
                w1, w2 = bridge_weights(float(terms.sigma), float(terms.sigma_input), float(terms.sigma_next))
                noise = w1 * slot(1) + w2 * NOISE
            start = X if first else slot(0)
            x_next = (
                float(terms.scale_x) * start + float(terms.x0_weight) * x0 + float(terms.sigma_up) * noise
            )
            rows.append(LinearStep(x_next, [X, NOISE] if first else [slot(0), slot(1)], divisor))
            first = not first
        return rows

    def linear_steps(self) -> list[LinearStep]:
        """noise="torch"'s rows: every noisy call reads its tree increment from the loop's noise buffer."""
        return self._rows(bridge=False)

    def tree_queries(self) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Each call's noise interval, in loop order (None: the call adds no noise)."""
        queries, first = [], True
        for i in range(len(self.timesteps)):
            terms = self._terms(i, first)
            queries.append(terms.query)
            first = first if terms.query is None else not first
        return queries

    def sampling_plan(self, num_inference_steps: int | None = None, *, noise: str = "torch", **settings: Any):
        """The table plan. noise="torch" (diffusers' numbers; needs torchsde): the host draws each call's
        Brownian-tree increment into the loop's noise buffer (``TreeDraws``; the tree's queries cannot run on
        the device, and an increment depends on earlier queries only through the tree's seed). noise="philox":
        the bridge rows, every normal drawn inside the fused update from the sample's Philox streams."""
        if noise not in NOISE_MODES:
            raise ValueError(f"noise {noise!r} is not one of {', '.join(NOISE_MODES)}")
        if noise == "torch":
            import_torchsde()  # refused here, in one line, before any sampling
        plan = super().sampling_plan(num_inference_steps, **settings)
        if not isinstance(plan, SamplingPlan):
            return plan
        if noise == "philox":
            return dataclasses.replace(plan, table=self.linear_table(self._rows(bridge=True)))
        host_noise = functools.partial(
            TreeDraws, self.tree_queries(), *self._noise_range(), self.noise_sampler_seed
        )
        return dataclasses.replace(plan, host_noise=host_noise)
