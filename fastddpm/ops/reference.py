"""Pure-PyTorch ground truth of every fused op.

Every other backend (Triton kernels, the C++/CUDA extension) is tested against these functions, and the
torch backend of ``ops`` serves them directly. They are written for clarity and exactness, not speed:
statistics and accumulations in float32, the operation order of diffusers where diffusers defines one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastddpm.kernels.step_columns import (
    COEF_X0,
    COEF_XT,
    LOG_VAR_MAX,
    LOG_VAR_MIN,
    NOISE_ON,
    SIGMA,
    SQRT_ABAR,
    SQRT_ONE_MINUS_ABAR,
)


def group_norm(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    *,
    add: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    silu: bool = False,
) -> torch.Tensor:
    """GroupNorm with what surrounds it in a U-Net ResnetBlock.

    y = GroupNorm(x + add[:, :, None, None]) * weight + bias, then y * (1 + scale) + shift, then SiLU.
    ``add``, ``scale`` and ``shift`` are (N, C); statistics are float32 for every input dtype; the result
    has x's dtype and memory format.
    """
    dtype = x.dtype
    h = x.float()
    if add is not None:
        h = h + add.float()[:, :, None, None]
    h = F.group_norm(
        h,
        num_groups,
        None if weight is None else weight.float(),
        None if bias is None else bias.float(),
        eps,
    )
    if scale is not None:
        h = h * (1 + scale.float()[:, :, None, None]) + shift.float()[:, :, None, None]
    if silu:
        h = F.silu(h)
    return h.to(dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v for (B, heads, L, D) tensors, float32 math, result in q's dtype."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    return torch.matmul(scores.softmax(dim=-1), v.float()).to(q.dtype)


def q_sample(
    x0: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """x_t = sqrt(abar[t_i]) x0 + sqrt(1 - abar[t_i]) eps, per-sample t; diffusers' add_noise op order."""
    sqrt_abar, sqrt_one_minus_abar = abar_coefficients(alphas_cumprod, timesteps, x0)
    return sqrt_abar * x0 + sqrt_one_minus_abar * noise


def abar_coefficients(
    alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sqrt(abar[t_i]), sqrt(1 - abar[t_i])) per sample, in ``like``'s dtype, shaped to broadcast over it
    (abar is cast before the square roots, as diffusers' add_noise and get_velocity do)."""
    abar = alphas_cumprod.to(device=like.device, dtype=like.dtype)[timesteps.to(like.device)]
    shape = (-1,) + (1,) * (like.dim() - 1)
    return (abar**0.5).reshape(shape), ((1 - abar) ** 0.5).reshape(shape)


def threshold_sample(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Dynamic thresholding (Imagen): clamp each sample to its |x| quantile s (1 <= s <= max), divide by s."""
    dtype = x0.dtype
    flat = x0.float().reshape(x0.shape[0], -1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(dtype)


def sampler_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    coeffs: torch.Tensor,
    noise: torch.Tensor | None,
    *,
    kind: str,
    prediction_type: str = "epsilon",
    variance_type: str = "fixed",
    clip_range: float | None = None,
    thresholding: tuple[float, float] | None = None,
    use_clipped_model_output: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One reverse step (DDPM or DDIM) in diffusers' operation order; returns (x_prev, x0_hat).

    ``coeffs`` is one row of a step table (see step_columns.py), a float32 tensor on the sample's device,
    typically ``table[step_index]`` with a device-resident index. ``model_output`` carries 2*C channels for
    ``variance_type`` "learned" / "learned_range" (the second half is the predicted variance).
    ``noise`` is N(0, I) of the sample's shape, or None to add none (it is ignored when coeffs[NOISE_ON]
    is 0, which is how the last step goes noise-free). ``variance_type`` is "fixed" (sigma from the table),
    "learned" or "learned_range".
    """
    channels = sample.shape[1]
    predicted_variance = None
    if variance_type in ("learned", "learned_range"):
        model_output, predicted_variance = torch.split(model_output, channels, dim=1)

    # 0-d float32 coefficients: the result takes the tensors' dtype, as diffusers' scalar tensors give it.
    c = coeffs
    sqrt_abar, sqrt_one_minus_abar = c[SQRT_ABAR], c[SQRT_ONE_MINUS_ABAR]
    if prediction_type == "epsilon":
        x0 = (sample - sqrt_one_minus_abar * model_output) / sqrt_abar
        eps = model_output
    elif prediction_type == "sample":
        x0 = model_output
        eps = (sample - sqrt_abar * x0) / sqrt_one_minus_abar
    elif prediction_type == "v_prediction":
        x0 = sqrt_abar * sample - sqrt_one_minus_abar * model_output
        eps = sqrt_abar * model_output + sqrt_one_minus_abar * sample
    else:
        raise ValueError(f"prediction_type {prediction_type!r} is not one of epsilon, sample, v_prediction")

    if thresholding is not None:
        x0 = threshold_sample(x0, *thresholding)
    elif clip_range is not None:
        x0 = x0.clamp(-clip_range, clip_range)

    if kind == "ddpm":
        prev = c[COEF_X0] * x0 + c[COEF_XT] * sample
    elif kind == "ddim":
        if use_clipped_model_output:
            eps = (sample - sqrt_abar * x0) / sqrt_one_minus_abar
        prev = c[COEF_X0] * x0 + c[COEF_XT] * eps
    else:
        raise ValueError(f"kind {kind!r} is not one of ddpm, ddim")

    if noise is not None:
        if variance_type == "fixed":
            std = c[SIGMA]
        elif variance_type == "learned":
            std = predicted_variance**0.5
        elif variance_type == "learned_range":
            frac = (predicted_variance + 1) / 2
            std = torch.exp(0.5 * (frac * c[LOG_VAR_MAX] + (1 - frac) * c[LOG_VAR_MIN]))
        else:
            raise ValueError(f"variance_type {variance_type!r} is not one of fixed, learned, learned_range")
        # NOISE_ON selects on the device, so one captured step serves every step without a host branch.
        prev = torch.where(c[NOISE_ON] > 0, prev + std * noise, prev)
    return prev, x0


def linear_update(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    state: torch.Tensor,
    matrix: torch.Tensor,
    noise: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of any table-driven sampler as a linear map (step_columns.py, LIN_*): (x_next, next state).

    ``state`` is (K, *sample.shape) float32; ``matrix`` the row's (K + 1) * (K + 3) coefficients after
    LIN_MATRIX; ``noise`` N(0, I), or None when the step adds none (its column must then be 0).
    """
    slots = state.shape[0]
    inputs = [sample, model_output, noise if noise is not None else torch.zeros_like(sample)]
    inputs += list(state.unbind(0))
    m = matrix.reshape(slots + 1, slots + 3)
    outputs = []
    for r in range(slots + 1):
        acc = m[r, 0] * inputs[0]
        for c in range(1, slots + 3):
            acc = acc + m[r, c] * inputs[c]
        outputs.append(acc)
    return outputs[0], torch.stack(outputs[1:]) if slots else state.clone()
