"""An independent pure-torch model of the original DDPM U-Net (Ho et al.), in the module layout of
pesser/pytorch_diffusion and ermongroup/ddim, for testing the checkpoint converter.

It is written from the paper's architecture, not from fastddpm or diffusers code: the converter is tested
by comparing UNet2D on converted weights against this model's forward on the original weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """The paper's embedding: sin then cos, frequencies exp(-log(10000) * i / (half - 1))."""
    half = dim // 2
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    angles = timesteps.float()[:, None] * frequencies[None, :].to(timesteps.device)
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return F.pad(embedding, (0, 1)) if dim % 2 else embedding


def normalize(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, temb_channels: int):
        super().__init__()
        self.norm1 = normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = normalize(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention with 1x1-conv projections, scaled by int(C) ** -0.5."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = normalize(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x):
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, height, width = q.shape
        q = q.reshape(b, c, height * width).permute(0, 2, 1)  # (b, hw, c)
        k = k.reshape(b, c, height * width)  # (b, c, hw)
        weights = torch.softmax(torch.bmm(q, k) * (int(c) ** -0.5), dim=2)  # (b, hw_query, hw_key)
        out = torch.bmm(v.reshape(b, c, height * width), weights.permute(0, 2, 1))
        return x + self.proj_out(out.reshape(b, c, height, width))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class OriginalDDPM(nn.Module):
    def __init__(self, *, ch, out_ch, ch_mult, num_res_blocks, attn_resolutions, in_channels, resolution):
        super().__init__()
        self.ch, self.levels, self.num_res_blocks = ch, len(ch_mult), num_res_blocks
        temb_ch = 4 * ch
        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, temb_ch), nn.Linear(temb_ch, temb_ch)])
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        multipliers = (1, *ch_mult)
        resolution_now = resolution
        self.down = nn.ModuleList()
        block_in = ch
        for level in range(self.levels):
            down = nn.Module()
            down.block, down.attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * multipliers[level], ch * ch_mult[level]
            for _ in range(num_res_blocks):
                down.block.append(ResnetBlock(block_in, block_out, temb_ch))
                block_in = block_out
                if resolution_now in attn_resolutions:
                    down.attn.append(AttnBlock(block_in))
            if level != self.levels - 1:
                down.downsample = Downsample(block_in)
                resolution_now //= 2
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, temb_ch)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in, temb_ch)
        ups = []
        for level in reversed(range(self.levels)):
            up = nn.Module()
            up.block, up.attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[level]
            for i in range(num_res_blocks + 1):
                skip = ch * multipliers[level] if i == num_res_blocks else ch * ch_mult[level]
                up.block.append(ResnetBlock(block_in + skip, block_out, temb_ch))
                block_in = block_out
                if resolution_now in attn_resolutions:
                    up.attn.append(AttnBlock(block_in))
            if level != 0:
                up.upsample = Upsample(block_in)
                resolution_now *= 2
            ups.insert(0, up)  # self.up[level] is the module of resolution level `level`
        self.up = nn.ModuleList(ups)
        self.norm_out = normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, x, t):
        temb = self.temb.dense[1](F.silu(self.temb.dense[0](sinusoidal_embedding(t, self.ch))))
        hs = [self.conv_in(x)]
        for level in range(self.levels):
            for i in range(self.num_res_blocks):
                h = self.down[level].block[i](hs[-1], temb)
                if len(self.down[level].attn):
                    h = self.down[level].attn[i](h)
                hs.append(h)
            if level != self.levels - 1:
                hs.append(self.down[level].downsample(hs[-1]))
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], temb)), temb)
        for level in reversed(range(self.levels)):
            for i in range(self.num_res_blocks + 1):
                h = self.up[level].block[i](torch.cat([h, hs.pop()], dim=1), temb)
                if len(self.up[level].attn):
                    h = self.up[level].attn[i](h)
            if level != 0:
                h = self.up[level].upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def random_original_model(seed: int = 0, **architecture) -> OriginalDDPM:
    """An OriginalDDPM with all weights random and non-trivial (norm affines included), in eval mode."""
    torch.manual_seed(seed)
    model = OriginalDDPM(**architecture).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if ".norm" in f".{name}":
                p.copy_(1 + 0.2 * noise if name.endswith("weight") else 0.2 * noise)
            elif p.dim() == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)
    return model
