"""What every fastddpm scheduler shares: the diffusers-style config, the output type, the beta schedule,
timesteps, q-sampling and the step-table cache.

A scheduler's ``step`` computes its coefficients exactly as diffusers does (one row of a step table, see
kernels/step_columns.py) and runs through ``ops.sampler_step``, so a scheduler used in a diffusers-style loop
gives diffusers' numbers, and the fused kernels serve it where they can. ``step_table`` gives the whole
schedule's coefficients at once for the pipeline's sync-free loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fastddpm import ops
from fastddpm.engine.plan import PlanDefaults, SamplerStepUpdate, SamplingPlan, refuse_respacing
from fastddpm.kernels.step_columns import NOISE_ON
from fastddpm.ops import reference
from fastddpm.sampler_registry import SCHEDULER_MODULES
from fastddpm.schedulers import schedules
from fastddpm.schedulers.config_mixin import BaseOutput, ConfigMixin

TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")

# Compatible classes (diffusers' KarrasDiffusionSchedulers that fastddpm has): every one builds from every
# other's config, so `pipe.scheduler = X.from_config(pipe.scheduler.config)` works in both directions.
# diffusers' KarrasDiffusionSchedulers: each of these lists the others as compatibles. SASolverScheduler lists
# them too but is not one of them (diffusers 0.42.1), so another class's compatibles never offer it (its
# from_config would refuse their algorithm_type).
ALL_SCHEDULERS = tuple(name for name in SCHEDULER_MODULES if name != "SASolverScheduler")


@dataclass
class SchedulerOutput(BaseOutput):
    """``prev_sample`` (x at the next timestep) and, where the scheduler has it, ``pred_original_sample``."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


def refuse_unsupported(scheduler: Any, **fields: Any) -> None:
    """A config field fastddpm does not implement, set to a value that changes the maths: one-line error."""
    for key, value in fields.items():
        if value:
            raise ValueError(
                f"scheduler config field {key}={value!r} is not supported by fastddpm's {type(scheduler).__name__}"
            )


