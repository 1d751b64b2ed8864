"""OpenAI's ADM checkpoints (improved-diffusion, guided-diffusion): their UNetModel's state dict + their flags.

The weights say part of the architecture; the flags (their READMEs' MODEL_FLAGS and DIFFUSION_FLAGS, as
keyword arguments) say the rest. What the tensors determine is read from them: num_channels (time_embed.0),
learn_sigma (6 output channels), class_cond (label_emb), use_scale_shift_norm (2x-wide emb_layers),
resblock_updown (no ``op`` downsampling convs), num_res_blocks and the levels (where the output blocks
upsample), channel_mult (each level's width) and the attending levels (qkv tensors). A given flag that
contradicts them is an error naming the flag; a flag not given takes guided-diffusion's default when the
tensors agree with it and the tensors' value when they settle it otherwise. What they cannot say (the head
split, the attention order, image_size, the whole diffusion) comes from the flags or their defaults; when
image_size's default cannot describe the weights' levels, the error asks for image_size.

An upsampler (their SuperResModel: 6 input channels, the noisy sample and the bilinearly upsampled
low-resolution image) takes their super-resolution flags instead: large_size (the sample's side, which sets
channel_mult as their sr_create_model does) and small_size (the low-resolution input's side).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fastddpm.checkpoints.adm_flags import (
    DEFAULT_CHANNEL_MULT,
    SUPER_RES_DEFAULTS,
    FlagError,
    attention_rates,
    resolve_flags,
    resolve_super_res_flags,
)
from fastddpm.checkpoints.files import CheckpointError, as_state_dict, fitted_tensors
from fastddpm.models.adm_unet import AdmUNet

ADM_MARKERS = ("time_embed.0.weight", "input_blocks.0.0.weight", "out.2.weight")
DIFFUSION_FLAGS = (
    "diffusion_steps",
    "noise_schedule",
    "learn_sigma",
    "sigma_small",
    "predict_xstart",
    "rescale_timesteps",
    "timestep_respacing",
    "use_kl",
    "rescale_learned_sigmas",
)


def is_adm_layout(state: Any) -> bool:
    return isinstance(state, Mapping) and all(key in state for key in ADM_MARKERS)


def _block_layers(state: Mapping[str, torch.Tensor], prefix: str) -> dict[int, dict[int, set[str]]]:
    """{block index: {layer index: the parameter names' first parts under it}} for input/output blocks."""
    blocks: dict[int, dict[int, set[str]]] = {}
    for name in state:
        match = re.match(rf"{prefix}\.(\d+)\.(\d+)\.(\w+)", name)
        if match:
            blocks.setdefault(int(match[1]), {}).setdefault(int(match[2]), set()).add(match[3])
    return blocks


def infer_from_tensors(state: Mapping[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """The flags the weights determine (see the module docstring)."""
    try:
        channels = int(state["time_embed.0.weight"].shape[1])
        outputs = _block_layers(state, "output_blocks")
        inputs = _block_layers(state, "input_blocks")
        count = len(outputs)
        if sorted(outputs) != list(range(count)) or count == 0:
            raise KeyError("output_blocks")
        # The last block of each level but the lowest-resolution one ends in an upsampler: a conv named
        # "conv" or a second ResBlock (resblock_updown). Levels run from the deepest to full resolution.
        ends = [
            i
            for i in range(count)
            if any(
                layer > 0 and ("in_layers" in parts or "conv" in parts) for layer, parts in outputs[i].items()
            )
        ]
        per_level = (ends[0] + 1) if ends else count
        if count % per_level:
            raise KeyError("output_blocks")
        levels = count // per_level
        widths = [
            int(state[f"output_blocks.{i * per_level}.0.out_layers.3.weight"].shape[0]) for i in range(levels)
        ]
        mult = tuple(w / channels if w % channels else w // channels for w in reversed(widths))
        first = state["output_blocks.0.0.emb_layers.1.weight"]
        scale_shift = int(first.shape[0]) == 2 * widths[0]
        updown = levels > 1 and not any(k.endswith(".op.weight") for k in state)
        # attention at a level shows as layer 1 with a qkv in the level's input blocks
        attends = [
            any(
                "qkv" in inputs.get(1 + level * per_level + j, {}).get(1, set()) for j in range(per_level - 1)
            )
            for level in range(levels)
        ]
    except (KeyError, IndexError) as exc:
        raise CheckpointError(f"{path}: ADM state dict has an unexpected block layout ({exc})") from exc
    return {
        "num_channels": channels,
        "learn_sigma": int(state["out.2.weight"].shape[0]) == 6,
        "class_cond": "label_emb.weight" in state,
        "use_scale_shift_norm": scale_shift,
        "resblock_updown": updown,
        "num_res_blocks": per_level - 1,
        "channel_mult": mult,
        "attention_ds": tuple(2**level for level, a in enumerate(attends) if a),
        "super_res": int(state["input_blocks.0.0.weight"].shape[1]) == 6,
    }


def reconcile(given: Mapping[str, Any], state: Mapping[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """The resolved flags, checked against (and completed from) what the tensors determine."""
    seen = infer_from_tensors(state, path)
    sizes = sorted(SUPER_RES_DEFAULTS.keys() & given.keys())
    if sizes and not seen["super_res"]:
        raise CheckpointError(
            f"{path}: flag {sizes[0]} applies to upsamplers (their SuperResModel, 6 input channels), and "
            "these weights take 3 input channels"
        )
    try:
        flags = resolve_super_res_flags(dict(given)) if seen["super_res"] else resolve_flags(dict(given))
    except FlagError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    for name in (
        "num_channels",
        "learn_sigma",
        "class_cond",
        "use_scale_shift_norm",
        "resblock_updown",
        "num_res_blocks",
    ):
        if flags[name] != seen[name]:
            if name in given:
                raise CheckpointError(
                    f"{path}: flag {name}={given[name]!r} contradicts the weights, which have {name}={seen[name]}"
                )
            flags[name] = seen[name]
    if flags["channel_mult"] != seen["channel_mult"]:
        levels = len(seen["channel_mult"])
        if seen["super_res"]:
            raise CheckpointError(
                f"{path}: flag large_size={flags['large_size']} contradicts the weights: their upsampler of that "
                f"size has channel_mult={_text(flags['channel_mult'])}, the weights have {_text(seen['channel_mult'])}"
            )
        if "channel_mult" in given:
            raise CheckpointError(
                f"{path}: flag channel_mult={given['channel_mult']!r} contradicts the weights, which have channel_mult={_text(seen['channel_mult'])}"
            )
        if "image_size" in given or len(flags["channel_mult"]) == levels:
            flags["channel_mult"] = seen["channel_mult"]
        else:
            sizes = [s for s, m in DEFAULT_CHANNEL_MULT.items() if m == seen["channel_mult"]]
            hint = f" (their scripts use {sizes[0]} for these widths)" if sizes else ""
            raise CheckpointError(
                f"{path}: flag image_size is needed: the weights have {levels} levels, the default image_size={flags['image_size']} has {len(flags['channel_mult'])}{hint}"
            )
    # Their create_model lists rates the net may not have (8 px on a 3-level net): only existing ones count.
    rates = {2**level for level in range(len(flags["channel_mult"]))}
    if set(flags["attention_ds"]) & rates != set(seen["attention_ds"]):
        pixels = ",".join(str(flags["image_size"] // d) for d in seen["attention_ds"])
        if "attention_resolutions" in given:
            raise CheckpointError(
                f"{path}: flag attention_resolutions={given['attention_resolutions']!r} contradicts the weights, which attend at {pixels} px for image_size={flags['image_size']}"
            )
        flags["attention_resolutions"] = pixels
        flags["attention_ds"] = attention_rates(flags)
    return flags


def _text(mult: tuple) -> str:
    return ",".join(str(m) for m in mult)


def read_adm(state: Any, path: Path, given: Mapping[str, Any], sample_size: int | None, device, dtype):
    """(AdmUNet, scheduler config) for an ADM state dict and the given flags."""
    state = as_state_dict(state, path)
    flags = reconcile(given, state, path)
    flags["sample_size"] = sample_size or flags["image_size"]
    try:
        expected = AdmUNet.expected_shapes(flags)
    except ValueError as exc:  # a head split that does not divide a level's channels
        raise CheckpointError(f"{path}: {exc}") from exc
    tensors = fitted_tensors(state, expected, path, "ADM", device, dtype)
    unet = AdmUNet.from_state_dict(flags, tensors)
    scheduler = {"_class_name": "GaussianDiffusion", **{k: flags[k] for k in DIFFUSION_FLAGS}}
    return unet, scheduler
