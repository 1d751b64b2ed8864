"""What the multistep ODE solvers (DPM-Solver, UniPC, DEIS) share, with diffusers 0.42's numbers: the VP
schedule in (alpha_t, sigma_t, lambda_t) form, the step sigmas and timesteps, the step counter, the
conversion of the model output to x0 (or eps), q-sampling and dynamic thresholding.

A step's update is a linear combination of the current sample, a few earlier converted model outputs
and (SDE variants) noise; each family's ``step`` computes its scalar coefficients in diffusers' order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fastddpm.ops import reference
from fastddpm.schedulers import schedules, sigmas
from fastddpm.schedulers.base import ALL_SCHEDULERS, TIMESTEP_SPACINGS, refuse_unsupported
from fastddpm.schedulers.config_mixin import ConfigMixin
from fastddpm.schedulers.linear_rows import TableDriven

MULTISTEP_PREDICTIONS = ("epsilon", "sample", "v_prediction")


class MultistepScheduler(TableDriven, ConfigMixin):
    order = 1
    prediction_types = MULTISTEP_PREDICTIONS
    init_noise_sigma = 1.0
    _compatibles = ALL_SCHEDULERS
    karras_rounds_always = True  # DPM-Solver keeps fractional timesteps for squaredcos_cap_v2
    final_sigma_from_spacing = True  # UniPC/DEIS end a spaced schedule at its own last sigma
    takes_custom_timesteps = False  # set_timesteps(timesteps=[...]): DPM-Solver only, as in diffusers
    takes_flow_sigmas = False  # set_timesteps(sigmas=[...]) with use_flow_sigmas: UniPC only, as in diffusers

    def _setup_schedule(self, unsupported: dict[str, Any]) -> None:
        c = self.config
        refuse_unsupported(self, **unsupported)
        if c.prediction_type not in self.prediction_types:
            raise ValueError(
                f"scheduler config field prediction_type={c.prediction_type!r} is not one of "
                f"{', '.join(self.prediction_types)}"
            )
        if self._timestep_spacing() not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"scheduler config field timestep_spacing={self._timestep_spacing()!r} is not one of "
                f"{', '.join(TIMESTEP_SPACINGS)}"
            )
        self._check_orders()
        if c.trained_betas is None and c.beta_schedule not in schedules.BETA_SCHEDULES:
            raise ValueError(
                f"scheduler config field beta_schedule={c.beta_schedule!r} is not one of "
                f"{', '.join(schedules.BETA_SCHEDULES)}"
            )
        sigmas.spacing_of(c)  # at most one spacing
        self.betas, self.alphas, self.alphas_cumprod = schedules.sigma_schedule(c)
        self.alpha_t = torch.sqrt(self.alphas_cumprod)
        self.sigma_t = torch.sqrt(1 - self.alphas_cumprod)
        self.lambda_t = torch.log(self.alpha_t) - torch.log(self.sigma_t)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.num_inference_steps: int | None = None
        train = c.num_train_timesteps
        self.timesteps = torch.from_numpy(np.linspace(0, train - 1, train, dtype=np.float32)[::-1].copy())
        self.model_outputs: list[torch.Tensor | None] = [None] * self._history_length()
        self.lower_order_nums = 0
        self._step_index: int | None = None
        self._begin_index: int | None = None

    def _check_orders(self) -> None:
        c = self.config
        if c.solver_order not in (1, 2, 3):
            raise ValueError(f"scheduler config field solver_order={c.solver_order!r} must be 1, 2 or 3")

    def _history_length(self) -> int:
        """How many converted model outputs ``model_outputs`` holds."""
        return self.config.solver_order

    # -------------------------------------------------------------------------------------- timesteps
    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def _timestep_spacing(self) -> str:
        """The config's timestep_spacing (DPMSolverSinglestep has no such field: it always spaces linearly)."""
        return self.config.timestep_spacing

    def _own_field(self, key: str) -> Any:
        """A config field of this class, or None where the class has no such field: from_config keeps other
        classes' keys in the config (as diffusers does), and they must not switch anything on here."""
        return self.config.get(key) if key in self._init_keys() else None

    def _spaced_timesteps(self, steps: int, last_timestep: int) -> np.ndarray:
        c = self.config
        spacing = self._timestep_spacing()
        if spacing == "linspace":
            return np.linspace(0, last_timestep - 1, steps + 1).round()[::-1][:-1].copy().astype(np.int64)
        if spacing == "leading":
            ratio = last_timestep // (steps + 1)
            out = (np.arange(0, steps + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64)
            return out + c.steps_offset
        ratio = c.num_train_timesteps / steps
        return np.arange(last_timestep, 0, -ratio).round().copy().astype(np.int64) - 1

    def _last_timestep(self) -> int:
        """Where the spacing starts: every training step, less those whose lambda is below the config's
        lambda_min_clipped where it has one (DPM-Solver, SA-Solver; critical for the cosine schedule). UniPC and
        DEIS have no such field: one carried over from a DPM-Solver config by from_config must not clip theirs."""
        clip = self._own_field("lambda_min_clipped")
        if clip is None:
            return self.config.num_train_timesteps
        clipped = torch.searchsorted(torch.flip(self.lambda_t, [0]), clip)
        return (self.config.num_train_timesteps - clipped).numpy().item()

    def _final_sigma(self, spaced: np.ndarray | None) -> float:
        """sigma after the last step: 0, or the smallest training sigma (or the spacing's own last)."""
        if self.config.get("final_sigmas_type", "sigma_min") == "zero":
            return 0
        if spaced is not None and self.final_sigma_from_spacing:
            return spaced[-1]
        return ((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5

    def set_timesteps(
        self, num_inference_steps: int | None = None, device: torch.device | str | None = None, **kwargs: Any
    ) -> None:
        """The step timesteps (descending, int64) and sigmas (one more: the final sigma), float32."""
        custom = kwargs.pop("timesteps", None) if self.takes_custom_timesteps else None
        custom_sigmas = kwargs.pop("sigmas", None) if self.takes_flow_sigmas else None
        extra = {k: v for k, v in kwargs.items() if v is not None}
        if extra:
            raise ValueError(f"set_timesteps argument {next(iter(extra))!r} is not supported by fastddpm")
        c = self.config
        flow = bool(c.get("use_flow_sigmas"))
        if custom_sigmas is not None:
            if not flow:
                raise ValueError(
                    "set_timesteps(sigmas=...) needs use_flow_sigmas=True in the scheduler config"
                )
            num_inference_steps = len(custom_sigmas)  # as diffusers: the list sets the number of steps
        if custom is not None:
            if num_inference_steps is not None:
                raise ValueError("pass only one of num_inference_steps and timesteps")
            if sigmas.spacing_of(c) is not None or self._own_field("use_lu_lambdas"):
                raise ValueError(
                    "set_timesteps(timesteps=...) cannot be combined with the config's sigma spacing"
                )
            timesteps = np.array(custom).astype(np.int64)
            steps = len(timesteps)
        else:
            if num_inference_steps is None or int(num_inference_steps) < 1:
                raise ValueError(
                    f"num_inference_steps must be a positive integer, got {num_inference_steps!r}"
                )
            steps = int(num_inference_steps)
            timesteps = self._spaced_timesteps(steps, self._last_timestep())
        train = sigmas.train_sigmas(self.alphas_cumprod)
        in_sigmas = train if custom_sigmas is None else np.array(custom_sigmas)
        log_sigmas = np.log(in_sigmas)
        spacing = sigmas.spacing_of(c)
        spaced = None
        lu = self._own_field("use_lu_lambdas") and spacing != "karras"  # diffusers: Karras, Lu, the others
        if spacing is not None and not lu:
            # sigma_min / sigma_max: diffusers reads them with hasattr(config, ...), so a key that from_config
            # kept from another class's config (Euler's) bounds the spacing here too
            spaced = sigmas.spaced(
                spacing, np.flip(in_sigmas).copy(), steps, c.get("sigma_min"), c.get("sigma_max")
            )
            if flow and spacing == "karras":  # diffusers maps Karras sigmas onto flow sigmas s / (s + 1)
                spaced = spaced / (spaced + 1)
                timesteps = (spaced * c.num_train_timesteps).copy()
            else:  # (exponential / beta ignore use_flow_sigmas in diffusers)
                timesteps = np.array([sigmas.sigma_to_t(s, log_sigmas) for s in spaced])
                if spacing == "karras" and (
                    self.karras_rounds_always or c.beta_schedule != "squaredcos_cap_v2"
                ):
                    timesteps = timesteps.round()
            step_sigmas = spaced
        elif lu:
            lambdas = sigmas.lu_lambdas(np.flip(log_sigmas.copy()), steps)
            step_sigmas = np.exp(lambdas)
            timesteps = np.array([sigmas.sigma_to_t(s, log_sigmas) for s in step_sigmas])
            if c.beta_schedule != "squaredcos_cap_v2":
                timesteps = timesteps.round()
        elif flow:
            spaced = step_sigmas = sigmas.flow(steps, c.num_train_timesteps, c.flow_shift, custom_sigmas)
            timesteps = (step_sigmas * c.num_train_timesteps).copy()
        else:
            step_sigmas = np.interp(timesteps, np.arange(0, len(train)), train)
        final = self._final_sigma(spaced)
        self.sigmas = torch.from_numpy(np.concatenate([step_sigmas, [final]]).astype(np.float32))
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self.model_outputs = [None] * self._history_length()
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None

    def index_for_timestep(
        self, timestep: int | torch.Tensor, schedule_timesteps: torch.Tensor | None = None
    ):
        """The step index of ``timestep``; the second match when it repeats (as diffusers); the last step
        when it is not in the list."""
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        candidates = (schedule == timestep).nonzero()
        if len(candidates) == 0:
            return len(self.timesteps) - 1
        return candidates[1 if len(candidates) > 1 else 0].item()

    def _init_step_index(self, timestep: int | torch.Tensor) -> None:
        if self._begin_index is None:
            if torch.is_tensor(timestep):
                timestep = timestep.to(self.timesteps.device)
            self._step_index = self.index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index

    def _start_step(self, timestep: int | torch.Tensor) -> None:
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step: the solver needs the number of inference steps")
        if self._step_index is None:
            self._init_step_index(timestep)

    # ------------------------------------------------------------------------------------ conversions
    def _sigma_to_alpha_sigma_t(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t) of a step sigma: the VP form, or with flow sigmas x_t = (1 - s) x0 + s eps."""
        if self._own_field("use_flow_sigmas"):
            return 1 - sigma, sigma
        alpha_t = 1 / ((sigma**2 + 1) ** 0.5)
        return alpha_t, sigma * alpha_t

    def _threshold_sample(self, sample: torch.Tensor) -> torch.Tensor:
        dtype = sample.dtype
        x = sample.float() if dtype not in (torch.float32, torch.float64) else sample
        c = self.config
        return reference.threshold_sample(x, c.dynamic_thresholding_ratio, c.sample_max_value).to(dtype)

    def _mean_channels(self, model_output: torch.Tensor) -> torch.Tensor:
        if self._own_field("variance_type") in ("learned", "learned_range"):
            return model_output[:, :3]  # diffusers keeps the first 3 channels of a learned-variance model
        return model_output

    def _x0_prediction(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """x0 from the model output at the current step (thresholded when the config says so)."""
        c = self.config
        if c.prediction_type == "epsilon":
            alpha_t, sigma_t = self._sigma_to_alpha_sigma_t(self.sigmas[self.step_index])
            x0 = (sample - sigma_t * self._mean_channels(model_output)) / alpha_t
        elif c.prediction_type == "sample":
            x0 = model_output
        else:
            alpha_t, sigma_t = self._sigma_to_alpha_sigma_t(self.sigmas[self.step_index])
            x0 = alpha_t * sample - sigma_t * model_output
        return self._threshold_sample(x0) if c.thresholding else x0

    def _eps_prediction(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """eps from the model output at the current step (thresholding goes through x0 and back)."""
        c = self.config
        alpha_t, sigma_t = self._sigma_to_alpha_sigma_t(self.sigmas[self.step_index])
        if c.prediction_type == "epsilon":
            eps = self._mean_channels(model_output)
        elif c.prediction_type == "sample":
            eps = (sample - alpha_t * model_output) / sigma_t
        else:
            eps = alpha_t * model_output + sigma_t * sample
        if c.thresholding:
            x0 = self._threshold_sample((sample - sigma_t * eps) / alpha_t)
            eps = (sample - alpha_t * x0) / sigma_t
        return eps

    def _lambda_alpha_sigma(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        alpha, sigma = self._sigma_to_alpha_sigma_t(self.sigmas[index])
        return torch.log(alpha) - torch.log(sigma), alpha, sigma

    def _push_model_output(self, converted: torch.Tensor) -> None:
        for i in range(self.config.solver_order - 1):
            self.model_outputs[i] = self.model_outputs[i + 1]
        self.model_outputs[-1] = converted

    def _is_last(self, offset: int = 1) -> bool:
        return self.step_index == len(self.timesteps) - offset

    # ----------------------------------------------------------------------------------- the rest
    def scale_model_input(self, sample: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return sample

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """x_t = alpha_t x0 + sigma_t noise at the step sigmas of ``timesteps`` (VP form)."""
        sigma = sigmas.at_timesteps(self, timesteps, original_samples)
        alpha_t, sigma_t = self._sigma_to_alpha_sigma_t(sigma)
        return alpha_t * original_samples + sigma_t * noise

    def __len__(self) -> int:
        return self.config.num_train_timesteps
