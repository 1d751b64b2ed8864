"""Original DDPM checkpoints (Ho et al.'s model as ported by pesser/pytorch_diffusion and ermongroup/ddim).

The original module tree (``temb.dense.{0,1}``, ``conv_in``, ``down.L.block.j``, ``down.L.attn.j``,
``down.L.downsample.conv``, ``mid.block_1`` / ``mid.attn_1`` / ``mid.block_2``, ``up.L.block.j``,
``up.L.attn.j``, ``up.L.upsample.conv``, ``norm_out``, ``conv_out``) maps one to one onto UNet2DModel:

* ``up`` is indexed by resolution level (up.0 is the full-resolution level), diffusers' ``up_blocks`` by
  execution order, so up.L becomes up_blocks.(levels - 1 - L);
* attention q / k / v / proj_out are 1x1 convs: their (C, C, 1, 1) weights become Linear (C, C) weights;
  one head, scale int(C) ** -0.5 = attention_head_dim None;
* ``nin_shortcut`` is diffusers' ``conv_shortcut``, ``temb_proj`` its ``time_emb_proj``;
* GroupNorm with 32 groups and eps 1e-6, downsampling by a (0, 1, 0, 1) pad and an unpadded stride-2 conv
  (downsample_padding 0), the sinusoidal embedding sin-first with log(10000) / (half - 1) (flip_sin_to_cos
  False, freq_shift 1).

The architecture is read from tensor shapes: channels per level from ``down.L.block.0.conv1``, layers per
level from the count of ``down.0.block.j``, the attention levels from which ``down.L.attn`` exist. The image
size is not in the weights: every model of the paper attends at 16x16, so ``sample_size`` is inferred as
16 * 2**(first attention level) (32 for CIFAR-10, 256 for the LSUN / CelebA-HQ models), or 32 without
attention; pass ``sample_size=`` to override it. The schedule is the paper's: linear betas 1e-4..0.02 over
T=1000, clip_sample, and variance fixed_large for 32 px models (the paper's CIFAR-10 choice) and
fixed_small otherwise; any scheduler key can be overridden.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fastddpm.checkpoints.files import CheckpointError, as_state_dict

ORIGINAL_MARKERS = ("temb.dense.0.weight", "conv_in.weight", "down.0.block.0.conv1.weight")
_RESNET_PARTS = {
    "norm1": "norm1",
    "conv1": "conv1",
    "temb_proj": "time_emb_proj",
    "norm2": "norm2",
    "conv2": "conv2",
    "nin_shortcut": "conv_shortcut",
}
_ATTENTION_PARTS = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def is_original_layout(state: Mapping[str, Any]) -> bool:
    return all(key in state for key in ORIGINAL_MARKERS)


def unwrap_original(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The model's state dict from what torch.load returned.

    A plain state dict (pesser/pytorch_diffusion); a dict holding one under "ema", "ema_model", "state_dict"
    or "model"; or ermongroup/ddim's list [model, optimizer, epoch, step, ema] (the EMA weights, which ddim
    samples with, when present). A DataParallel "module." prefix is removed.
    """
    if isinstance(obj, (list, tuple)):
        candidates = [obj[-1], obj[0]] if len(obj) >= 5 else list(obj[:1])
    elif isinstance(obj, Mapping) and not is_original_layout(_strip_module(obj)):
        candidates = [obj[k] for k in ("ema", "ema_model", "state_dict", "model") if k in obj] or [obj]
    else:
        candidates = [obj]
    for candidate in candidates:
        if isinstance(candidate, Mapping) and is_original_layout(_strip_module(candidate)):
            return as_state_dict(_strip_module(candidate), path)
    raise CheckpointError(
        f"{path}: not an original DDPM checkpoint (no temb.dense / conv_in / down.L.block.j tensors found)"
    )


def _strip_module(state: Mapping[str, Any]) -> dict[str, Any]:
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def _indices(state: Mapping[str, Any], pattern: str) -> list[int]:
    found = {int(m[1]) for m in (re.match(pattern, k) for k in state) if m}
    return sorted(found)


