"""A sampling plan: everything the engine needs to run a scheduler's settings, as data.

Every fastddpm scheduler (DDPM / DDIM, the table-driven samplers, ADM's process with its respacing) turns
its settings into one plan with ``sampling_plan(num_inference_steps, ...)``: the network's timesteps, the
step table, which fused update reads it, which steps draw noise and the initial noise scale. The engine
runs any plan in one static-buffer, sync-free loop (sampling_loop.py) that never asks which scheduler made
it. A configuration whose step has no fused form (dynamic thresholding on a table-driven sampler, a
scheduler object that is not fastddpm's) gets an ``EagerPlan`` instead, with the reason, and runs in
diffusers' standard loop (eager_loop.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from fastddpm import ops
from fastddpm.kernels.step_columns import LIN_INPUT_DIVISOR, LIN_MATRIX, linear_state_slots


@dataclass(frozen=True)
class SamplerStepUpdate:
    """DDPM / DDIM's fused step (ops.sampler_step) over a NUM_COLUMNS-wide table; ``options`` are its
    keyword arguments (kind, prediction_type, variance_type, clip_range, thresholding, ...)."""

    options: tuple[tuple[str, Any], ...]
    kwargs: dict[str, Any] = field(init=False, compare=False, repr=False)  # options as a dict, made once
    state_slots = None  # no state buffer at all
    takes_noise = True  # every step gets its noise argument; the row's NOISE_ON decides whether it is used

    def __post_init__(self) -> None:
        object.__setattr__(self, "kwargs", dict(self.options))

    @property
    def reads_variance(self) -> bool:
        """Whether the step reads the model's variance channels (learned variances) besides its mean ones."""
        return self.kwargs["variance_type"] != "fixed"

    def network_input(self, x: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
        return x

    def apply(self, model_output, x, row, noise, state):
        x_prev, _ = ops.sampler_step(model_output, x, row, noise, **self.kwargs)
        return x_prev, None


@dataclass(frozen=True)
class LinearUpdate:
    """Every other sampler's step as one linear map (ops.linear_update) over a LIN_* table: the next x and
    the ``state_slots`` state vectors from (x, model output, noise, state)."""

    state_slots: int
    divides_input: bool  # some row's input divisor is not 1 (Euler, Heun): the network sees x / divisor
    takes_noise: bool  # the sampler draws noise at every step (SDE / ancestral); else no noise argument
    reads_variance = False

    def network_input(self, x: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
        return x / row[LIN_INPUT_DIVISOR] if self.divides_input else x

    def apply(self, model_output, x, row, noise, state):
        return ops.linear_update(model_output, x, state, row[LIN_MATRIX:], noise)

    @classmethod
    def for_table(cls, table: torch.Tensor, takes_noise: bool) -> LinearUpdate:
        """The update a LIN_* table asks for, decided once on the host: most samplers never scale the input."""
        divides = bool((table[:, LIN_INPUT_DIVISOR] != 1).any())
        return cls(linear_state_slots(table.shape[1]), divides, bool(takes_noise))


@dataclass(frozen=True)
class SamplingPlan:
    """One schedule, ready to run.

    ``timesteps`` (steps,) are what the network is called with, in sampling order (int64, or float32 for
    Karras sigmas and ADM's process; the network wrapper may rescale them); ``table`` (steps, columns)
    float32 holds one row per network evaluation on the host; ``noise_draws`` says before which steps
    noise="torch" draws a normal from the generator (diffusers' and OpenAI's draw order); x_T is scaled by
    ``init_noise_sigma``. ``name`` labels progress bars and messages. ``host_noise(shape, device)``, where a
    sampler's noise="torch" draws are not the generator's normals (dpm-sde's Brownian tree), makes one run's
    draw function in their place.
    """

    name: str
    timesteps: torch.Tensor
    table: torch.Tensor
    update: SamplerStepUpdate | LinearUpdate
    noise_draws: tuple[bool, ...]
    init_noise_sigma: float | torch.Tensor = 1.0
    host_noise: Callable[[tuple[int, ...], torch.device], Callable[[], torch.Tensor]] | None = None

    def __post_init__(self) -> None:
        steps = len(self.timesteps)
        if self.table.shape[0] != steps or len(self.noise_draws) != steps:
            raise ValueError(
                f"plan {self.name}: {steps} timesteps, {self.table.shape[0]} table rows, "
                f"{len(self.noise_draws)} noise flags"
            )

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    @property
    def reads_variance(self) -> bool:
        return self.update.reads_variance

    def key(self) -> tuple:
        """What a compiled loop depends on: equal keys run the same computation."""
        return (
            type(self.update).__name__,
            self.update,
            self.table.numpy().tobytes(),
            self.timesteps.dtype,
            tuple(self.timesteps.tolist()),
        )


@dataclass(frozen=True)
class EagerPlan:
    """A scheduler the fused loop cannot run, with the reason: diffusers' standard loop runs it eagerly.
    ``scheduler`` has had set_timesteps called."""

    name: str
    scheduler: Any
    reason: str
    reads_variance = True  # the scheduler's step gets the whole model output and takes what it needs

    @property
    def timesteps(self) -> torch.Tensor:
        return self.scheduler.timesteps

    @property
    def steps(self) -> int:
        return len(self.scheduler.timesteps)


class PlanDefaults:
    """What every fastddpm scheduler answers besides its plan (mixed into both scheduler bases)."""

    reference = "diffusers"  # whose numbers it reproduces (``fastddpm bench`` compares with it)

    def default_inference_steps(self) -> int | None:
        """num_inference_steps when none is given: 50, as diffusers' DDIMPipeline."""
        return min(DEFAULT_STEPS, self.config.num_train_timesteps)

    def network_timestep_scale(self) -> float | None:
        """How a checkpoint with this process feeds its network the timestep: None, as the scheduler gives
        it (ADM's process: float32, times a scale)."""
        return None


def plan_for(scheduler: Any, num_inference_steps: int | None, **settings: Any) -> SamplingPlan | EagerPlan:
    """``scheduler``'s plan for these settings (eta, use_clipped_model_output, timestep_respacing, device,
    noise; a scheduler ignores those that do not apply to it, but timestep_respacing is ADM's alone). A
    scheduler object that makes no plans (not fastddpm's, e.g. one of diffusers') runs eagerly."""
    make = getattr(scheduler, "sampling_plan", None)
    if make is not None:
        return make(num_inference_steps, **settings)
    name = type(scheduler).__name__
    if not hasattr(scheduler, "set_timesteps") or not hasattr(scheduler, "step"):
        raise TypeError(f"sampler must be a name or a scheduler with set_timesteps and step, got {name}")
    refuse_respacing(settings.get("timestep_respacing"))
    steps = DEFAULT_STEPS if num_inference_steps is None else num_inference_steps
    scheduler.set_timesteps(steps, device=settings.get("device"))
    return EagerPlan(name, scheduler, "not a fastddpm scheduler")


def refuse_respacing(timestep_respacing: str | int | None) -> None:
    if timestep_respacing is not None:
        raise ValueError(
            "timestep_respacing applies to ADM checkpoints' ddpm and ddim samplers only; use num_inference_steps"
        )


DEFAULT_STEPS = 50  # as diffusers' DDIMPipeline; the multistep solvers do well with 10-25
