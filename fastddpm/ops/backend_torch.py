"""The torch backend of ops: the reference implementations, on any device, with autograd.

It serves every call; it is the fallback of ``FASTDDPM_BACKEND=auto`` and the truth the others match.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastddpm.ops import PhiloxNoise, reference
from fastddpm.ops import noise as noise_module

group_norm = reference.group_norm


def why_not_group_norm(*args, **kwargs) -> list[str]:
    return []


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    # torch's fused SDPA rather than reference.attention's explicit float32 matmuls: diffusers' attention
    # processor calls SDPA too, so float32 parity with diffusers stays exact, and it never materialises the
    # L x L scores on the backends that have a flash kernel.
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


def why_not_attention(*args, **kwargs) -> list[str]:
    return []


def _materialise(noise, like: torch.Tensor) -> torch.Tensor | None:
    if isinstance(noise, PhiloxNoise):
        return noise_module.philox_normal(
            noise.seed, noise.sample_offset, like.shape[0], like.shape[1:], noise.stream, device=like.device
        ).to(like.dtype)
    return noise


def q_sample(x0, timesteps, alphas_cumprod, noise):
    eps = _materialise(noise, x0)
    return reference.q_sample(x0, timesteps, alphas_cumprod, eps), eps


def why_not_q_sample(*args, **kwargs) -> list[str]:
    return []


def sampler_step(model_output, sample, coeffs, noise, **options):
    return reference.sampler_step(model_output, sample, coeffs, _materialise(noise, sample), **options)


def why_not_sampler_step(*args, **kwargs) -> list[str]:
    return []


def linear_update(model_output, sample, state, matrix, noise):
    return reference.linear_update(model_output, sample, state, matrix, _materialise(noise, sample))


def why_not_linear_update(*args, **kwargs) -> list[str]:
    return []
