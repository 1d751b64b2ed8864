"""Beta schedules and abar, with the float32 values diffusers 0.42 computes."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")


def betas_for_alpha_bar(num_timesteps: int, alpha_bar, max_beta: float = 0.999) -> torch.Tensor:
    """Discretise a continuous abar(t), t in [0, 1]: beta_i = min(1 - abar(t_{i+1}) / abar(t_i), max_beta)."""
    betas = []
    for i in range(num_timesteps):
        t1, t2 = i / num_timesteps, (i + 1) / num_timesteps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return torch.tensor(betas, dtype=torch.float32)


def _cosine_alpha_bar(t: float) -> float:
    """Nichol & Dhariwal's cosine schedule (squaredcos_cap_v2), offset s = 0.008."""
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def _exp_alpha_bar(t: float) -> float:
    return math.exp(t * -12.0)


def _laplace_alpha_bar(t: float) -> float:
    lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
    snr = math.exp(lmb)
    return math.sqrt(snr / (1 + snr))


def make_betas(
    beta_schedule: str = "linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
    trained_betas: Sequence[float] | None = None,
) -> torch.Tensor:
    """float32 betas of length num_train_timesteps (trained_betas, when given, win)."""
    if trained_betas is not None:
        return torch.tensor(trained_betas, dtype=torch.float32)
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        return betas_for_alpha_bar(num_train_timesteps, _cosine_alpha_bar)
    if beta_schedule == "laplace":
        return betas_for_alpha_bar(num_train_timesteps, _laplace_alpha_bar)
    if beta_schedule == "exp":  # HeunDiscreteScheduler's extra schedule
        return betas_for_alpha_bar(num_train_timesteps, _exp_alpha_bar)
    if beta_schedule == "sigmoid":
        x = torch.linspace(-6, 6, num_train_timesteps, dtype=torch.float32)
        return torch.sigmoid(x) * (beta_end - beta_start) + beta_start
    raise ValueError(f"beta_schedule {beta_schedule!r} is not one of {', '.join(BETA_SCHEDULES)}")


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(abar) so the last step has zero SNR (Lin et al. 2023, algorithm 1)."""
    alphas_bar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first = alphas_bar_sqrt[0].clone()
    last = alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt -= last
    alphas_bar_sqrt *= first / (first - last)
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """abar_t = prod_{i <= t} (1 - beta_i), float32 as diffusers accumulates it."""
    return torch.cumprod(1.0 - betas, dim=0)


def sigma_schedule(config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(betas, alphas, alphas_cumprod) of a sigma-parametrised scheduler's config, as diffusers' Euler /
    Heun / DPM-Solver / UniPC / DEIS build them: rescale_betas_zero_snr rescales the betas, then floors the
    last abar at 2**-24 (zero SNR would make sigma and lambda infinite)."""
    betas = make_betas(
        config.beta_schedule,
        config.num_train_timesteps,
        config.beta_start,
        config.beta_end,
        config.trained_betas,
    )
    if config.get("rescale_betas_zero_snr"):
        betas = rescale_zero_terminal_snr(betas)
    alphas = 1.0 - betas
    cumulative = torch.cumprod(alphas, dim=0)
    if config.get("rescale_betas_zero_snr"):
        cumulative[-1] = 2**-24
    return betas, alphas, cumulative
