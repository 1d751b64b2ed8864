"""An independent pure-torch model of guided-diffusion's classifier guidance, for testing fastddpm's: their
EncoderUNetModel (every pool), create_classifier, classifier_sample.py's cond_fn, and the guided
p_sample_loop / ddim_sample_loop (condition_mean, condition_score).

Written from the published architecture (Dhariwal & Nichol 2021, appendix; CLIP's attention pool) in plain
torch, on the blocks of tests/adm_reference.py, not from fastddpm code. Module names are theirs, so the
state_dict keys and shapes are those of their classifier checkpoints.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tests.adm_reference import (
    AttentionBlock,
    Downsample,
    GroupNorm32,
    ResBlock,
    SpacedDiffusion,
    TimestepEmbedSequential,
    timestep_embedding,
)

CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}


class AttentionPool2d(nn.Module):
    """CLIP's pool: [mean token, positions] + positional embedding, multi-head attention (all q, all k,
    all v order, heads of ``head_channels``), the mean token's output projected."""

    def __init__(self, spatial: int, channels: int, head_channels: int, out_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(channels, spatial**2 + 1) / channels**0.5)
        self.qkv_proj = nn.Conv1d(channels, 3 * channels, 1)
        self.c_proj = nn.Conv1d(channels, out_dim, 1)
        self.heads = channels // head_channels

    def forward(self, x):
        b, c, *_ = x.shape
        x = x.reshape(b, c, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1) + self.positional_embedding[None].to(x.dtype)
        qkv = self.qkv_proj(x)
        length = qkv.shape[2]
        ch = c // self.heads
        q, k, v = qkv.chunk(3, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        weight = torch.einsum(
            "bct,bcs->bts",
            (q * scale).reshape(b * self.heads, ch, length),
            (k * scale).reshape(b * self.heads, ch, length),
        )
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        a = torch.einsum("bts,bcs->bct", weight, v.reshape(b * self.heads, ch, length)).reshape(b, -1, length)
        return self.c_proj(a)[:, :, 0]


class EncoderUNetModel(nn.Module):
    """The U-Net's encoder half (input and middle blocks) with a classification head."""

    def __init__(self, image_size, model_channels, out_channels, num_res_blocks, attention_resolutions,
                 channel_mult, num_head_channels, use_scale_shift_norm, resblock_updown, pool):  # fmt: skip
        super().__init__()
        emb_dim = model_channels * 4
        self.model_channels = model_channels
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )

        def res(cin, cout, **updown):
            return ResBlock(cin, emb_dim, 0.0, cout, use_scale_shift_norm, **updown)

        def attn(c):
            return AttentionBlock(c, 1, num_head_channels, new_order=False)

        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(3, ch, 3, padding=1))])
        feature_size, ds = ch, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(attn(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                feature_size += ch
            if level != len(channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, True)
                self.input_blocks.append(TimestepEmbedSequential(down))
                feature_size += ch
                ds *= 2
        self.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch), res(ch, ch))
        feature_size += ch
        self.pool = pool
        if pool == "adaptive":
            self.out = nn.Sequential(
                GroupNorm32(ch),
                nn.SiLU(),
                nn.AdaptiveAvgPool2d((1, 1)),
                nn.Conv2d(ch, out_channels, 1),
                nn.Flatten(),
            )
        elif pool == "attention":
            self.out = nn.Sequential(
                GroupNorm32(ch),
                nn.SiLU(),
                AttentionPool2d(image_size // ds, ch, num_head_channels, out_channels),
            )
        elif pool == "spatial":
            self.out = nn.Sequential(nn.Linear(feature_size, 2048), nn.ReLU(), nn.Linear(2048, out_channels))
        elif pool == "spatial_v2":
            self.out = nn.Sequential(
                nn.Linear(feature_size, 2048), GroupNorm32(2048), nn.SiLU(), nn.Linear(2048, out_channels)
            )
        else:
            raise ValueError(pool)

    def forward(self, x, timesteps):
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        results, h = [], x
        for module in self.input_blocks:
            h = module(h, emb)
            if self.pool.startswith("spatial"):
                results.append(h.mean(dim=(2, 3)))
        h = self.middle_block(h, emb)
        if self.pool.startswith("spatial"):
            results.append(h.mean(dim=(2, 3)))
            return self.out(torch.cat(results, dim=-1))
        return self.out(h)


def create_classifier(flags: dict) -> EncoderUNetModel:
    """Their create_classifier: channel multipliers by image size, heads of 64 channels, 1000 classes."""
    size = flags["image_size"]
    return EncoderUNetModel(
        image_size=size,
        model_channels=flags["classifier_width"],
        out_channels=1000,
        num_res_blocks=flags["classifier_depth"],
        attention_resolutions=tuple(
            size // int(r) for r in flags["classifier_attention_resolutions"].split(",")
        ),
        channel_mult=CHANNEL_MULT[size],
        num_head_channels=64,
        use_scale_shift_norm=flags["classifier_use_scale_shift_norm"],
        resblock_updown=flags["classifier_resblock_updown"],
        pool=flags["classifier_pool"],
    )


def cond_fn_for(classifier: nn.Module, scale: float):
    """classifier_sample.py's cond_fn: the gradient of the labels' log-probabilities, times the scale."""

    def cond_fn(x, t, y=None):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = F.log_softmax(classifier(x_in, t), dim=-1)
            selected = log_probs[range(len(log_probs)), y.view(-1)]
            return torch.autograd.grad(selected.sum(), x_in)[0] * scale

    return cond_fn


class GuidedDiffusion(SpacedDiffusion):
    """SpacedDiffusion's loops with their cond_fn hooks (the classifier sees the mapped timesteps, as
    their _WrappedModel wraps cond_fn too)."""

    def _mapped(self, t):
        mapped = torch.tensor(self.timestep_map, dtype=t.dtype)[t]
        return mapped.float() * (1000.0 / self.original_num_steps) if self.rescale_timesteps else mapped

    def _variance(self, log_variance, t, shape):
        """Their model_variance: exp(log variance) when learned; the fixed tables as they stand (fixed small:
        the unclipped posterior variance)."""
        if self.learn_sigma:
            return torch.exp(log_variance)
        table = (
            self.posterior_variance
            if self.sigma_small
            else np.append(self.posterior_variance[1], self.betas[1:])
        )
        return self._extract(table, t, shape)

    def p_sample_loop_guided(self, model, cond_fn, shape, noise, generator, model_kwargs):
        img = noise
        for i in reversed(range(self.num_timesteps)):
            t = torch.full((shape[0],), i, dtype=torch.long)
            mean, log_variance, _ = self.p_mean_variance(model, img, t, model_kwargs=model_kwargs)
            z = torch.randn(*shape, generator=generator)
            gradient = cond_fn(img, self._mapped(t), **model_kwargs)
            mean = (
                mean.float() + self._variance(log_variance, t, img.shape) * gradient.float()
            )  # condition_mean
            nonzero = (t != 0).float().view(-1, 1, 1, 1)
            img = mean + nonzero * torch.exp(0.5 * log_variance) * z
        return img

    def ddim_sample_loop_guided(self, model, cond_fn, shape, noise, generator, model_kwargs, eta=0.0):
        img = noise
        for i in reversed(range(self.num_timesteps)):
            t = torch.full((shape[0],), i, dtype=torch.long)
            _, _, x0 = self.p_mean_variance(model, img, t, model_kwargs=model_kwargs)
            recip = self._extract(self.sqrt_recip_alphas_cumprod, t, img.shape)
            recipm1 = self._extract(self.sqrt_recipm1_alphas_cumprod, t, img.shape)
            abar = self._extract(self.alphas_cumprod, t, img.shape)
            # condition_score: eps from the clipped x0, corrected, x0 from the corrected eps
            eps = (recip * img - x0) / recipm1
            eps = eps - (1 - abar).sqrt() * cond_fn(img, self._mapped(t), **model_kwargs)
            x0 = recip * img - recipm1 * eps
            eps = (recip * img - x0) / recipm1
            abar_prev = self._extract(self.alphas_cumprod_prev, t, img.shape)
            sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar)) * torch.sqrt(1 - abar / abar_prev)
            z = torch.randn(*shape, generator=generator)
            mean = x0 * torch.sqrt(abar_prev) + torch.sqrt(1 - abar_prev - sigma**2) * eps
            nonzero = (t != 0).float().view(-1, 1, 1, 1)
            img = mean + nonzero * sigma * z
        return img
