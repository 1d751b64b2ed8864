"""AdmClassifier: guided-diffusion's noisy-image classifier (their EncoderUNetModel) on the ADM blocks.

The encoder half of ADM's U-Net (time embedding, input blocks, middle block: fastddpm.models.adm_blocks,
the same code the diffusion net runs), then one of their four heads, with their parameter names so that
their checkpoints load strictly:

- ``adaptive``: GroupNorm32 + SiLU, global average pool, 1x1 conv to the classes (out.0, out.3);
- ``attention``: GroupNorm32 + SiLU, then CLIP's attention pool (out.2: a learned positional embedding
  over the mean token and the H*W positions, one qkv projection, heads of 64 channels in the all-q /
  all-k / all-v order, the mean token's output projected to the classes); its embedding fixes the input
  to image_size pixels;
- ``spatial``: the spatial mean of every input block's and the middle block's output, concatenated,
  Linear -> ReLU -> Linear (out.0, out.2);
- ``spatial_v2``: the same features, Linear -> GroupNorm32 -> SiLU -> Linear (out.0, out.1, out.3).

``classifier(x, t)`` returns the logits, float32. Guidance differentiates it with respect to x: with
autograd recording, fastddpm's fused ops (the extension's GroupNorm / attention kernels, the Winograd
convolution, the batch-invariant products) have no backward, so ops' dispatch and the layers take their
torch paths then (the reference GroupNorm, F.conv2d, matmul attention) and autograd differentiates those.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastddpm import ops
from fastddpm.models.adm_blocks import EPS, GROUPS, AttentionBlock, Downsample, ResBlock
from fastddpm.models.conv import Conv2d
from fastddpm.models.unet import timestep_frequencies
from fastddpm.models.unet_blocks import drop_fused_caches, silu_projections

POOLS = ("adaptive", "attention", "spatial", "spatial_v2")
HEAD_CHANNELS = 64  # their create_classifier's num_head_channels, for the attention blocks and the pool
SPATIAL_WIDTH = 2048  # the spatial heads' hidden width


class AttentionPool(nn.Module):
    """Their AttentionPool2d: attention of the mean token over [mean, positions] + positional embedding;
    only the mean token's output is kept, so only its query is computed. float32, as their head (their
    convert_to_fp16 casts the torso only)."""

    def __init__(self, spatial: int, channels: int, classes: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.empty(channels, spatial**2 + 1))
        self.qkv_proj = nn.Conv1d(channels, 3 * channels, 1)
        self.c_proj = nn.Conv1d(channels, classes, 1)
        self.heads = channels // HEAD_CHANNELS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        tokens = x.reshape(batch, channels, height * width)
        tokens = torch.cat([tokens.mean(dim=-1, keepdim=True), tokens], dim=-1)
        tokens = (tokens + self.positional_embedding.float()).transpose(1, 2)  # (B, L, C)
        length, heads = tokens.shape[1], self.heads
        qkv = F.linear(tokens, self.qkv_proj.weight[:, :, 0].float(), self.qkv_proj.bias.float())
        q, k, v = qkv.view(batch, length, 3, heads, channels // heads).permute(2, 0, 3, 1, 4).unbind(0)
        # their QKVAttention scales q and k by d ** -0.25 each: d ** -0.5 on the product
        o = ops.attention(q[:, :, :1], k, v, (channels // heads) ** -0.5)  # (B, heads, 1, d)
        return F.linear(
            o.reshape(batch, channels), self.c_proj.weight[:, :, 0].float(), self.c_proj.bias.float()
        )


class AdmClassifier(nn.Module):
    """EncoderUNetModel for resolved classifier flags (see fastddpm.checkpoints.adm_classifier)."""

    def __init__(self, flags: Mapping[str, Any]):
        super().__init__()
        width, mult = flags["classifier_width"], flags["channel_mult"]
        rates, pool, classes = set(flags["attention_ds"]), flags["classifier_pool"], flags["num_classes"]
        scale_shift, updown = flags["classifier_use_scale_shift_norm"], flags["classifier_resblock_updown"]
        if pool not in POOLS:
            raise ValueError(f"classifier_pool {pool!r} is not one of {', '.join(POOLS)}")
        self.config = dict(flags)
        emb_dim = 4 * width

        def res(cin: int, cout: int, resample: str | None = None) -> ResBlock:
            return ResBlock(cin, emb_dim, cout, scale_shift, 0.0, resample)

        def attention(channels: int) -> AttentionBlock:
            if channels % HEAD_CHANNELS:
                raise ValueError(
                    f"an attention block over {channels} channels cannot split into heads of {HEAD_CHANNELS}"
                )
            return AttentionBlock(channels, channels // HEAD_CHANNELS, False)

        self.time_embed = nn.ModuleList(
            [nn.Linear(width, emb_dim), nn.Identity(), nn.Linear(emb_dim, emb_dim)]
        )
        ch = int(mult[0] * width)
        self.input_blocks = nn.ModuleList([nn.ModuleList([Conv2d(3, ch, kernel_size=3, padding=1)])])
        features, rate = ch, 1
        for level, m in enumerate(mult):
            for _ in range(flags["classifier_depth"]):
                layers = [res(ch, int(m * width))]
                ch = int(m * width)
                if rate in rates:
                    layers.append(attention(ch))
                self.input_blocks.append(nn.ModuleList(layers))
                features += ch
            if level != len(mult) - 1:
                down = res(ch, ch, "down") if updown else Downsample(ch, use_conv=True)
                self.input_blocks.append(nn.ModuleList([down]))
                features += ch
                rate *= 2
        self.middle_block = nn.ModuleList([res(ch, ch), attention(ch), res(ch, ch)])
        features += ch
        self.pool = pool
        if pool == "adaptive":
            head = [
                nn.GroupNorm(GROUPS, ch, eps=EPS),
                nn.Identity(),
                nn.Identity(),
                nn.Conv2d(ch, classes, 1),
            ]
        elif pool == "attention":
            head = [
                nn.GroupNorm(GROUPS, ch, eps=EPS),
                nn.Identity(),
                AttentionPool(flags["image_size"] // rate, ch, classes),
            ]
        elif pool == "spatial":
            head = [nn.Linear(features, SPATIAL_WIDTH), nn.Identity(), nn.Linear(SPATIAL_WIDTH, classes)]
        else:
            head = [
                nn.Linear(features, SPATIAL_WIDTH),
                nn.GroupNorm(GROUPS, SPATIAL_WIDTH, eps=EPS),
                nn.Identity(),
                nn.Linear(SPATIAL_WIDTH, classes),
            ]
        self.out = nn.ModuleList(head)
        blocks = [*self.input_blocks, self.middle_block]
        self._resblocks = [layer for block in blocks for layer in block if isinstance(layer, ResBlock)]
        self._emb_sizes = [r.emb_layers[1].out_features for r in self._resblocks]
        self._half_dim, self._odd_embedding = width // 2, width % 2 == 1
        self.register_buffer("timestep_frequencies", timestep_frequencies(width // 2, 0), persistent=False)

    @classmethod
    def from_state_dict(
        cls, flags: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]
    ) -> AdmClassifier:
        """An AdmClassifier holding these tensors (names and shapes strict: the reader checks them first)."""
        with torch.device("meta"):
            model = cls(flags)
        model.load_state_dict(state_dict, strict=True, assign=True)
        model.timestep_frequencies = timestep_frequencies(model._half_dim, 0).to(model.device)
        model.requires_grad_(False)  # guidance differentiates with respect to the sample only
        return model.eval()

    @classmethod
    def expected_shapes(cls, flags: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        with torch.device("meta"):
            return {name: tuple(p.shape) for name, p in cls(flags).state_dict().items()}

    def _apply(self, fn, recurse=True):
        # the frequencies stay float32 on a dtype cast (their embedding is float32); fused caches are dropped
        drop_fused_caches(self)
        super()._apply(fn, recurse)
        frequencies = self.timestep_frequencies
        if frequencies.dtype != torch.float32 and not frequencies.is_meta:
            self.timestep_frequencies = timestep_frequencies(self._half_dim, 0).to(frequencies.device)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.time_embed[0].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.time_embed[0].weight.device

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        batch = sample.shape[0]
        timesteps = timestep.reshape(-1).to(sample.device).expand(batch)
        angles = timesteps[:, None].float() * self.timestep_frequencies[None, :]
        t_in = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
        if self._odd_embedding:
            t_in = F.pad(t_in, (0, 1))
        first, last = self.time_embed[0], self.time_embed[2]
        emb = last(F.silu(first(t_in.to(self.dtype))))
        projections = [r.emb_layers[1] for r in self._resblocks]
        embs = list(
            torch.split(silu_projections(self, "emb", emb, projections, batch, False), self._emb_sizes, 1)
        )
        embs.reverse()  # blocks pop() them in forward order

        spatial = self.pool.startswith("spatial")
        means = []
        h = sample.to(self.dtype)
        for block in [*self.input_blocks, self.middle_block]:
            for layer in block:
                h = layer(h, embs.pop()) if isinstance(layer, ResBlock) else layer(h)
            if spatial:
                means.append(h.float().mean(dim=(2, 3)))
        if spatial:
            return self._spatial_head(torch.cat(means, dim=-1))
        h = h.float()
        norm = self.out[0]
        h = ops.group_norm(h, GROUPS, norm.weight.float(), norm.bias.float(), EPS, silu=True)
        if self.pool == "adaptive":
            pooled = h.mean(dim=(2, 3))
            conv = self.out[3]
            return F.linear(pooled, conv.weight[:, :, 0, 0].float(), conv.bias.float())
        return self.out[2](h)

    def _spatial_head(self, features: torch.Tensor) -> torch.Tensor:
        first, last = self.out[0], self.out[-1]
        h = F.linear(features, first.weight.float(), first.bias.float())
        if self.pool == "spatial":
            h = F.relu(h)
        else:  # GroupNorm32 over the (B, 2048) vector, in float32, then SiLU
            norm = self.out[1]
            h = F.silu(F.group_norm(h, GROUPS, norm.weight.float(), norm.bias.float(), EPS))
        return F.linear(h, last.weight.float(), last.bias.float())
