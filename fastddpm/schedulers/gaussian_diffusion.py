"""GaussianDiffusion: the sampling schedule of OpenAI's ADM models (improved-diffusion, guided-diffusion).

Their process, as their create_gaussian_diffusion builds it from the diffusion flags:

* betas: "linear" (1e-4..0.02 scaled by 1000 / diffusion_steps) or "cosine" (Nichol & Dhariwal's
  alpha_bar, betas capped at 0.999), in float64, for any diffusion_steps;
* respacing (their space_timesteps): "" (all steps), "250" or "10,15,20" (that many steps from each equal
  section, at fractional strides rounded), "ddimN" (the integer stride giving exactly N steps). The kept
  steps form a new process with betas 1 - abar_i / abar_prev_kept, sampled with its own posterior;
* variances: learned_range with learn_sigma (the model's extra channels v interpolate the log variance
  between the clipped posterior variance and beta: their LEARNED_RANGE), else fixed_large (beta, with the
  first step's posterior variance) or fixed_small (sigma_small: the posterior variance);
* the model sees the original timestep of each kept step, times 1000 / diffusion_steps with
  rescale_timesteps (improved-diffusion's default), as float32; predict_xstart makes it predict x0;
* x0 is clipped to [-1, 1] (their sample scripts' clip_denoised=True); DDIM re-derives eps from the
  clipped x0 and adds eta-scaled noise.

The coefficients are their float64 numpy tables, each cast to float32 once: one row of the step table
(kernels/step_columns.py) per kept step, in sampling order, read by ops.sampler_step in the sync-free loop.
Their samplers draw one standard normal per step, the last included; the plan's noise_draws say so.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fastddpm.engine.plan import SamplerStepUpdate, SamplingPlan
from fastddpm.kernels.step_columns import (
    COEF_X0,
    COEF_XT,
    LOG_VAR_MAX,
    LOG_VAR_MIN,
    NOISE_ON,
    NUM_COLUMNS,
    SIGMA,
    SQRT_ABAR,
    SQRT_ONE_MINUS_ABAR,
)

SAMPLERS = ("ddpm", "ddim")
DEFAULTS = {
    "diffusion_steps": 1000,
    "noise_schedule": "linear",
    "learn_sigma": False,
    "sigma_small": False,
    "predict_xstart": False,
    "rescale_timesteps": False,
    "timestep_respacing": "",
    "use_kl": False,  # training loss only
    "rescale_learned_sigmas": False,  # training loss only
}


def named_betas(schedule: str, steps: int) -> np.ndarray:
    if schedule == "linear":
        scale = 1000 / steps
        return np.linspace(scale * 0.0001, scale * 0.02, steps, dtype=np.float64)
    if schedule == "cosine":

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)]
        return np.array(betas, dtype=np.float64)
    raise ValueError(f"noise_schedule {schedule!r} is not one of linear, cosine")


def space_timesteps(num_timesteps: int, respacing: str | int) -> list[int]:
    """The kept timesteps, ascending, for their respacing syntax ("", "250", "10,15,20", "ddim25")."""
    text = str(respacing).strip()
    if not text:
        return list(range(num_timesteps))
    if text.startswith("ddim"):
        try:
            want = int(text[4:])
        except ValueError:
            raise ValueError(
                f"timestep_respacing {respacing!r}: ddim must be followed by a step count"
            ) from None
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == want:
                return list(range(0, num_timesteps, stride))
        raise ValueError(
            f"timestep_respacing {respacing!r}: no integer stride gives exactly {want} of {num_timesteps} steps"
        )
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(
            f"timestep_respacing {respacing!r} is not a step count, a comma-separated list of counts, or ddimN"
        ) from None
    if any(c < 0 for c in counts) or sum(counts) < 1:
        raise ValueError(f"timestep_respacing {respacing!r} must keep at least one step")
    size_per, extra = divmod(num_timesteps, len(counts))
    start, kept = 0, set()
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(
                f"timestep_respacing {respacing!r}: cannot take {count} steps from a section of {size}"
            )
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.add(start + round(position))  # Python's round, as theirs: half to even
            position += stride
        start += size
    return sorted(kept)


class GaussianDiffusion:
    """ADM's process from the diffusion flags (a scheduler config with their names), sampled as their
    p_sample_loop (``kind`` "ddpm") or ddim_sample_loop ("ddim"): ``for_sampler`` picks the loop."""

    kind = "ddpm"
    reference = "openai"  # whose numbers this process reproduces: improved-/guided-diffusion's

    def __init__(self, **config: Any) -> None:
        unknown = sorted(k for k in config if k not in DEFAULTS and not k.startswith("_"))
        if unknown:
            raise ValueError(f"GaussianDiffusion config field {unknown[0]!r} is not an ADM diffusion flag")
        self.config = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
        steps = int(self.config["diffusion_steps"])
        if steps < 1:
            raise ValueError(f"diffusion_steps={steps} must be >= 1")
        self.base_betas = named_betas(self.config["noise_schedule"], steps)
        space_timesteps(steps, self.config["timestep_respacing"])  # a bad default respacing fails here

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> GaussianDiffusion:
        return cls(**dict(config))

    def for_sampler(self, kind: str) -> GaussianDiffusion:
        """This process sampled by their ddpm or ddim loop."""
        if kind not in SAMPLERS:
            raise ValueError(f"sampler {kind!r} is not one of {', '.join(SAMPLERS)} for an ADM model")
        sampler = GaussianDiffusion.from_config(self.config)
        sampler.kind = kind
        return sampler

    def __len__(self) -> int:
        return self.num_train_timesteps

    @property
    def num_train_timesteps(self) -> int:
        return int(self.config["diffusion_steps"])

    def variance_mode(self) -> str:
        return "learned_range" if self.config["learn_sigma"] else "fixed"

    def prediction_type(self) -> str:
        return "sample" if self.config["predict_xstart"] else "epsilon"

    def sampler_config(self) -> dict[str, Any]:
        """A diffusers-style scheduler config of the same process, for the fast samplers: their float64
        betas over all diffusion_steps (trained_betas), predicting what the model's first channels hold.
        Each sampler keeps its own defaults for the rest (spacing, solver settings)."""
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "trained_betas": self.base_betas.tolist(),
            "prediction_type": self.prediction_type(),
        }

    def network_timestep_scale(self) -> float:
        """What the model's timestep input is per process timestep: 1000 / diffusion_steps with
        rescale_timesteps (their _scale_timesteps), else 1; always as float32."""
        return 1000.0 / self.num_train_timesteps if self.config["rescale_timesteps"] else 1.0

    def respaced(self, respacing: str | int | None) -> tuple[list[int], np.ndarray]:
        """(kept original timesteps ascending, betas of the respaced process), float64."""
        if respacing is None:
            respacing = self.config["timestep_respacing"]
        kept = space_timesteps(self.num_train_timesteps, respacing)
        abar = np.cumprod(1.0 - self.base_betas)
        betas, last = [], 1.0
        for t in kept:
            betas.append(1 - abar[t] / last)
            last = abar[t]
        return kept, np.array(betas, dtype=np.float64)

    def schedule(
        self, sampler: str, respacing: str | int | None = None, eta: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(kept timesteps (steps,) float32, step table (steps, NUM_COLUMNS) float32), in sampling order.
        The network sees the timesteps times network_timestep_scale()."""
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler {sampler!r} is not one of {', '.join(SAMPLERS)} for an ADM model")
        kept, betas = self.respaced(respacing)
        abar = np.cumprod(1.0 - betas)
        abar_prev = np.append(1.0, abar[:-1])
        posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        # their clipped log: the first step's posterior variance (0) replaced by the second's
        clipped = (
            np.append(posterior_variance[1], posterior_variance[1:]) if len(betas) > 1 else posterior_variance
        )
        # A one-step process has only the first step's variance, 0: its log is -inf, and that step adds no
        # noise (their samplers multiply it by 0), so exp(-inf) = 0 is the right variance, without a warning.
        with np.errstate(divide="ignore"):
            log_var_min = np.log(clipped)
            if self.config["sigma_small"]:
                fixed_log_var = log_var_min
            else:
                fixed_log_var = np.log(np.append(clipped[0], betas[1:]))
        table = np.zeros((len(betas), NUM_COLUMNS), dtype=np.float64)
        table[:, SQRT_ABAR] = np.sqrt(abar)
        table[:, SQRT_ONE_MINUS_ABAR] = np.sqrt(1.0 - abar)
        table[:, LOG_VAR_MIN] = log_var_min
        table[:, LOG_VAR_MAX] = np.log(betas)
        nonzero = np.arange(len(betas)) > 0
        if sampler == "ddpm":
            table[:, COEF_X0] = betas * np.sqrt(abar_prev) / (1.0 - abar)
            table[:, COEF_XT] = (1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar)
            table[:, SIGMA] = np.exp(0.5 * fixed_log_var)
            table[:, NOISE_ON] = nonzero
        else:
            sigma = eta * np.sqrt((1 - abar_prev) / (1 - abar)) * np.sqrt(1 - abar / abar_prev)
            table[:, COEF_X0] = np.sqrt(abar_prev)
            table[:, COEF_XT] = np.sqrt(1 - abar_prev - sigma**2)
            table[:, SIGMA] = sigma
            table[:, NOISE_ON] = nonzero & (sigma > 0)
        model_t = torch.tensor(kept, dtype=torch.float32)
        # sampling order: from the last kept step down to the first
        return model_t.flip(0), torch.from_numpy(table).float().flip(0)

    def default_inference_steps(self) -> None:
        """None: the flags' timestep_respacing (every step without one)."""
        return None

    def sampling_plan(
        self,
        num_inference_steps: int | None = None,
        *,
        eta: float = 0.0,
        timestep_respacing: str | int | None = None,
        **ignored: Any,
    ) -> SamplingPlan:
        """Their loop over the process respaced by ``timestep_respacing`` (their syntax; default
        str(num_inference_steps), else the flags'). Their samplers draw one normal per step, the last
        included (multiplied by 0 there), so noise="torch" draws before every step."""
        respacing = timestep_respacing
        if respacing is None and num_inference_steps is not None:
            respacing = str(num_inference_steps)
        timesteps, table = self.schedule(self.kind, respacing, float(eta))
        options = self.step_options(self.kind)
        update = SamplerStepUpdate(tuple(sorted(options.items())))
        return SamplingPlan(self.kind, timesteps, table, update, (True,) * len(timesteps))

    def guided_plan(self, plan: SamplingPlan) -> SamplingPlan:
        """``plan`` with classifier guidance as their p_sample / ddim_sample apply cond_fn: condition_mean
        (the model's variance; fixed_small's is the unclipped posterior variance, as their model_variance)
        or condition_score (engine/guidance.py)."""
        from fastddpm.engine.guidance import GuidedMeanUpdate, GuidedScoreUpdate

        if self.kind == "ddpm":
            fixed_small = bool(self.config["sigma_small"]) and not self.config["learn_sigma"]
            update = GuidedMeanUpdate(plan.update.options, fixed_small)
        else:
            update = GuidedScoreUpdate(plan.update.options)
        return dataclasses.replace(plan, update=update)

    def training_alphas_cumprod(self) -> np.ndarray:
        """abar over all diffusion_steps, float64 (the fast samplers' schedule)."""
        return np.cumprod(1.0 - self.base_betas)

    def step_options(self, sampler: str) -> dict[str, Any]:
        """ops.sampler_step's keyword arguments for this process."""
        options = {
            "kind": sampler,
            "prediction_type": self.prediction_type(),
            "clip_range": 1.0,
            "thresholding": None,
        }
        if sampler == "ddpm":
            options["variance_type"] = self.variance_mode()
        else:  # eps from the clipped x0, as their ddim_sample's _predict_eps_from_xstart
            options.update(variance_type="fixed", use_clipped_model_output=True)
        return options