def infer_config(state: Mapping[str, torch.Tensor], path: Path, sample_size: int | None = None) -> dict:
    """A UNet2DModel config for an original-layout state dict (see the module docstring)."""
    levels = _indices(state, r"down\.(\d+)\.")
    if levels != list(range(len(levels))) or not levels:
        raise CheckpointError(f"{path}: original checkpoint has down levels {levels}, not 0..n-1")
    layers = len(_indices(state, r"down\.0\.block\.(\d+)\."))
    channels = []
    for level in levels:
        weight = state.get(f"down.{level}.block.0.conv1.weight")
        if weight is None or weight.dim() != 4:
            raise CheckpointError(
                f"{path}: original checkpoint lacks a 4-d down.{level}.block.0.conv1.weight"
            )
        channels.append(int(weight.shape[0]))
    attention = [any(k.startswith(f"down.{level}.attn.") for k in state) for level in levels]
    up_attention = [any(k.startswith(f"up.{level}.attn.") for k in state) for level in levels]
    if up_attention != attention:
        raise CheckpointError(
            f"{path}: original checkpoint attends at down levels {_which(attention)} but up levels {_which(up_attention)}"
        )
    for level in levels[:-1]:
        if f"down.{level}.downsample.conv.weight" not in state:
            raise CheckpointError(
                f"{path}: original checkpoint has no down.{level}.downsample.conv (avg-pool resampling)"
            )
    temb = state["temb.dense.0.weight"]
    if sample_size is None:
        sample_size = 16 * 2 ** attention.index(True) if any(attention) else 32
    count = len(levels)
    return {
        "sample_size": sample_size,
        "in_channels": int(state["conv_in.weight"].shape[1]),
        "out_channels": int(state["conv_out.weight"].shape[0]),
        "block_out_channels": channels,
        "layers_per_block": layers,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": [
            "AttnUpBlock2D" if attention[count - 1 - i] else "UpBlock2D" for i in range(count)
        ],
        "attention_head_dim": None,
        "norm_num_groups": 32,
        "norm_eps": 1e-6,
        "downsample_padding": 0,
        "flip_sin_to_cos": False,
        "freq_shift": 1,
        "time_embedding_dim": int(temb.shape[0]) if temb.shape[0] != 4 * channels[0] else None,
        "add_attention": any(k.startswith("mid.attn_1.") for k in state),
        "mid_block_scale_factor": 1,
        "resnet_time_scale_shift": "default",
        "act_fn": "silu",
    }


def _which(flags: list[bool]) -> list[int]:
    return [i for i, flag in enumerate(flags) if flag]


def convert_state_dict(state: Mapping[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """Original names -> UNet2DModel names; names it does not know pass through (and are reported later)."""
    converted = {}
    for name, tensor in state.items():
        new_name, is_attention = _convert_name(name, levels)
        if is_attention and tensor.dim() == 4 and tensor.shape[2:] == (1, 1):
            tensor = tensor[:, :, 0, 0]  # 1x1 conv -> Linear
        converted[new_name] = tensor
    return converted


def _convert_name(name: str, levels: int) -> tuple[str, bool]:
    simple = {"temb.dense.0": "time_embedding.linear_1", "temb.dense.1": "time_embedding.linear_2"}
    simple.update({"conv_in": "conv_in", "norm_out": "conv_norm_out", "conv_out": "conv_out"})
    prefix, _, leaf = name.rpartition(".")
    if prefix in simple:
        return f"{simple[prefix]}.{leaf}", False
    parts = prefix.split(".")
    if parts[0] == "mid" and len(parts) == 3:
        target = {
            "block_1": "mid_block.resnets.0",
            "block_2": "mid_block.resnets.1",
            "attn_1": "mid_block.attentions.0",
        }
        if parts[1] in target:
            table = _ATTENTION_PARTS if parts[1] == "attn_1" else _RESNET_PARTS
            if parts[2] in table:
                return f"{target[parts[1]]}.{table[parts[2]]}.{leaf}", parts[1] == "attn_1"
    if parts[0] in ("down", "up") and len(parts) >= 4 and parts[1].isdigit():
        level = int(parts[1])
        block = f"down_blocks.{level}" if parts[0] == "down" else f"up_blocks.{levels - 1 - level}"
        kind = parts[2]
        if kind == "block" and len(parts) == 5 and parts[4] in _RESNET_PARTS:
            return f"{block}.resnets.{parts[3]}.{_RESNET_PARTS[parts[4]]}.{leaf}", False
        if kind == "attn" and len(parts) == 5 and parts[4] in _ATTENTION_PARTS:
            return f"{block}.attentions.{parts[3]}.{_ATTENTION_PARTS[parts[4]]}.{leaf}", True
        if kind in ("downsample", "upsample") and parts[3:] == ["conv"]:
            sampler = "downsamplers" if kind == "downsample" else "upsamplers"
            return f"{block}.{sampler}.0.conv.{leaf}", False
    return name, False


def paper_scheduler_config(sample_size: int | tuple[int, int]) -> dict:
    """Ho et al.'s schedule: linear 1e-4..0.02, T=1000, clipped x0; fixed_large at 32 px, fixed_small above."""
    small_image = (sample_size if isinstance(sample_size, int) else max(sample_size)) <= 32
    return {
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "variance_type": "fixed_large" if small_image else "fixed_small",
        "clip_sample": True,
        "prediction_type": "epsilon",
    }
