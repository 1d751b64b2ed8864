"""An ADM net as a diffusers UNet2DModel (config + renamed weights), where UNet2DModel can express it.

The mapping: ResBlocks are ResnetBlock2D (scale_shift time_embedding_norm for use_scale_shift_norm);
resblock_updown levels are ResnetDownsampleBlock2D / ResnetUpsampleBlock2D, or Attn*Block2D with
down/upsample_type "resnet"; conv resampling is DownBlock2D / UpBlock2D (downsample_padding 1); label_emb is
num_class_embeds; the time embedding is flip_sin_to_cos with freq_shift 0; qkv splits into to_q / to_k / to_v
by their head order. What it cannot express is refused with the reason: a first channel multiplier other
than 1 (diffusers' time embedding has block_out_channels[0] inputs, ADM's num_channels), attention heads of
more than one size (diffusers' attention_head_dim is one size for every block), and rescale_timesteps with
diffusion_steps other than 1000 (diffusers' schedulers hand the net unscaled timesteps).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

RESBLOCK = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}


class NotExpressible(ValueError):
    """diffusers' UNet2DModel cannot express this ADM net; the message says why."""


def _levels(flags: Mapping[str, Any]) -> list[tuple[int, bool]]:
    """(channels, attends) per level."""
    c = flags["num_channels"]
    return [(int(m * c), 2**i in flags["attention_ds"]) for i, m in enumerate(flags["channel_mult"])]


