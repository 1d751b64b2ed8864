"""UNet2D: diffusers' UNet2DModel (the DDPM checkpoints' U-Net) built on fastddpm's fused ops.

Built from a UNet2DModel config dict; its parameter names are UNet2DModel's state_dict names, so
``unet.load_state_dict(diffusers_model.state_dict())`` works strictly, and ``UNet2D.from_diffusers(model)``
shares a diffusers model's Parameter objects. The forward pass holds no host sync and no branch on tensor
values, so it can be captured in a CUDA graph and compiled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastddpm import ops
from fastddpm.models import batch_invariant
from fastddpm.models.conv import Conv2d
from fastddpm.models.unet_blocks import DownBlock, MidBlock, UpBlock, drop_fused_caches, silu_projections
from fastddpm.models.unet_config import DOWN_BLOCKS, UP_BLOCKS, normalise_config


def timestep_frequencies(half_dim: int, freq_shift: float, max_period: int = 10000) -> torch.Tensor:
    """exp(-log(max_period) * i / (half_dim - freq_shift)), float32, in diffusers' operation order."""
    exponent = -math.log(max_period) * torch.arange(0, half_dim, dtype=torch.float32)
    return torch.exp(exponent / (half_dim - freq_shift))


class TimestepEmbedding(nn.Module):
    """diffusers' TimestepEmbedding: linear_1, SiLU, linear_2."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, out_channels)
        self.linear_2 = nn.Linear(out_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if batch_invariant.applies(x):
            h = batch_invariant.linear(self, "linear_1", x, [self.linear_1.weight], [self.linear_1.bias])
            return batch_invariant.linear(
                self, "linear_2", h, [self.linear_2.weight], [self.linear_2.bias], input_silu=True
            )
        return self.linear_2(F.silu(self.linear_1(x)))


class UNet2D(nn.Module):
    """The U-Net of a diffusers UNet2DModel config; ``unet(x, t, class_labels=None)`` returns the prediction.

    Supported: DownBlock2D / AttnDownBlock2D / UpBlock2D / AttnUpBlock2D / UNetMidBlock2D (or no mid block),
    any number of levels and layers_per_block, attention_head_dim None (one head) or an int, norm_num_groups,
    norm_eps, downsample_padding 0 or 1, resnet_time_scale_shift default or scale_shift, positional time
    embedding with flip_sin_to_cos and freq_shift, center_input_sample, add_attention, num_class_embeds.
    Any other value raises ValueError naming the field.
    """

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        cfg = normalise_config(config)
        self.config = cfg
        channels = cfg["block_out_channels"]
        temb_dim = cfg["time_embedding_dim"] or channels[0] * 4
        self.conv_in = Conv2d(cfg["in_channels"], channels[0], kernel_size=3, padding=1)
        self.time_embedding = TimestepEmbedding(channels[0], temb_dim)
        num_classes = cfg["num_class_embeds"]
        self.class_embedding = nn.Embedding(num_classes, temb_dim) if num_classes is not None else None

        resnet_args = dict(
            temb_channels=temb_dim,
            groups=cfg["norm_num_groups"],
            eps=cfg["norm_eps"],
            time_embedding_norm=cfg["resnet_time_scale_shift"],
            output_scale_factor=1.0,
            dropout=cfg["dropout"],
        )
        head_dim = cfg["attention_head_dim"]
        levels = len(channels)
        self.down_blocks = nn.ModuleList()
        for i, kind in enumerate(cfg["down_block_types"]):
            self.down_blocks.append(
                DownBlock(
                    channels[max(i - 1, 0)],
                    channels[i],
                    resnet_args,
                    layers=cfg["layers_per_block"],
                    attention=DOWN_BLOCKS[kind],
                    head_dim=head_dim,
                    downsample=i < levels - 1,
                    padding=cfg["downsample_padding"],
                )
            )
        self.mid_block = None
        if cfg["mid_block_type"] is not None:
            attention_groups = cfg["attn_norm_num_groups"]
            if attention_groups is None and cfg["resnet_time_scale_shift"] == "default":
                attention_groups = cfg["norm_num_groups"]  # diffusers: no attention norm for scale_shift
            self.mid_block = MidBlock(
                channels[-1],
                {**resnet_args, "output_scale_factor": float(cfg["mid_block_scale_factor"])},
                head_dim=head_dim,
                attention_groups=attention_groups,
                add_attention=cfg["add_attention"],
            )
        reversed_channels = channels[::-1]
        self.up_blocks = nn.ModuleList()
        for i, kind in enumerate(cfg["up_block_types"]):
            self.up_blocks.append(
                UpBlock(
                    reversed_channels[min(i + 1, levels - 1)],
                    reversed_channels[max(i - 1, 0)],
                    reversed_channels[i],
                    resnet_args,
                    layers=cfg["layers_per_block"] + 1,
                    attention=UP_BLOCKS[kind],
                    head_dim=head_dim,
                    upsample=i < levels - 1,
                )
            )
        self.conv_norm_out = nn.GroupNorm(cfg["norm_num_groups"], channels[0], eps=cfg["norm_eps"])
        self.conv_out = Conv2d(channels[0], cfg["out_channels"], kernel_size=3, padding=1)

        # Every resnet's time projection, in the order forward() visits them: one matmul serves them all.
        mid = [self.mid_block] if self.mid_block is not None else []
        self._resnets_in_order = [
            r for block in [*self.down_blocks, *mid, *self.up_blocks] for r in block.resnets
        ]
        self._temb_sizes = [r.time_emb_proj.out_features for r in self._resnets_in_order]
        self._half_dim = channels[0] // 2
        self._odd_embedding = channels[0] % 2 == 1
        self.register_buffer(
            "timestep_frequencies", timestep_frequencies(self._half_dim, cfg["freq_shift"]), persistent=False
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> UNet2D:
        return cls(config)

    @classmethod
    def from_diffusers(cls, model: nn.Module) -> UNet2D:
        """A UNet2D over a diffusers UNet2DModel's own Parameter objects (no copy: changes show in both)."""
        theirs = dict(model.named_parameters())
        unet = cls._on_meta(dict(model.config), theirs)
        for name, parameter in theirs.items():
            owner_name, _, attribute = name.rpartition(".")
            setattr(unet.get_submodule(owner_name), attribute, parameter)
        unet._reset_timestep_frequencies(unet.device)
        return unet.train(model.training)

    @classmethod
    def from_state_dict(cls, config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> UNet2D:
        """A UNet2D holding these tensors as its parameters (no random init, no copy); names and shapes strict."""
        unet = cls._on_meta(config, state_dict)
        unet.load_state_dict(state_dict, strict=True, assign=True)
        unet._reset_timestep_frequencies(unet.device)
        return unet

    @classmethod
    def _on_meta(cls, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> UNet2D:
        with torch.device("meta"):
            unet = cls(config)
        ours = {name: tuple(p.shape) for name, p in unet.state_dict().items()}
        missing, extra = sorted(set(ours) - set(tensors)), sorted(set(tensors) - set(ours))
        wrong = sorted(n for n in set(ours) & set(tensors) if tuple(tensors[n].shape) != ours[n])
        if missing or extra or wrong:
            raise ValueError(
                f"weights do not fit the U-Net config: missing {missing[:3]}, unexpected {extra[:3]}, "
                f"mis-shaped {wrong[:3]}"
            )
        return unet

    def _reset_timestep_frequencies(self, device: torch.device) -> None:
        self.timestep_frequencies = timestep_frequencies(self._half_dim, self.config["freq_shift"]).to(device)

    def _apply(self, fn, recurse=True):
        # Keep the timestep frequencies float32 (diffusers computes the embedding in float32) on any dtype cast,
        # and drop the fused-weight caches, which would otherwise keep the old copies of the weights alive.
        drop_fused_caches(self)
        super()._apply(fn, recurse)
        frequencies = self.timestep_frequencies
        if frequencies.dtype != torch.float32 and not frequencies.is_meta:
            self._reset_timestep_frequencies(frequencies.device)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def time_embedding_input(
        self, timestep: torch.Tensor | int, batch: int, device: torch.device
    ) -> torch.Tensor:
        """The sinusoidal embedding (B, C0), float32: diffusers' get_timestep_embedding."""
        if torch.is_tensor(timestep):
            # 0-d, (1,) or (B,): broadcast to (B,) as diffusers' `timesteps * ones(B)` does, without a sync.
            timesteps = timestep.reshape(-1).to(device).expand(batch)
        else:
            timesteps = torch.full((batch,), int(timestep), dtype=torch.long, device=device)
        angles = timesteps[:, None].float() * self.timestep_frequencies[None, :]
        sin, cos = torch.sin(angles), torch.cos(angles)
        embedding = torch.cat([cos, sin] if self.config["flip_sin_to_cos"] else [sin, cos], dim=-1)
        if self._odd_embedding:
            embedding = F.pad(embedding, (0, 1, 0, 0))
        return embedding

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor | int, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.config["center_input_sample"]:
            sample = 2 * sample - 1.0
        batch = sample.shape[0]
        invariant = batch_invariant.applies(sample)
        # One timestep for the whole batch (as samplers give it): its embedding and MLP computed once, at
        # one row, and broadcast, so no sample's embedding depends on how many rows the products had.
        shared = invariant and (not torch.is_tensor(timestep) or timestep.numel() == 1)
        emb = self.time_embedding(
            self.time_embedding_input(timestep, 1 if shared else batch, sample.device).to(self.dtype)
        )
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError(
                    "class_labels is required: this U-Net has a class embedding (num_class_embeds)"
                )
            emb = emb + self.class_embedding(class_labels).to(self.dtype)
        elif class_labels is not None:
            raise ValueError(
                "class_labels was given but this U-Net has no class embedding (num_class_embeds)"
            )

        # diffusers applies SiLU to emb before each resnet's time_emb_proj; one matmul does all of them.
        projections = [r.time_emb_proj for r in self._resnets_in_order]
        projected = silu_projections(self, "temb", emb, projections, batch, invariant)
        tembs = list(torch.split(projected, self._temb_sizes, dim=1))
        tembs.reverse()  # blocks pop() them in forward order

        h = self.conv_in(sample)
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, tembs)
            skips.extend(block_skips)
        if self.mid_block is not None:
            h = self.mid_block(h, tembs)
        for block in self.up_blocks:
            h = block(h, skips, tembs)
        norm = self.conv_norm_out
        h = ops.group_norm(h, norm.num_groups, norm.weight, norm.bias, norm.eps, silu=True)
        return self.conv_out(h)