class Scheduler(PlanDefaults, ConfigMixin):
    """What DDPM and DDIM share: the beta schedule, timesteps and q-sampling; the config comes from the
    subclass's diffusers-style ``__init__`` (``register_to_config``)."""

    kind: str
    order = 1
    init_noise_sigma = 1.0
    _compatibles = ALL_SCHEDULERS
    _deprecated_kwargs = ["predict_epsilon"]

    def _setup(self, kwargs: dict[str, Any]) -> None:
        """Validate the recorded config and build the schedule; ``kwargs``: the deprecated keywords."""
        kwargs = dict(kwargs)
        if "predict_epsilon" in kwargs:  # diffusers < 0.10 spelling, still in early hub configs
            legacy = kwargs.pop("predict_epsilon")
            if "prediction_type" in self.config.get("_use_default_values", ()):
                self.register_to_config(prediction_type="epsilon" if legacy else "sample")
        if kwargs:
            key = next(iter(kwargs))
            raise TypeError(f"{type(self).__name__} got an unexpected config field {key!r}")
        self._validate_common()
        c = self.config
        betas = schedules.make_betas(
            c.beta_schedule, c.num_train_timesteps, c.beta_start, c.beta_end, c.trained_betas
        )
        if c.get("rescale_betas_zero_snr"):
            betas = schedules.rescale_zero_terminal_snr(betas)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = schedules.alphas_cumprod(betas)
        self.num_inference_steps: int | None = None
        self.custom_timesteps = False
        self.timesteps = torch.from_numpy(np.arange(0, c.num_train_timesteps)[::-1].copy().astype(np.int64))
        self._rows: dict[tuple, torch.Tensor] = {}

    def _validate_common(self) -> None:
        c = self.config
        if c.trained_betas is None and c.beta_schedule not in schedules.BETA_SCHEDULES:
            raise ValueError(
                f"scheduler config field beta_schedule={c.beta_schedule!r} is not one of "
                f"{', '.join(schedules.BETA_SCHEDULES)}"
            )
        if c.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"scheduler config field prediction_type={c.prediction_type!r} is not one of "
                f"{', '.join(PREDICTION_TYPES)}"
            )
        if c.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"scheduler config field timestep_spacing={c.timestep_spacing!r} is not one of "
                f"{', '.join(TIMESTEP_SPACINGS)}"
            )
        if int(c.num_train_timesteps) < 1:
            raise ValueError(
                f"scheduler config field num_train_timesteps={c.num_train_timesteps} must be >= 1"
            )

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        return sample

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        timesteps: Sequence[int] | None = None,
    ) -> None:
        """The descending timestep list, by the config's spacing, or custom ``timesteps``."""
        train_steps = self.config.num_train_timesteps
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("pass only one of num_inference_steps and timesteps")
        if timesteps is not None:
            timesteps = [int(t) for t in timesteps]
            if not timesteps:
                raise ValueError("timesteps must not be empty")
            if any(b >= a for a, b in zip(timesteps, timesteps[1:], strict=False)):
                raise ValueError("timesteps must be in strictly descending order")
            if timesteps[0] >= train_steps or timesteps[-1] < 0:
                raise ValueError(f"timesteps must lie in [0, num_train_timesteps={train_steps})")
            self.custom_timesteps = True
            self.num_inference_steps = len(timesteps)
            self.timesteps = torch.tensor(timesteps, dtype=torch.int64, device=device)
            return
        if num_inference_steps is None:
            raise ValueError("set_timesteps needs num_inference_steps or timesteps")
        if not 1 <= num_inference_steps <= train_steps:
            raise ValueError(
                f"num_inference_steps={num_inference_steps} must be between 1 and num_train_timesteps={train_steps}"
            )
        self.custom_timesteps = False
        self.num_inference_steps = num_inference_steps
        spacing = self.config.timestep_spacing
        if spacing == "linspace":
            steps = np.linspace(0, train_steps - 1, num_inference_steps).round()[::-1].copy().astype(np.int64)
        elif spacing == "leading":
            ratio = train_steps // num_inference_steps
            steps = (np.arange(0, num_inference_steps) * ratio).round()[::-1].copy().astype(np.int64)
            steps += self.config.steps_offset
        else:  # trailing
            ratio = train_steps / num_inference_steps
            steps = np.round(np.arange(train_steps, 0, -ratio)).astype(np.int64) - 1
        self.timesteps = torch.from_numpy(steps).to(device)

    def previous_timestep(self, timestep: int) -> int:
        raise NotImplementedError

    def _next_timestep(self, timestep: int) -> int:
        """The entry after ``timestep`` in the timestep list (-1 after the last)."""
        steps = self.timesteps.tolist()
        if timestep not in steps:
            raise ValueError(f"timestep {timestep} is not in the scheduler's timesteps")
        index = steps.index(timestep)
        return steps[index + 1] if index + 1 < len(steps) else -1

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """q-sampling: sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, per-sample timesteps."""
        if not torch.is_tensor(timesteps):
            timesteps = torch.tensor(timesteps, dtype=torch.int64)
        timesteps = timesteps.reshape(-1).to(original_samples.device)
        return ops.q_sample(original_samples, timesteps, self.alphas_cumprod, noise)[0]

    def get_velocity(
        self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0 (the v_prediction training target)."""
        sqrt_abar, sqrt_one_minus_abar = reference.abar_coefficients(self.alphas_cumprod, timesteps, sample)
        return sqrt_abar * noise - sqrt_one_minus_abar * sample

    def _clip_options(self) -> dict[str, Any]:
        c = self.config
        if c.thresholding:
            return {"thresholding": (c.dynamic_thresholding_ratio, c.sample_max_value), "clip_range": None}
        return {"thresholding": None, "clip_range": c.clip_sample_range if c.clip_sample else None}

    def _row(self, timestep: int, **options: Any) -> torch.Tensor:
        raise NotImplementedError

    def step_table(self, device: torch.device | str | None = None, **options: Any) -> torch.Tensor:
        """(steps, NUM_COLUMNS) float32 coefficients for the current timesteps, in loop order."""
        rows = [self._row(int(t), **options) for t in self.timesteps.tolist()]
        return torch.stack(rows).to(device)

    def sampling_plan(
        self,
        num_inference_steps: int | None = None,
        *,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        timestep_respacing: str | int | None = None,
        device: torch.device | str | None = None,
        **ignored: Any,
    ) -> SamplingPlan:
        """These settings as a plan for the engine: the timesteps, the step table (one sampler_step row per
        step) and the fused step's options; eta and use_clipped_model_output are DDIM's (the noise source
        is the engine's business here)."""
        refuse_respacing(timestep_respacing)
        steps = self.default_inference_steps() if num_inference_steps is None else num_inference_steps
        self.set_timesteps(steps)
        table = self.step_table(**self._table_options(float(eta)))
        options = {
            "kind": self.kind,
            "prediction_type": self.config.prediction_type,
            **self._clip_options(),
            **self._variance_options(bool(use_clipped_model_output)),
        }
        update = SamplerStepUpdate(tuple(sorted(options.items())))
        draws = tuple((table[:, NOISE_ON] > 0).tolist())
        return SamplingPlan(self.kind, self.timesteps.clone(), table, update, draws)

    def _table_options(self, eta: float) -> dict[str, Any]:
        return {}

    def _variance_options(self, use_clipped_model_output: bool) -> dict[str, Any]:
        raise NotImplementedError

    def _cached_row(self, key: tuple, build) -> torch.Tensor:
        if key not in self._rows:
            self._rows[key] = build()
        return self._rows[key]


def as_int(timestep: int | torch.Tensor) -> int:
    return int(timestep.item()) if torch.is_tensor(timestep) else int(timestep)