def head_dim(flags: Mapping[str, Any]) -> int | None:
    levels = _levels(flags)
    down = [ch for ch, attends in levels if attends] + [levels[-1][0]]  # + the middle block
    up = [ch for ch, attends in levels if attends]
    heads_up = flags["num_heads"] if flags["num_heads_upsample"] == -1 else flags["num_heads_upsample"]
    if flags["num_head_channels"] != -1:
        return flags["num_head_channels"]
    sizes = {ch // flags["num_heads"] for ch in down} | {ch // heads_up for ch in up}
    if len(sizes) == 1:
        return sizes.pop()
    if flags["num_heads"] == heads_up == 1:
        return None  # one head of the block's width everywhere: diffusers' attention_head_dim None
    raise NotExpressible(
        f"num_heads={flags['num_heads']} gives heads of {sorted(sizes)} channels; diffusers' attention_head_dim "
        "is one size for every block"
    )


def unet_config(flags: Mapping[str, Any]) -> dict[str, Any]:
    if flags["channel_mult"][0] != 1:
        raise NotExpressible(
            f"channel_mult starts at {flags['channel_mult'][0]}: diffusers' time embedding takes "
            "block_out_channels[0] inputs, ADM's takes num_channels"
        )
    levels = _levels(flags)
    updown = flags["resblock_updown"]
    plain_down, plain_up = (
        ("ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D") if updown else ("DownBlock2D", "UpBlock2D")
    )
    return {
        "sample_size": flags["image_size"],
        "in_channels": 3,
        "out_channels": 6 if flags["learn_sigma"] else 3,
        "block_out_channels": [ch for ch, _ in levels],
        "layers_per_block": flags["num_res_blocks"],
        "down_block_types": ["AttnDownBlock2D" if a else plain_down for _, a in levels],
        "up_block_types": ["AttnUpBlock2D" if a else plain_up for _, a in reversed(levels)],
        "downsample_type": "resnet" if updown else "conv",
        "upsample_type": "resnet" if updown else "conv",
        "downsample_padding": 1,
        "attention_head_dim": head_dim(flags),
        "norm_num_groups": 32,
        "attn_norm_num_groups": 32,
        "norm_eps": 1e-5,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "time_embedding_type": "positional",
        "resnet_time_scale_shift": "scale_shift" if flags["use_scale_shift_norm"] else "default",
        "num_class_embeds": 1000 if flags["class_cond"] else None,
        "mid_block_scale_factor": 1,
        "add_attention": True,
        "act_fn": "silu",
        "center_input_sample": False,
        "dropout": flags["dropout"],
    }


def scheduler_config(diffusion: Mapping[str, Any]) -> dict[str, Any]:
    steps = int(diffusion["diffusion_steps"])
    if diffusion["rescale_timesteps"] and steps != 1000:
        raise NotExpressible(
            f"rescale_timesteps with diffusion_steps={steps}: diffusers' schedulers hand the net unscaled timesteps"
        )
    scale = 1000 / steps
    schedule = {"linear": "linear", "cosine": "squaredcos_cap_v2"}[diffusion["noise_schedule"]]
    if diffusion["learn_sigma"]:
        variance = "learned_range"
    else:
        variance = "fixed_small" if diffusion["sigma_small"] else "fixed_large"
    return {
        "num_train_timesteps": steps,
        "beta_schedule": schedule,
        "beta_start": 0.0001 * scale,
        "beta_end": 0.02 * scale,
        "variance_type": variance,
        "clip_sample": True,
        "prediction_type": "sample" if diffusion["predict_xstart"] else "epsilon",
    }


def _rename_layer(prefix: str, name: str) -> str:
    """A ResBlock's (or resampler's) parameter name under its diffusers prefix."""
    for theirs, ours in RESBLOCK.items():
        if name.startswith(theirs + "."):
            return f"{prefix}.{ours}{name[len(theirs) :]}"
    if name.startswith(("op.", "conv.")):  # Downsample's op / Upsample's conv
        return f"{prefix}.conv.{name.split('.', 1)[1]}"
    raise KeyError(name)


def _attention(prefix: str, parts: Mapping[str, torch.Tensor], heads: int, new_order: bool) -> dict:
    out = {
        f"{prefix}.group_norm.weight": parts["norm.weight"],
        f"{prefix}.group_norm.bias": parts["norm.bias"],
    }
    channels = parts["proj_out.weight"].shape[0]
    head = channels // heads
    for kind in ("weight", "bias"):
        qkv = parts[f"qkv.{kind}"]
        qkv = qkv[..., 0] if qkv.dim() == 3 else qkv
        # legacy: (heads, 3, head, ...); new: (3, heads, head, ...)
        shaped = (
            qkv.reshape(3, heads, head, -1) if new_order else qkv.reshape(heads, 3, head, -1).transpose(0, 1)
        )
        for i, name in enumerate(("to_q", "to_k", "to_v")):
            tensor = shaped[i].reshape(channels, -1)
            out[f"{prefix}.{name}.{kind}"] = tensor if kind == "weight" else tensor.reshape(channels)
        proj = parts[f"proj_out.{kind}"]
        out[f"{prefix}.to_out.0.{kind}"] = proj[..., 0] if proj.dim() == 3 else proj
    return {k: v.contiguous() for k, v in out.items()}


def state_dict(state: Mapping[str, torch.Tensor], flags: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """ADM names -> UNet2DModel names (call unet_config first: it refuses what cannot be expressed)."""
    levels = _levels(flags)
    per = flags["num_res_blocks"] + 1
    heads_up = flags["num_heads"] if flags["num_heads_upsample"] == -1 else flags["num_heads_upsample"]
    new_order = flags["use_new_attention_order"]

    def heads(channels: int, count: int) -> int:
        return channels // flags["num_head_channels"] if flags["num_head_channels"] != -1 else count

    def layers(prefix: str) -> dict[int, dict[str, torch.Tensor]]:
        found: dict[int, dict[str, torch.Tensor]] = {}
        for name, tensor in state.items():
            if name.startswith(prefix + "."):
                index, rest = name[len(prefix) + 1 :].split(".", 1)
                found.setdefault(int(index), {})[rest] = tensor
        return found

    out = {
        "time_embedding.linear_1.weight": state["time_embed.0.weight"],
        "time_embedding.linear_1.bias": state["time_embed.0.bias"],
        "time_embedding.linear_2.weight": state["time_embed.2.weight"],
        "time_embedding.linear_2.bias": state["time_embed.2.bias"],
        "conv_in.weight": state["input_blocks.0.0.weight"],
        "conv_in.bias": state["input_blocks.0.0.bias"],
        "conv_norm_out.weight": state["out.0.weight"],
        "conv_norm_out.bias": state["out.0.bias"],
        "conv_out.weight": state["out.2.weight"],
        "conv_out.bias": state["out.2.bias"],
    }
    if "label_emb.weight" in state:
        out["class_embedding.weight"] = state["label_emb.weight"]
    for level, (channels, _) in enumerate(levels):
        for j in range(per):
            block = 1 + level * per + j
            if j == per - 1 and level == len(levels) - 1:
                break
            for index, parts in layers(f"input_blocks.{block}").items():
                if j == per - 1:
                    prefix = f"down_blocks.{level}.downsamplers.0"
                elif index == 0:
                    prefix = f"down_blocks.{level}.resnets.{j}"
                else:
                    out.update(
                        _attention(
                            f"down_blocks.{level}.attentions.{j}",
                            parts,
                            heads(channels, flags["num_heads"]),
                            new_order,
                        )
                    )
                    continue
                out.update({_rename_layer(prefix, n): t for n, t in parts.items()})
    middle = layers("middle_block")
    out.update({_rename_layer("mid_block.resnets.0", n): t for n, t in middle[0].items()})
    out.update(
        _attention("mid_block.attentions.0", middle[1], heads(levels[-1][0], flags["num_heads"]), new_order)
    )
    out.update({_rename_layer("mid_block.resnets.1", n): t for n, t in middle[2].items()})
    for i, (channels, attends) in enumerate(reversed(levels)):
        for j in range(per):
            for index, parts in layers(f"output_blocks.{i * per + j}").items():
                if index == 0:
                    prefix = f"up_blocks.{i}.resnets.{j}"
                elif index == 1 and attends:
                    out.update(
                        _attention(
                            f"up_blocks.{i}.attentions.{j}", parts, heads(channels, heads_up), new_order
                        )
                    )
                    continue
                else:
                    prefix = f"up_blocks.{i}.upsamplers.0"
                out.update({_rename_layer(prefix, n): t for n, t in parts.items()})
    return out


class DiffusersUNet:
    """What fastddpm.checkpoints.save_diffusers writes: a UNet2DModel config and its state dict."""

    def __init__(self, config: dict[str, Any], state: dict[str, torch.Tensor]):
        self.config, self._state = config, state

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state


def as_diffusers(unet, diffusion: Mapping[str, Any]) -> tuple[DiffusersUNet, dict[str, Any]]:
    """(UNet2DModel view, DDPMScheduler config) of a loaded AdmUNet, or NotExpressible saying why."""
    flags = unet.config
    config = unet_config(flags)
    scheduler = scheduler_config(diffusion)
    return DiffusersUNet(config, state_dict(unet.state_dict(), flags)), scheduler
