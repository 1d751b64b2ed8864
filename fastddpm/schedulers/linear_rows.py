"""Multistep tables: every network evaluation of a sampler written as a linear map, one table row each.

All the samplers but DDPM / DDIM step linearly: the next sample and the solver's state (earlier converted
outputs, a kept sample, a running sum) are fixed linear combinations of the current sample, the model
output, the step's noise and the previous state, with coefficients that depend on the step only. A
sampler's ``linear_steps`` writes each evaluation's update with ``Lin`` values, in the same expressions
as its ``step`` (in float64); ``linear_table`` lays them out as step_columns.py's LIN_* rows, which the
sampling loop (engine/sampling_loop.py) feeds to ops.linear_update. Nothing here runs per step
at sampling time: the table is built once per schedule, into the plan ``sampling_plan`` returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fastddpm.engine.plan import EagerPlan, LinearUpdate, PlanDefaults, SamplingPlan, refuse_respacing
from fastddpm.kernels.step_columns import (
    LIN_INPUT_DIVISOR,
    LIN_MATRIX,
    LIN_NOISE,
    LIN_OUT,
    LIN_STATE,
    LIN_X,
    linear_row_width,
)


class Lin:
    """A linear combination of a step's inputs (x, the model output, the noise, state slots)."""

    __slots__ = ("terms",)
    __array_ufunc__ = None  # numpy scalars (float64 weights) defer to __rmul__ instead of wrapping a Lin

    def __init__(self, terms: dict[int, float] | None = None) -> None:
        self.terms = dict(terms or {})

    def __add__(self, other: Lin) -> Lin:
        terms = dict(self.terms)
        for column, weight in other.terms.items():
            terms[column] = terms.get(column, 0.0) + weight
        return Lin(terms)

    def __sub__(self, other: Lin) -> Lin:
        return self + other * -1.0

    def __mul__(self, scale: float) -> Lin:
        scale = float(scale)
        return Lin({column: weight * scale for column, weight in self.terms.items()})

    __rmul__ = __mul__

    def __truediv__(self, divisor: float) -> Lin:
        with np.errstate(divide="ignore"):  # x / 0 = inf as in torch (the table then refuses non-finite rows)
            return self * float(np.float64(1.0) / np.float64(divisor))

    def __neg__(self) -> Lin:
        return self * -1.0


X = Lin({LIN_X: 1.0})  # the sample the step starts from
OUT = Lin({LIN_OUT: 1.0})  # the network's output at it
NOISE = Lin({LIN_NOISE: 1.0})  # the step's N(0, I) draw
ZERO = Lin()


def slot(k: int) -> Lin:
    """State slot k as the step finds it."""
    return Lin({LIN_STATE + k: 1.0})


@dataclass
class LinearStep:
    """One network evaluation: the network sees x / input_divisor; x becomes x_next, slot k becomes
    state[k]."""

    x_next: Lin
    state: list[Lin]
    input_divisor: float = 1.0


def shifted(new: Lin, slots: int) -> list[Lin]:
    """The first ``slots`` slots as a history, newest first, with ``new`` pushed in front."""
    return [new] + [slot(k) for k in range(slots - 1)] if slots else []


def build_table(steps: list[LinearStep], slots: int) -> torch.Tensor:
    """(len(steps), linear_row_width(slots)) float32: coefficients computed in float64, rounded once."""
    width = slots + 3
    table = torch.zeros((len(steps), linear_row_width(slots)), dtype=torch.float64)
    for i, step in enumerate(steps):
        if len(step.state) != slots:
            raise ValueError(f"step {i} sets {len(step.state)} state slots, the table has {slots}")
        table[i, LIN_INPUT_DIVISOR] = step.input_divisor
        for r, lin in enumerate([step.x_next, *step.state]):
            for column, weight in lin.terms.items():
                if column >= width:
                    raise ValueError(f"step {i} reads state slot {column - LIN_STATE}, the table has {slots}")
                table[i, LIN_MATRIX + r * width + column] = weight
    return table.float()


class TableDriven(PlanDefaults):
    """What a sampler provides to run as a linear table in the sampling loop (mixed into the scheduler classes).

    Subclasses set ``state_slots`` and implement ``linear_steps`` (after set_timesteps, one LinearStep
    per entry of ``timesteps``) and, where a config cannot be written linearly, ``graph_refusal``.
    """

    state_slots = 2
    noise_every_step = False  # diffusers draws noise in every step (SDE / ancestral samplers)

    def linear_steps(self) -> list[LinearStep]:
        raise NotImplementedError

    def sampling_plan(
        self,
        num_inference_steps: int | None = None,
        *,
        timestep_respacing: str | int | None = None,
        device: torch.device | str | None = None,
        **ignored: Any,
    ) -> SamplingPlan | EagerPlan:
        """These settings as a plan: the linear table and its update, or (``graph_refusal``) an EagerPlan that
        runs this scheduler's own step. DDIM's eta and use_clipped_model_output do not apply here."""
        refuse_respacing(timestep_respacing)
        steps = self.default_inference_steps() if num_inference_steps is None else num_inference_steps
        self.set_timesteps(steps, device=device)
        name = type(self).__name__
        refusal = self.graph_refusal()
        if refusal is not None:
            return EagerPlan(name, self, refusal)
        table = self.linear_table()
        update = LinearUpdate.for_table(table, self.noise_every_step)
        draws = (bool(self.noise_every_step),) * len(table)
        return SamplingPlan(name, self.timesteps.cpu().clone(), table, update, draws, self.init_noise_sigma)

    def graph_refusal(self) -> str | None:
        """Why the fused loop cannot run this config as a linear table (None: it can; else its plan is eager)."""
        if getattr(self, "num_inference_steps", None) is None:
            return "set_timesteps has not been called"
        return None

    def linear_table(self, steps: list[LinearStep] | None = None) -> torch.Tensor:
        """The whole schedule's LIN_* rows, in loop order (float32, on the CPU): ``linear_steps``' or, where a
        sampler has another set for another noise source (dpm-sde's Philox bridge), ``steps``."""
        refusal = self.graph_refusal()
        if refusal is not None:
            raise ValueError(f"{type(self).__name__} cannot run table-driven: {refusal}")
        steps = self.linear_steps() if steps is None else steps
        if len(steps) != len(self.timesteps):
            raise AssertionError(f"{len(steps)} table rows for {len(self.timesteps)} timesteps")
        table = build_table(steps, self.state_slots)
        finite = torch.isfinite(table).all(dim=1)
        if not finite.all():
            i = int((~finite).nonzero()[0])
            raise ValueError(
                f"{type(self).__name__} with {self.num_inference_steps} steps: step {i} (timestep "
                f"{float(self.timesteps[i]):g}) has no finite update, as when the schedule repeats a timestep "
                f"(diffusers' scheduler gives NaN samples there); use fewer steps"
            )
        return table
