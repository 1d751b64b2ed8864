"""DDPM and DDIM schedulers with diffusers 0.42's semantics, built from a diffusers scheduler config.

``step`` computes its coefficients exactly as diffusers does (see step_table.py) and runs through
``ops.sampler_step``, so a scheduler used in a diffusers-style loop gives diffusers' numbers, and the
fused kernels serve it where they can. ``step_table`` gives the whole schedule's coefficients at once for
the pipeline's sync-free loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import ops, reference, schedules, step_table
from .step_table import VARIANCE_TYPES

TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")

# Config keys of other diffusers schedulers that would change the maths if honoured: refused when set.
_UNSUPPORTED_IF_SET = (
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "use_dynamic_shifting",
    "use_flow_sigmas",
    "timestep_type",
    "solver_order",
)


class SchedulerConfig(dict):
    """The normalised config; keys readable as attributes, like diffusers' FrozenDict."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class SchedulerOutput:
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None

    def __iter__(self):  # `prev, x0 = scheduler.step(...)` as with return_dict=False
        return iter((self.prev_sample, self.pred_original_sample))


def randn_tensor(
    shape: Sequence[int],
    generator: torch.Generator | list[torch.Generator] | None,
    device: torch.device | str | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """N(0, I) drawn the way diffusers' randn_tensor draws it, so a shared generator stays in step.

    A CPU generator draws on the CPU and the result moves to ``device``; a list draws one sample each.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    rand_device = device
    if generator is not None:
        gen_device = (generator[0] if isinstance(generator, list) else generator).device
        if gen_device.type != device.type and gen_device.type == "cpu":
            rand_device = torch.device("cpu")
        elif gen_device.type != device.type:
            raise ValueError(f"generator on {gen_device.type} cannot draw a tensor for {device.type}")
    if isinstance(generator, list) and len(generator) == 1:
        generator = generator[0]
    if isinstance(generator, list):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        one = (1, *shape[1:])
        parts = [torch.randn(one, generator=g, device=rand_device, dtype=dtype) for g in generator]
        return torch.cat(parts).to(device)
    return torch.randn(tuple(shape), generator=generator, device=rand_device, dtype=dtype).to(device)


class _Scheduler:
    """What DDPM and DDIM share: the config, the beta schedule, timesteps and q-sampling."""

    kind: str
    _defaults: dict[str, Any]
    order = 1
    init_noise_sigma = 1.0

    def __init__(self, **config: Any) -> None:
        self.config = self._normalise(config)
        c = self.config
        betas = schedules.make_betas(
            c.beta_schedule, c.num_train_timesteps, c.beta_start, c.beta_end, c.trained_betas
        )
        if c.rescale_betas_zero_snr:
            betas = schedules.rescale_zero_terminal_snr(betas)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = schedules.alphas_cumprod(betas)
        self.num_inference_steps: int | None = None
        self.custom_timesteps = False
        self.timesteps = torch.from_numpy(np.arange(0, c.num_train_timesteps)[::-1].copy().astype(np.int64))
        self._rows: dict[tuple, torch.Tensor] = {}

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Any, **overrides: Any):
        """Build from a diffusers config dict, a diffusers scheduler, or one of ours (``.config``)."""
        if not isinstance(config, Mapping):
            config = getattr(config, "config", None)
            if not isinstance(config, Mapping):
                raise TypeError("from_config takes a config mapping or an object with a .config mapping")
        return cls(**{**dict(config), **overrides})

    @classmethod
    def _normalise(cls, config: Mapping[str, Any]) -> SchedulerConfig:
        """Defaults filled in; keys this scheduler does not use are dropped; unsupported behaviour raises."""
        config = dict(config)
        if "predict_epsilon" in config:  # diffusers < 0.10 spelling, still in early hub configs
            legacy = config.pop("predict_epsilon")
            config.setdefault("prediction_type", "epsilon" if legacy else "sample")
        for key in _UNSUPPORTED_IF_SET:
            if config.get(key):
                raise ValueError(
                    f"scheduler config field {key}={config[key]!r} is not supported by {cls.__name__}"
                )
        out = SchedulerConfig(cls._defaults)
        out.update({k: v for k, v in config.items() if k in cls._defaults})
        if out.trained_betas is None and out.beta_schedule not in schedules.BETA_SCHEDULES:
            raise ValueError(
                f"scheduler config field beta_schedule={out.beta_schedule!r} is not one of "
                f"{', '.join(schedules.BETA_SCHEDULES)}"
            )
        if out.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"scheduler config field prediction_type={out.prediction_type!r} is not one of "
                f"{', '.join(PREDICTION_TYPES)}"
            )
        if out.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"scheduler config field timestep_spacing={out.timestep_spacing!r} is not one of "
                f"{', '.join(TIMESTEP_SPACINGS)}"
            )
        if int(out.num_train_timesteps) < 1:
            raise ValueError(
                f"scheduler config field num_train_timesteps={out.num_train_timesteps} must be >= 1"
            )
        return out

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

    def _cached_row(self, key: tuple, build) -> torch.Tensor:
        if key not in self._rows:
            self._rows[key] = build()
        return self._rows[key]


def _as_int(timestep: int | torch.Tensor) -> int:
    return int(timestep.item()) if torch.is_tensor(timestep) else int(timestep)


_COMMON_DEFAULTS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "clip_sample": True,
    "prediction_type": "epsilon",
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "clip_sample_range": 1.0,
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
}


class DDPMScheduler(_Scheduler):
    """Ancestral sampling of Ho et al. 2020, as diffusers.DDPMScheduler."""

    kind = "ddpm"
    _defaults = {**_COMMON_DEFAULTS, "variance_type": "fixed_small"}

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        if self.config.variance_type not in VARIANCE_TYPES:
            raise ValueError(
                f"scheduler config field variance_type={self.config.variance_type!r} is not one of "
                f"{', '.join(VARIANCE_TYPES)}"
            )
        self.variance_type = self.config.variance_type

    def previous_timestep(self, timestep: int | torch.Tensor) -> int:
        timestep = _as_int(timestep)
        if self.custom_timesteps or self.num_inference_steps:
            return self._next_timestep(timestep)
        return timestep - 1

    def _row(self, timestep: int, **options: Any) -> torch.Tensor:
        prev = self.previous_timestep(timestep)
        return self._cached_row(
            (timestep, prev),
            lambda: step_table.ddpm_row(self.alphas_cumprod, timestep, prev, self.variance_type),
        )

    def variance_mode(self) -> str:
        """How sampler_step gets the noise std: "fixed" (table), "learned" or "learned_range" (model)."""
        return self.variance_type if self.variance_type in ("learned", "learned_range") else "fixed"

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """x_{t-1} from the model's output at t, drawing noise from ``generator`` as diffusers does."""
        t = _as_int(timestep)
        mode = self.variance_mode()
        channels = sample.shape[1]
        learned_shape = model_output.shape[1] == 2 * channels
        if mode != "fixed" and not learned_shape:
            raise ValueError(
                f"variance_type {self.variance_type!r} needs a model output with 2 x {channels} channels, "
                f"got {model_output.shape[1]}"
            )
        if mode == "fixed" and learned_shape and model_output.shape[1] != channels:
            model_output = model_output[:, :channels]  # diffusers' fixed types would fail; use the mean half
        noise = None
        if t > 0:
            noise = randn_tensor(sample.shape, generator, model_output.device, model_output.dtype)
        row = self._row(t).to(sample.device)
        prev, x0 = ops.sampler_step(
            model_output, sample, row, noise, kind="ddpm", prediction_type=self.config.prediction_type,
            variance_type=mode, **self._clip_options(),
        )  # fmt: skip
        return SchedulerOutput(prev, x0) if return_dict else (prev, x0)


class DDIMScheduler(_Scheduler):
    """Denoising diffusion implicit models (Song et al. 2021), as diffusers.DDIMScheduler."""

    kind = "ddim"
    _defaults = {**_COMMON_DEFAULTS, "set_alpha_to_one": True}

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self.final_alpha_cumprod = (
            torch.tensor(1.0) if self.config.set_alpha_to_one else self.alphas_cumprod[0]
        )

    def previous_timestep(self, timestep: int | torch.Tensor) -> int:
        timestep = _as_int(timestep)
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step: DDIM needs the number of inference steps")
        if self.custom_timesteps:
            return self._next_timestep(timestep)
        # diffusers steps back by a fixed stride, whatever the spacing put in the timestep list.
        return timestep - self.config.num_train_timesteps // self.num_inference_steps

    def _row(self, timestep: int, eta: float = 0.0, **options: Any) -> torch.Tensor:
        prev = self.previous_timestep(timestep)
        return self._cached_row(
            (timestep, prev, float(eta)),
            lambda: step_table.ddim_row(self.alphas_cumprod, self.final_alpha_cumprod, timestep, prev, eta),
        )

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | list[torch.Generator] | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """x_prev by the DDIM update with stochasticity ``eta`` (0: deterministic)."""
        t = _as_int(timestep)
        channels = sample.shape[1]
        if model_output.shape[1] == 2 * channels:
            model_output = model_output[:, :channels]  # a learned-variance model: DDIM uses its mean half
        noise = None
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError("pass either generator or variance_noise, not both")
            noise = variance_noise
            if noise is None:
                noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
        row = self._row(t, eta=eta).to(sample.device)
        prev, x0 = ops.sampler_step(
            model_output, sample, row, noise, kind="ddim", prediction_type=self.config.prediction_type,
            use_clipped_model_output=bool(use_clipped_model_output), **self._clip_options(),
        )  # fmt: skip
        return SchedulerOutput(prev, x0) if return_dict else (prev, x0)
