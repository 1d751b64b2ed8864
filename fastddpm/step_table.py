"""Per-step coefficient tables for the reverse process.

A table has one float32 row per reverse step, so the sampling loop (and a captured CUDA graph) reads its
coefficients with a device-resident step index instead of computing scalars on the host. Each scalar is
computed with the same float32 tensor operations, in the same order, as diffusers 0.42's DDPMScheduler /
DDIMScheduler compute it, so a step that reads the table reproduces diffusers bit for bit on the same
device.

Columns (the Triton and CUDA kernels index them by these numbers):
"""

from __future__ import annotations

import torch

SQRT_ABAR = 0  # sqrt(abar_t)
SQRT_ONE_MINUS_ABAR = 1  # sqrt(1 - abar_t)
COEF_X0 = 2  # DDPM: posterior-mean weight of x0_hat; DDIM: sqrt(abar_prev)
COEF_XT = 3  # DDPM: posterior-mean weight of x_t;    DDIM: sqrt(1 - abar_prev - sigma^2), weight of eps_hat
SIGMA = 4  # noise std for the fixed variance types (DDIM: eta * sigma_t)
LOG_VAR_MIN = 5  # log of the clamped posterior variance (learned_range interpolates from here ...)
LOG_VAR_MAX = 6  # log(beta_t) (... to here)
NOISE_ON = 7  # 1.0 when this step adds noise (DDPM: t > 0; DDIM: eta > 0), else 0.0
NUM_COLUMNS = 8

FIXED_VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")
VARIANCE_TYPES = FIXED_VARIANCE_TYPES + ("learned", "learned_range")


def ddpm_row(alphas_cumprod: torch.Tensor, t: int, prev_t: int, variance_type: str) -> torch.Tensor:
    """One DDPM step t -> prev_t (prev_t < 0 after the last step)."""
    one = torch.tensor(1.0)
    alpha_prod_t = alphas_cumprod[t]
    alpha_prod_t_prev = alphas_cumprod[prev_t] if prev_t >= 0 else one
    beta_prod_t = 1 - alpha_prod_t
    beta_prod_t_prev = 1 - alpha_prod_t_prev
    current_alpha_t = alpha_prod_t / alpha_prod_t_prev
    current_beta_t = 1 - current_alpha_t

    posterior_variance = torch.clamp((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t, min=1e-20)
    if variance_type == "fixed_small":
        sigma = posterior_variance**0.5
    elif variance_type == "fixed_small_log":
        sigma = torch.exp(0.5 * torch.log(posterior_variance))
    elif variance_type == "fixed_large":
        sigma = current_beta_t**0.5
    elif variance_type == "fixed_large_log":
        # diffusers 0.42 takes sqrt(log(beta_t)), which is NaN for every beta_t < 1; the log form means
        # "store log variance, std = exp(log_var / 2)", which is what is computed here (= fixed_large).
        sigma = torch.exp(0.5 * torch.log(current_beta_t))
    elif variance_type in ("learned", "learned_range"):
        sigma = torch.tensor(0.0)  # the std comes from the model's variance channels
    else:
        raise ValueError(f"variance_type {variance_type!r} is not one of {', '.join(VARIANCE_TYPES)}")

    row = torch.zeros(NUM_COLUMNS, dtype=torch.float32)
    row[SQRT_ABAR] = alpha_prod_t**0.5
    row[SQRT_ONE_MINUS_ABAR] = beta_prod_t**0.5
    row[COEF_X0] = (alpha_prod_t_prev ** (0.5) * current_beta_t) / beta_prod_t
    row[COEF_XT] = current_alpha_t ** (0.5) * beta_prod_t_prev / beta_prod_t
    row[SIGMA] = sigma
    row[LOG_VAR_MIN] = torch.log(posterior_variance)
    row[LOG_VAR_MAX] = torch.log(current_beta_t)
    row[NOISE_ON] = 1.0 if t > 0 else 0.0
    return row


def ddim_row(
    alphas_cumprod: torch.Tensor, final_alpha_cumprod: torch.Tensor, t: int, prev_t: int, eta: float
) -> torch.Tensor:
    """One DDIM step t -> prev_t with stochasticity eta (prev_t < 0: abar_prev = final_alpha_cumprod)."""
    alpha_prod_t = alphas_cumprod[t]
    alpha_prod_t_prev = alphas_cumprod[prev_t] if prev_t >= 0 else final_alpha_cumprod
    beta_prod_t = 1 - alpha_prod_t
    beta_prod_t_prev = 1 - alpha_prod_t_prev
    variance = (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
    std_dev_t = eta * variance ** (0.5)

    row = torch.zeros(NUM_COLUMNS, dtype=torch.float32)
    row[SQRT_ABAR] = alpha_prod_t**0.5
    row[SQRT_ONE_MINUS_ABAR] = beta_prod_t**0.5
    row[COEF_X0] = alpha_prod_t_prev ** (0.5)
    row[COEF_XT] = (1 - alpha_prod_t_prev - std_dev_t**2) ** (0.5)
    row[SIGMA] = std_dev_t
    row[LOG_VAR_MIN] = torch.log(torch.clamp(variance, min=1e-20))
    row[LOG_VAR_MAX] = torch.log(1 - alpha_prod_t / alpha_prod_t_prev)
    row[NOISE_ON] = 1.0 if eta > 0 else 0.0
    return row
