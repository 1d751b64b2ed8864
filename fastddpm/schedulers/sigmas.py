"""Noise levels for the k-diffusion-style samplers, with diffusers 0.42's float64 numpy arithmetic.

sigma = sqrt((1 - abar) / abar) is the noise-to-signal ratio of a DDPM timestep. The samplers pick their
step sigmas from one of these spacings and map each back to a (possibly fractional) training timestep for
the network by interpolating log sigma.
"""

from __future__ import annotations

import math

import numpy as np
import torch

KARRAS_RHO = 7.0  # Karras et al. 2022, eq. 5
BETA_SIGMAS_AB = 0.6  # the Beta(0.6, 0.6) quantiles of "Beta sampling is all you need" (Lee et al. 2024)


def train_sigmas(alphas_cumprod: torch.Tensor) -> np.ndarray:
    """float32 sigma of every training timestep, ascending with t."""
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).numpy()


def _range(in_sigmas: np.ndarray, sigma_min: float | None, sigma_max: float | None) -> tuple[float, float]:
    """in_sigmas runs from the largest down to the smallest; explicit bounds win."""
    low = sigma_min if sigma_min is not None else in_sigmas[-1].item()
    high = sigma_max if sigma_max is not None else in_sigmas[0].item()
    return low, high


def karras(in_sigmas: np.ndarray, steps: int, sigma_min=None, sigma_max=None) -> np.ndarray:
    """Karras et al.'s spacing: uniform in sigma^(1/rho) from sigma_max down to sigma_min."""
    low, high = _range(in_sigmas, sigma_min, sigma_max)
    ramp = np.linspace(0, 1, steps)
    min_inv_rho = low ** (1 / KARRAS_RHO)
    max_inv_rho = high ** (1 / KARRAS_RHO)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** KARRAS_RHO


def exponential(in_sigmas: np.ndarray, steps: int, sigma_min=None, sigma_max=None) -> np.ndarray:
    """Uniform in log sigma."""
    low, high = _range(in_sigmas, sigma_min, sigma_max)
    return np.exp(np.linspace(math.log(high), math.log(low), steps))


def beta(in_sigmas: np.ndarray, steps: int, sigma_min=None, sigma_max=None) -> np.ndarray:
    """sigma_min + Beta(0.6, 0.6) quantiles of 1 - linspace(0, 1) times the range (needs scipy)."""
    try:
        import scipy.stats
    except ImportError:
        raise ImportError("use_beta_sigmas needs scipy (pip install scipy)") from None
    low, high = _range(in_sigmas, sigma_min, sigma_max)
    quantiles = [
        scipy.stats.beta.ppf(q, BETA_SIGMAS_AB, BETA_SIGMAS_AB) for q in 1 - np.linspace(0, 1, steps)
    ]
    return np.array([low + q * (high - low) for q in quantiles])


def lu_lambdas(in_lambdas: np.ndarray, steps: int) -> np.ndarray:
    """Lu et al.'s DPM-Solver spacing: uniform in lambda = log(alpha / sigma) (rho = 1)."""
    low, high = in_lambdas[-1].item(), in_lambdas[0].item()
    ramp = np.linspace(0, 1, steps)
    return high + ramp * (low - high)


def flow(steps: int, train_steps: int, shift: float, custom=None) -> np.ndarray:
    """Flow-matching sigmas (x_t = (1 - s) x0 + s eps), float64 as diffusers' UniPC: uniform from 1 down to
    1 / train_steps (or ``custom``), shifted by s' = shift s / (1 + (shift - 1) s); a first sigma within 1e-6
    of 1 moves 1e-6 down, so that alpha = 1 - s and log(alpha) stay finite."""
    if custom is None:
        values = np.linspace(1, 1 / train_steps, steps + 1)[:-1]
    else:
        values = np.array(custom)
    values = shift * values / (1 + (shift - 1) * values)
    if np.fabs(values[0] - 1) < 1e-6:
        values[0] -= 1e-6
    return values


def sigma_to_t(sigma: np.ndarray | float, log_sigmas: np.ndarray) -> np.ndarray:
    """The fractional training timestep whose log sigma (linearly interpolated) equals log(sigma)."""
    sigma = np.asarray(sigma)
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    return ((1 - w) * low_idx + w * high_idx).reshape(sigma.shape)


def spaced(kind: str, in_sigmas: np.ndarray, steps: int, sigma_min=None, sigma_max=None) -> np.ndarray:
    """One of the spacings above by name: karras, exponential or beta."""
    return {"karras": karras, "exponential": exponential, "beta": beta}[kind](
        in_sigmas, steps, sigma_min, sigma_max
    )


def spacing_of(config) -> str | None:
    """Which of use_karras_sigmas / use_exponential_sigmas / use_beta_sigmas is on (at most one)."""
    chosen = [
        name
        for name, key in (
            ("karras", "use_karras_sigmas"),
            ("exponential", "use_exponential_sigmas"),
            ("beta", "use_beta_sigmas"),
        )
        if config.get(key)
    ]
    if len(chosen) > 1:
        raise ValueError(
            "only one of use_beta_sigmas, use_exponential_sigmas, use_karras_sigmas can be set in the config"
        )
    return chosen[0] if chosen else None


def at_timesteps(scheduler, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The step sigmas of ``timesteps`` (one per sample), shaped to broadcast over ``like``, looked up as
    diffusers' add_noise looks them up: by timestep, or at the step index once a pipeline set a begin index."""
    step_sigmas = scheduler.sigmas.to(device=like.device, dtype=like.dtype)
    schedule = scheduler.timesteps.to(like.device)
    timesteps = timesteps.to(like.device)
    if scheduler._begin_index is None:
        indices = [scheduler.index_for_timestep(t, schedule) for t in timesteps]
    else:
        current = scheduler._step_index if scheduler._step_index is not None else scheduler._begin_index
        indices = [current] * len(timesteps)
    sigma = step_sigmas[indices].flatten()
    while sigma.dim() < like.dim():
        sigma = sigma.unsqueeze(-1)
    return sigma
