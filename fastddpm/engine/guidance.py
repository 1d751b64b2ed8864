"""Classifier guidance (guided-diffusion's cond_fn) as the sampling loop runs it: sync-free, one place.

The gradient is theirs: ``scale * d/dx sum_b log_softmax(classifier(x, t))[b, y_b]``, the classifier called
on the network's input x with the timesteps the diffusion net gets (their _WrappedModel maps cond_fn's
timesteps as it maps the model's: respaced to original, times 1000 / diffusion_steps with
rescale_timesteps). How it moves the step:

- ADM's own loops, as their p_sample / ddim_sample with cond_fn: the network returns (output, gradient)
  and the plan's update applies it (``GuidedMeanUpdate``: condition_mean, the posterior mean moved by the
  model's variance times the gradient; ``GuidedScoreUpdate``: condition_score, eps from the clipped x0
  minus sqrt(1 - abar_t) times the gradient, x0 from that eps, then the DDIM step);
- every other sampler: the network returns the score-corrected output, eps - sqrt(1 - abar_t) * gradient
  (their condition_score's correction, before the sampler's own update), so the table-driven update and
  the eager loop run unchanged. abar_t is the training schedule's at the network's timestep (log-sigma
  interpolated between training steps for fractional Karras timesteps, as diffusers maps sigmas to
  timesteps). A model predicting x0 (predict_xstart) gets the same correction in x0 terms:
  x0 + (1 - abar_t) / sqrt(abar_t) * gradient.

fastddpm's fused kernels have no backward: with autograd recording, ops' dispatch and the layers take their
torch paths for the classifier (see fastddpm.models.adm_classifier); the diffusion net stays on the fused
kernels. Nothing here reads a tensor on the host, so the step stays capturable in one CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fastddpm import ops
from fastddpm.kernels.step_columns import (
    LOG_VAR_MAX,
    LOG_VAR_MIN,
    NOISE_ON,
    SIGMA,
    SQRT_ABAR,
    SQRT_ONE_MINUS_ABAR,
)


class ClassifierGuidance:
    """The classifier, its scale and how the process reads a gradient.

    ``labels_to_net``: the diffusion net is class-conditional and takes the labels too (else only the
    classifier sees them). ``alphas_cumprod``: the training schedule (float64), for the score correction;
    ``prediction_type``: what the net's first channels predict (epsilon or sample)."""

    def __init__(
        self,
        classifier: torch.nn.Module,
        scale: float,
        labels_to_net: bool,
        alphas_cumprod: np.ndarray,
        prediction_type: str = "epsilon",
    ) -> None:
        if prediction_type not in ("epsilon", "sample"):
            raise ValueError(
                f"classifier guidance corrects epsilon or x0 predictions, not prediction_type {prediction_type!r}"
            )
        self.classifier, self.scale, self.labels_to_net = classifier, float(scale), bool(labels_to_net)
        self.prediction_type = prediction_type
        abar = np.asarray(alphas_cumprod, dtype=np.float64)
        self._tables = {
            "sqrt_one_minus_abar": np.sqrt(1.0 - abar),
            "x0_weight": (1.0 - abar) / np.sqrt(abar),
            "log_sigma": 0.5 * np.log((1.0 - abar) / abar),
        }
        self._device_tables: dict[Any, dict[str, torch.Tensor]] = {}

    def key(self) -> tuple:
        """What a cached loop depends on."""
        return (id(self.classifier), self.scale, self.labels_to_net, self.prediction_type)

    def gradient(self, sample: torch.Tensor, timestep: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """scale * d/d sample of sum_b log_softmax(classifier(sample, t))[b, labels_b], float32."""
        with torch.enable_grad():
            x_in = sample.detach().requires_grad_(True)
            logits = self.classifier(x_in.to(self.classifier.dtype), timestep)
            log_probs = F.log_softmax(logits, dim=-1)
            selected = log_probs.gather(1, labels.view(-1, 1))
            (grad,) = torch.autograd.grad(selected.sum(), x_in)
        return grad.float() * self.scale

    def corrected(self, output: torch.Tensor, grad: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """The network output with the score correction at these (process) timesteps."""
        column = "sqrt_one_minus_abar" if self.prediction_type == "epsilon" else "x0_weight"
        weight = self._at(timestep, column, output.device)
        if self.prediction_type == "epsilon":
            return output - weight * grad
        return output + weight * grad

    def _at(self, timestep: torch.Tensor, column: str, device) -> torch.Tensor:
        """The column at each timestep, (B, 1, 1, 1): the table's float32 value at a training step, else
        from the log-linear interpolation of sigma = sqrt((1 - abar) / abar) between its two neighbours."""
        tables = self._device_tables.get(device)
        if tables is None:
            tables = {k: torch.from_numpy(v).float().to(device) for k, v in self._tables.items()}
            self._device_tables[device] = tables
        t = timestep.reshape(-1).to(device=device, dtype=torch.float32)
        last = tables[column].shape[0] - 1
        low = t.floor().clamp(0, last)
        frac = t - low
        low_i = low.long()
        high_i = (low_i + 1).clamp(max=last)
        log_sigma = torch.lerp(tables["log_sigma"][low_i], tables["log_sigma"][high_i], frac)
        sigma2 = torch.exp(2 * log_sigma)  # (1 - abar) / abar
        if column == "sqrt_one_minus_abar":
            between = torch.sqrt(sigma2 / (1 + sigma2))
        else:  # (1 - abar) / sqrt(abar) = sigma^2 * sqrt(abar)
            between = sigma2 / torch.sqrt(1 + sigma2)
        value = torch.where(frac == 0, tables[column][low_i], between)
        return value.view(-1, 1, 1, 1)


@dataclass(frozen=True)
class GuidedMeanUpdate:
    """Their p_sample with cond_fn: x_prev = mean + variance * gradient + sigma * z, the variance the
    model's (learned_range: exp of the interpolated log variance) or the fixed one (fixed_small: the
    unclipped posterior variance, 0 at the process's first step, as their model_variance)."""

    options: tuple[tuple[str, Any], ...]
    fixed_small: bool
    kwargs: dict[str, Any] = field(init=False, compare=False, repr=False)
    state_slots = None
    takes_noise = True
    takes_gradient = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "kwargs", dict(self.options))

    @property
    def reads_variance(self) -> bool:
        return self.kwargs["variance_type"] != "fixed"

    def network_input(self, x: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
        return x

    def apply(self, model_output, x, row, noise, state):
        output, grad = model_output
        x_prev, _ = ops.sampler_step(output, x, row, noise, **self.kwargs)
        if self.reads_variance:  # their learned_range: frac * max_log + (1 - frac) * min_log
            frac = (output[:, x.shape[1] :] + 1) / 2
            variance = torch.exp(frac * row[LOG_VAR_MAX] + (1 - frac) * row[LOG_VAR_MIN])
        elif self.fixed_small:
            variance = row[NOISE_ON] * row[SIGMA] ** 2
        else:
            variance = row[SIGMA] ** 2
        return x_prev + variance * grad, None


@dataclass(frozen=True)
class GuidedScoreUpdate:
    """Their ddim_sample with cond_fn (condition_score): eps from the clipped x0, minus sqrt(1 - abar_t) *
    gradient; x0 from that eps (not clipped again); then the DDIM step, which re-derives eps from x0."""

    options: tuple[tuple[str, Any], ...]
    kwargs: dict[str, Any] = field(init=False, compare=False, repr=False)
    state_slots = None
    takes_noise = True
    takes_gradient = True
    reads_variance = False

    def __post_init__(self) -> None:
        options = dict(self.options)
        self._check(options)
        # the step gets the guided x0 as its model output: no clipping, eps from that x0
        step = {**options, "prediction_type": "sample", "clip_range": None, "use_clipped_model_output": True}
        object.__setattr__(self, "kwargs", step)

    @staticmethod
    def _check(options: dict[str, Any]) -> None:
        if options.get("thresholding") is not None or options.get("kind") != "ddim":
            raise ValueError("GuidedScoreUpdate runs ADM's ddim step with clipping, not thresholding")

    def network_input(self, x: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
        return x

    def apply(self, model_output, x, row, noise, state):
        output, grad = model_output
        options = dict(self.options)
        sqrt_abar, sqrt_one_minus = row[SQRT_ABAR], row[SQRT_ONE_MINUS_ABAR]
        if options["prediction_type"] == "epsilon":
            x0 = (x - sqrt_one_minus * output) / sqrt_abar
        else:
            x0 = output
        clip = options.get("clip_range")
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
        eps = (x - sqrt_abar * x0) / sqrt_one_minus
        eps = eps - sqrt_one_minus * grad
        x0 = (x - sqrt_one_minus * eps) / sqrt_abar
        x_prev, _ = ops.sampler_step(x0, x, row, noise, **self.kwargs)
        return x_prev, None
