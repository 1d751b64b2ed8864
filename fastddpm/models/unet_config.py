"""Normalising and checking a diffusers UNet2DModel config: defaults filled in, unsupported fields rejected."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# UNet2DModel.__init__'s defaults in diffusers 0.42 (tests/models/test_unet.py checks this table against diffusers),
# so a config that omits a field means here what it means there.
DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "sample_size": None,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (224, 448, 672, 896),
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "dropout": 0.0,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "num_train_timesteps": None,
}

DOWN_BLOCKS = {"DownBlock2D": False, "AttnDownBlock2D": True}  # type -> has attention
UP_BLOCKS = {"UpBlock2D": False, "AttnUpBlock2D": True}
# Fields that must hold one of these values (diffusers' "swish" is its alias of SiLU).
_CHOICES = {
    "time_embedding_type": ("positional",),
    "mid_block_type": ("UNetMidBlock2D", None),
    "downsample_type": ("conv",),
    "upsample_type": ("conv",),
    "act_fn": ("silu", "swish"),
    "resnet_time_scale_shift": ("default", "scale_shift"),
    "class_embed_type": (None,),
    "downsample_padding": (0, 1),
}


def _positive_int(config: dict, field: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"UNet config field {field!r} must be a positive integer, got {value!r}")
    return value


def _block_type(field: str, name, allowed: dict) -> str:
    # diffusers strips a "UNetRes" prefix from block type names; so do we.
    base = name[7:] if isinstance(name, str) and name.startswith("UNetRes") else name
    if base not in allowed:
        raise ValueError(
            f"UNet config field {field!r} has block type {name!r}; supported: {', '.join(allowed)}"
        )
    return base


def normalise_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The full config dict (defaults filled, lists as tuples); ValueError naming any unsupported field."""
    if not isinstance(config, Mapping):
        raise ValueError(
            f"a UNet config must be a mapping of field names to values, got {type(config).__name__}"
        )
    unknown = sorted(k for k in config if not str(k).startswith("_") and k not in DIFFUSERS_DEFAULTS)
    if unknown:
        raise ValueError(f"UNet config field {unknown[0]!r} is not a UNet2DModel field fastddpm supports")
    out = dict(DIFFUSERS_DEFAULTS)
    out.update({k: v for k, v in config.items() if not str(k).startswith("_")})
    for field in ("down_block_types", "up_block_types", "block_out_channels"):
        if not isinstance(out[field], (list, tuple)) or not out[field]:
            raise ValueError(f"UNet config field {field!r} must be a non-empty list, got {out[field]!r}")
        out[field] = tuple(out[field])
    if isinstance(out["sample_size"], list):
        out["sample_size"] = tuple(out["sample_size"])
    for field, allowed in _CHOICES.items():
        if out[field] not in allowed:
            raise ValueError(
                f"UNet config field {field!r} = {out[field]!r} is not supported (supported: {allowed})"
            )

    levels = len(out["block_out_channels"])
    for field in ("down_block_types", "up_block_types"):
        if len(out[field]) != levels:
            raise ValueError(
                f"UNet config field {field!r} has {len(out[field])} entries but block_out_channels has {levels}"
            )
    out["down_block_types"] = tuple(
        _block_type("down_block_types", n, DOWN_BLOCKS) for n in out["down_block_types"]
    )
    out["up_block_types"] = tuple(_block_type("up_block_types", n, UP_BLOCKS) for n in out["up_block_types"])

    channels = [_positive_int(out, "block_out_channels", c) for c in out["block_out_channels"]]
    for field in ("in_channels", "out_channels", "layers_per_block", "norm_num_groups"):
        _positive_int(out, field, out[field])
    for field in ("time_embedding_dim", "num_class_embeds", "attn_norm_num_groups"):
        if out[field] is not None:
            _positive_int(out, field, out[field])
    groups = out["norm_num_groups"]
    for c in channels:
        if c % groups:
            raise ValueError(
                f"UNet config field 'norm_num_groups' = {groups} does not divide channel count {c}"
            )
    head_dim = out["attention_head_dim"]
    if head_dim is not None:
        _positive_int(out, "attention_head_dim", head_dim)
        # diffusers uses C // head_dim heads; a remainder would change the projections' shapes.
        attended = [c for c, kind in zip(channels, out["down_block_types"], strict=True) if DOWN_BLOCKS[kind]]
        attended += [
            c for c, kind in zip(channels[::-1], out["up_block_types"], strict=True) if UP_BLOCKS[kind]
        ]
        if out["mid_block_type"] is not None and out["add_attention"]:
            attended.append(channels[-1])
        for c in attended:
            if c % head_dim:
                raise ValueError(
                    f"UNet config field 'attention_head_dim' = {head_dim} does not divide {c} channels"
                )
    for field in ("norm_eps", "mid_block_scale_factor", "freq_shift", "dropout"):
        value = out[field]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"UNet config field {field!r} must be a finite number, got {value!r}")
    if not 0 <= out["dropout"] < 1:
        raise ValueError(f"UNet config field 'dropout' must be in [0, 1), got {out['dropout']!r}")
    if out["mid_block_scale_factor"] == 0:
        raise ValueError("UNet config field 'mid_block_scale_factor' must not be 0")
    for field in ("center_input_sample", "flip_sin_to_cos", "add_attention"):
        if not isinstance(out[field], bool):
            raise ValueError(f"UNet config field {field!r} must be true or false, got {out[field]!r}")
    return out
