"""AdmUNet: OpenAI's ADM U-Net (improved-diffusion, guided-diffusion UNetModel) on fastddpm's fused ops.

Built from resolved ADM flags (fastddpm.checkpoints.adm_flags.resolve_flags); its parameter names are their
UNetModel's state_dict names (time_embed, label_emb, input_blocks, middle_block, output_blocks, out), so their
checkpoints load strictly. ``unet(x, t, class_labels=None)`` takes integer or float timesteps (float when
rescale_timesteps scales them to 0..1000) and returns 3 or, with learned sigmas, 6 channels. An upsampler
(their SuperResModel, flags["super_res"]) also takes ``low_res``, the low-resolution image in [-1, 1], which
it upsamples bilinearly to the sample's size and concatenates to the sample's channels, as theirs does. The forward pass
holds no host sync and no branch on tensor values, so it can be captured in a CUDA graph and compiled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastddpm.models import batch_invariant
from fastddpm.models.adm_blocks import AttentionBlock, Downsample, ResBlock, Upsample, group_norm
from fastddpm.models.conv import Conv2d
from fastddpm.models.unet import timestep_frequencies
from fastddpm.models.unet_blocks import drop_fused_caches, silu_projections

NUM_CLASSES = 1000  # their class-conditional models are ImageNet's


def _heads(channels: int, num_heads: int, num_head_channels: int) -> int:
    if num_head_channels == -1:
        return num_heads
    if channels % num_head_channels:
        raise ValueError(f"num_head_channels={num_head_channels} does not divide {channels} channels")
    return channels // num_head_channels


class AdmUNet(nn.Module):
    """ADM's U-Net for resolved flags (``config``: the flags plus sample_size, in_channels, out_channels)."""

    def __init__(self, flags: Mapping[str, Any]):
        super().__init__()
        model_channels = flags["num_channels"]
        mult, rates = flags["channel_mult"], set(flags["attention_ds"])
        out_channels = 6 if flags["learn_sigma"] else 3
        self.super_res = bool(flags.get("super_res", False))
        self.config = {
            **flags,
            "sample_size": flags.get("sample_size", flags["image_size"]),
            "in_channels": 3,  # the sample's; an upsampler's first convolution also reads low_res's 3
            "out_channels": out_channels,
        }
        emb_dim = 4 * model_channels
        scale_shift, dropout, updown = (
            flags["use_scale_shift_norm"],
            flags["dropout"],
            flags["resblock_updown"],
        )
        heads_down = flags["num_heads"]
        heads_up = heads_down if flags["num_heads_upsample"] == -1 else flags["num_heads_upsample"]

        def res(cin: int, cout: int, resample: str | None = None) -> ResBlock:
            return ResBlock(cin, emb_dim, cout, scale_shift, dropout, resample)

        def attention(channels: int, heads: int) -> AttentionBlock:
            heads = _heads(channels, heads, flags["num_head_channels"])
            return AttentionBlock(channels, heads, flags["use_new_attention_order"])

        self.time_embed = nn.ModuleList(
            [nn.Linear(model_channels, emb_dim), nn.Identity(), nn.Linear(emb_dim, emb_dim)]
        )
        self.label_emb = nn.Embedding(NUM_CLASSES, emb_dim) if flags["class_cond"] else None

        ch = input_ch = int(mult[0] * model_channels)
        self.input_blocks = nn.ModuleList(
            [nn.ModuleList([Conv2d(6 if self.super_res else 3, ch, kernel_size=3, padding=1)])]
        )
        skip_channels, rate = [ch], 1
        for level, m in enumerate(mult):
            for _ in range(flags["num_res_blocks"]):
                layers = [res(ch, int(m * model_channels))]
                ch = int(m * model_channels)
                if rate in rates:
                    layers.append(attention(ch, heads_down))
                self.input_blocks.append(nn.ModuleList(layers))
                skip_channels.append(ch)
            if level != len(mult) - 1:
                down = res(ch, ch, "down") if updown else Downsample(ch, use_conv=True)
                self.input_blocks.append(nn.ModuleList([down]))
                skip_channels.append(ch)
                rate *= 2
        self.middle_block = nn.ModuleList([res(ch, ch), attention(ch, heads_down), res(ch, ch)])
        self.output_blocks = nn.ModuleList()
        for level, m in list(enumerate(mult))[::-1]:
            for i in range(flags["num_res_blocks"] + 1):
                layers = [res(ch + skip_channels.pop(), int(m * model_channels))]
                ch = int(m * model_channels)
                if rate in rates:
                    layers.append(attention(ch, heads_up))
                if level and i == flags["num_res_blocks"]:
                    layers.append(res(ch, ch, "up") if updown else Upsample(ch, use_conv=True))
                    rate //= 2
                self.output_blocks.append(nn.ModuleList(layers))
        self.out = nn.ModuleList(
            [
                nn.GroupNorm(32, ch, eps=1e-5),
                nn.Identity(),
                Conv2d(input_ch, out_channels, kernel_size=3, padding=1),
            ]
        )

        # Every ResBlock's emb_layers.1 in forward order: one matmul projects emb for all of them.
        blocks = [*self.input_blocks, self.middle_block, *self.output_blocks]
        self._resblocks = [layer for block in blocks for layer in block if isinstance(layer, ResBlock)]
        self._emb_sizes = [r.emb_layers[1].out_features for r in self._resblocks]
        self._half_dim = model_channels // 2
        self._odd_embedding = model_channels % 2 == 1
        # their timestep_embedding: exp(-log(10000) * i / half), i.e. diffusers' with freq_shift 0
        self.register_buffer(
            "timestep_frequencies", timestep_frequencies(self._half_dim, 0), persistent=False
        )

    @classmethod
    def from_state_dict(cls, flags: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> AdmUNet:
        """An AdmUNet holding these tensors as its parameters (no random init, no copy); names and shapes
        strict (the caller reports mismatches against ``expected_shapes`` first)."""
        with torch.device("meta"):
            unet = cls(flags)
        unet.load_state_dict(state_dict, strict=True, assign=True)
        unet._reset_timestep_frequencies(unet.device)
        return unet.eval()

    @classmethod
    def expected_shapes(cls, flags: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        with torch.device("meta"):
            return {name: tuple(p.shape) for name, p in cls(flags).state_dict().items()}

    def _reset_timestep_frequencies(self, device: torch.device) -> None:
        self.timestep_frequencies = timestep_frequencies(self._half_dim, 0).to(device)

    def _apply(self, fn, recurse=True):
        # Keep the frequencies float32 on any dtype cast (their embedding is float32); drop fused-weight caches.
        drop_fused_caches(self)
        super()._apply(fn, recurse)
        if self.timestep_frequencies.dtype != torch.float32 and not self.timestep_frequencies.is_meta:
            self._reset_timestep_frequencies(self.timestep_frequencies.device)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.time_embed[0].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.time_embed[0].weight.device

    def time_embedding_input(self, timestep: torch.Tensor | float, batch: int, device) -> torch.Tensor:
        """Their timestep_embedding: [cos, sin] of t * frequencies, float32, (B, num_channels)."""
        if torch.is_tensor(timestep):
            timesteps = timestep.reshape(-1).to(device).expand(batch)
        else:
            timesteps = torch.full((batch,), float(timestep), dtype=torch.float32, device=device)
        angles = timesteps[:, None].float() * self.timestep_frequencies[None, :]
        embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
        return F.pad(embedding, (0, 1)) if self._odd_embedding else embedding

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        class_labels: torch.Tensor | None = None,
        low_res: torch.Tensor | None = None,
    ) -> torch.Tensor:
        first, last = self.time_embed[0], self.time_embed[2]
        batch = sample.shape[0]
        invariant = batch_invariant.applies(sample)
        # One timestep for the whole batch: embedded once, at one row, and broadcast (batch_invariant).
        shared = invariant and (not torch.is_tensor(timestep) or timestep.numel() == 1)
        t_in = self.time_embedding_input(timestep, 1 if shared else batch, sample.device).to(self.dtype)
        if invariant:
            h = batch_invariant.linear(self, "time_embed_0", t_in, [first.weight], [first.bias])
            emb = batch_invariant.linear(self, "time_embed_2", h, [last.weight], [last.bias], input_silu=True)
        else:
            emb = last(F.silu(first(t_in)))
        if self.label_emb is not None:
            if class_labels is None:
                raise ValueError("class_labels is required: this ADM model is class-conditional (class_cond)")
            emb = emb + self.label_emb(class_labels.to(sample.device)).to(self.dtype)
        elif class_labels is not None:
            raise ValueError("class_labels was given but this ADM model is not class-conditional")

        # Each ResBlock's emb_layers = Linear(SiLU(emb)); one matmul serves them all.
        projections = [r.emb_layers[1] for r in self._resblocks]
        projected = silu_projections(self, "emb", emb, projections, batch, invariant)
        embs = list(torch.split(projected, self._emb_sizes, dim=1))
        embs.reverse()  # blocks pop() them in forward order

        skips = []
        h = self._with_low_res(sample, low_res).to(self.dtype)
        for block in self.input_blocks:
            h = self._run(block, h, embs)
            skips.append(h)
        h = self._run(self.middle_block, h, embs)
        for block in self.output_blocks:
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), embs)
        h = group_norm(self.out[0], h, silu=True)
        return self.out[2](h)

    def _with_low_res(self, sample: torch.Tensor, low_res: torch.Tensor | None) -> torch.Tensor:
        """An upsampler's input: the sample and low_res upsampled bilinearly to its size (their F.interpolate
        with mode="bilinear", align_corners False), channel-concatenated in that order."""
        if not self.super_res:
            if low_res is not None:
                raise ValueError("low_res was given but this ADM model is not an upsampler")
            return sample
        if low_res is None:
            raise ValueError("low_res is required: this ADM model is an upsampler (SuperResModel)")
        upsampled = F.interpolate(low_res.to(sample.device, sample.dtype), sample.shape[2:], mode="bilinear")
        return torch.cat([sample, upsampled], dim=1)

    @staticmethod
    def _run(block: nn.ModuleList, h: torch.Tensor, embs: list[torch.Tensor]) -> torch.Tensor:
        for layer in block:
            h = layer(h, embs.pop()) if isinstance(layer, ResBlock) else layer(h)
        return h
