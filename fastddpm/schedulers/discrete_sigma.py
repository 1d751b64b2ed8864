"""What the k-diffusion-style samplers (Euler, Euler ancestral, Heun) share, with diffusers 0.42's numbers:
the sampler state is x = x0 + sigma * eps (not the VP x_t), so the pipeline starts from x_T * sigma_max
(``init_noise_sigma``) and the network sees ``scale_model_input``'s x / sqrt(sigma^2 + 1), the VP x_t.
Timesteps are float32 and, with Karras / exponential / beta sigmas, fractional.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fastddpm.schedulers import schedules, sigmas
from fastddpm.schedulers.base import ALL_SCHEDULERS, TIMESTEP_SPACINGS
from fastddpm.schedulers.config_mixin import ConfigMixin
from fastddpm.schedulers.linear_rows import TableDriven


class DiscreteSigmaScheduler(TableDriven, ConfigMixin):
    order = 1
    _compatibles = ALL_SCHEDULERS
    prediction_types = ("epsilon", "sample", "v_prediction")
    beta_schedules = schedules.BETA_SCHEDULES

    def _setup_schedule(self) -> None:
        c = self.config
        if c.prediction_type not in self.prediction_types:
            raise ValueError(
                f"scheduler config field prediction_type={c.prediction_type!r} is not one of "
                f"{', '.join(self.prediction_types)}"
            )
        if c.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"scheduler config field timestep_spacing={c.timestep_spacing!r} is not one of "
                f"{', '.join(TIMESTEP_SPACINGS)}"
            )
        if c.trained_betas is None and c.beta_schedule not in self.beta_schedules:
            raise ValueError(
                f"scheduler config field beta_schedule={c.beta_schedule!r} is not one of "
                f"{', '.join(self.beta_schedules)}"
            )
        sigmas.spacing_of(c)
        self.betas, self.alphas, self.alphas_cumprod = schedules.sigma_schedule(c)
        train = c.num_train_timesteps
        self.sigmas = torch.cat(
            [(((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).flip(0), torch.zeros(1)]
        )
        self.timesteps = torch.from_numpy(np.linspace(0, train - 1, train, dtype=float)[::-1].copy()).float()
        self.num_inference_steps: int | None = None
        self.is_scale_input_called = False
        self._step_index: int | None = None
        self._begin_index: int | None = None

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        """The std of x_T in this parametrisation: sigma_max (or sqrt(sigma_max^2 + 1), "leading")."""
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return self.sigmas.max()
        return (self.sigmas.max() ** 2 + 1) ** 0.5

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def _check_steps(self, num_inference_steps: int | None, kwargs: dict[str, Any], custom=()) -> int:
        """The step count; ``custom``: the names of set_timesteps' list arguments this class takes
        (timesteps, sigmas), at most one of which, or num_inference_steps, may be given."""
        extra = {k: v for k, v in kwargs.items() if v is not None and k not in custom}
        if extra:
            raise ValueError(f"set_timesteps argument {next(iter(extra))!r} is not supported by fastddpm")
        given = [k for k in custom if kwargs.get(k) is not None]
        if len(given) + (num_inference_steps is not None) != 1:
            raise ValueError(
                f"pass exactly one of num_inference_steps, {', '.join(custom) or '(nothing else)'}"
            )
        if given:
            if sigmas.spacing_of(self.config) is not None:
                raise ValueError(
                    f"set_timesteps({given[0]}=...) cannot be combined with the config's sigma spacing"
                )
            values = kwargs[given[0]]
            return len(values) - 1 if given[0] == "sigmas" else len(values)
        if int(num_inference_steps) < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        return int(num_inference_steps)

    def _spaced_timesteps(self, steps: int, train: int | None = None) -> np.ndarray:
        """float32 descending timesteps: N points of linspace, or leading / trailing strides."""
        c = self.config
        train = train or c.num_train_timesteps
        if c.timestep_spacing == "linspace":
            return np.linspace(0, train - 1, steps, dtype=np.float32)[::-1].copy()
        if c.timestep_spacing == "leading":
            ratio = train // steps
            out = (np.arange(0, steps) * ratio).round()[::-1].copy().astype(np.float32)
            return out + c.steps_offset
        ratio = train / steps
        return (np.arange(train, 0, -ratio)).round().copy().astype(np.float32) - 1

    def _spaced_sigmas(self, step_sigmas: np.ndarray, timesteps: np.ndarray, steps: int):
        """(sigmas, timesteps) after the config's Karras / exponential / beta spacing, if any; the spacing
        runs between the largest and smallest step sigma unless sigma_min / sigma_max are set."""
        spacing = sigmas.spacing_of(self.config)
        if spacing is None:
            return step_sigmas, timesteps
        log_sigmas = np.log(sigmas.train_sigmas(self.alphas_cumprod))
        spaced = sigmas.spaced(
            spacing, step_sigmas, steps, self.config.get("sigma_min"), self.config.get("sigma_max")
        )
        return spaced, np.array([sigmas.sigma_to_t(s, log_sigmas) for s in spaced])

    def index_for_timestep(
        self, timestep: float | torch.Tensor, schedule_timesteps: torch.Tensor | None = None
    ):
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        indices = (schedule == timestep).nonzero()
        if len(indices) == 0:
            raise ValueError(f"timestep {float(timestep)} is not in the scheduler's timesteps")
        return indices[1 if len(indices) > 1 else 0].item()

    def _init_step_index(self, timestep: float | torch.Tensor) -> None:
        if self._begin_index is None:
            if torch.is_tensor(timestep):
                timestep = timestep.to(self.timesteps.device)
            self._step_index = self.index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        """x / sqrt(sigma^2 + 1): the VP-scaled input the network was trained on."""
        if self._step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self._step_index]
        self.is_scale_input_called = True
        return sample / ((sigma**2 + 1) ** 0.5)

    def _start_step(self, timestep: float | torch.Tensor) -> None:
        # Without set_timesteps the schedule is every training timestep (as in diffusers).
        if self._step_index is None:
            self._init_step_index(timestep)

    @staticmethod
    def _refuse_integer_timestep(timestep: Any) -> None:
        if isinstance(timestep, int) or (torch.is_tensor(timestep) and not timestep.is_floating_point()):
            raise ValueError(
                "pass one of scheduler.timesteps (float) as timestep, not an integer index (as in diffusers)"
            )

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """x = x0 + sigma * noise at the sigmas of ``timesteps``."""
        sigma = sigmas.at_timesteps(self, timesteps, original_samples)
        return original_samples + noise * sigma

    def __len__(self) -> int:
        return self.config.num_train_timesteps
