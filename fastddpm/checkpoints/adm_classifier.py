"""guided-diffusion's noisy-image classifiers (64x64_classifier.pt ... 512x512_classifier.pt): their
EncoderUNetModel state dicts with their CLASSIFIER_FLAGS.

The flags are their classifier_defaults() (image_size is the one flag shared with the diffusion model, as
on their command line; classifier_scale is the sampling scale). What the tensors settle is read from them:
classifier_width (time_embed.0), classifier_pool (the head's parameter names), the scale-shift norm
(2x-wide emb_layers), resblock up/down (no ``op`` downsampling convs), the number of classes, and, from
the block layout and each level's width, image_size (their create_classifier picks the channel
multipliers by image_size: 4 levels for 64 px up to 7 for 512) with classifier_depth and the attending
resolutions. A given flag that contradicts the weights is a one-line error naming it; a flag left out takes
their default where the weights agree with it, else the weights' value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fastddpm.checkpoints.adm_flags import DEFAULT_CHANNEL_MULT, FlagError, _convert
from fastddpm.checkpoints.files import (
    PICKLE_SUFFIXES,
    CheckpointError,
    as_state_dict,
    fitted_tensors,
    load_pickle,
    load_safetensors,
)
from fastddpm.models.adm_classifier import POOLS, AdmClassifier

# guided-diffusion's classifier_defaults(), and classifier_sample.py's classifier_scale
CLASSIFIER_DEFAULTS: dict[str, Any] = {
    "image_size": 64,
    "classifier_use_fp16": False,
    "classifier_width": 128,
    "classifier_depth": 2,
    "classifier_attention_resolutions": "32,16,8",
    "classifier_use_scale_shift_norm": True,
    "classifier_resblock_updown": True,
    "classifier_pool": "attention",
    "classifier_scale": 1.0,
}
# their create_classifier knows these sizes only (DEFAULT_CHANNEL_MULT's 32 is improved-diffusion's)
CLASSIFIER_SIZES = (64, 128, 256, 512)
MAX_DEPTH = 16


def is_classifier_flag(name: str) -> bool:
    return name.startswith("classifier_") and name in CLASSIFIER_DEFAULTS


def resolve_classifier_flags(given: Mapping[str, Any]) -> dict[str, Any]:
    """The classifier flags, typed and checked: the given ones over their defaults."""
    flags = {k: _convert(k, given.get(k, d), d) for k, d in CLASSIFIER_DEFAULTS.items()}
    for name in ("classifier_width", "classifier_depth"):
        if flags[name] < 1:
            raise FlagError(f"flag {name}={flags[name]} must be >= 1")
    if flags["classifier_pool"] not in POOLS:
        raise FlagError(f"flag classifier_pool={flags['classifier_pool']!r} is not one of {', '.join(POOLS)}")
    if flags["image_size"] not in CLASSIFIER_SIZES:
        raise FlagError(
            f"flag image_size={flags['image_size']} has no classifier (their create_classifier knows "
            f"{', '.join(map(str, CLASSIFIER_SIZES))})"
        )
    if flags["classifier_scale"] != flags["classifier_scale"]:  # NaN
        raise FlagError("flag classifier_scale=nan is not a number")
    flags["attention_ds"] = _rates(flags["classifier_attention_resolutions"], flags["image_size"])
    return flags


def _rates(text: str, image_size: int) -> tuple[int, ...]:
    try:
        resolutions = [int(r) for r in str(text).split(",") if r.strip()]
    except ValueError:
        raise FlagError(
            f"flag classifier_attention_resolutions={text!r} is not a comma-separated list of integers"
        ) from None
    if any(r < 1 for r in resolutions):
        raise FlagError(f"flag classifier_attention_resolutions={text!r} must list positive integers")
    return tuple(image_size // r for r in resolutions)


def _pool(state: Mapping[str, torch.Tensor]) -> str:
    if "out.2.positional_embedding" in state:
        return "attention"
    if "out.3.weight" in state:
        return "adaptive" if state["out.3.weight"].dim() == 4 else "spatial_v2"
    return "spatial"


def _layouts(state: Mapping[str, torch.Tensor], seen: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every (image_size, classifier_depth, attending rates) whose network has exactly these tensors' names
    and shapes (with the head, width and block kinds the tensors settle)."""
    blocks: dict[int, set[str]] = {}
    for name in state:
        match = re.match(r"input_blocks\.(\d+)\.(\d+)\.", name)
        if match:
            blocks.setdefault(int(match[1]), set()).add(f"{match[2]}.{name[match.end() :]}")
    shapes = {name: tuple(t.shape) for name, t in state.items()}
    found = []
    for size in CLASSIFIER_SIZES:
        levels = len(DEFAULT_CHANNEL_MULT[size])
        if len(blocks) % levels or not 2 <= len(blocks) // levels <= MAX_DEPTH + 1:
            continue
        depth = len(blocks) // levels - 1
        firsts = [1 + level * (depth + 1) for level in range(levels)]
        rates = tuple(
            2**level
            for level, first in enumerate(firsts)
            if any("1.qkv.weight" in blocks.get(first + j, set()) for j in range(depth))
        )
        layout = {"image_size": size, "classifier_depth": depth, "attention_ds": rates}
        flags = {**seen, **layout, "channel_mult": DEFAULT_CHANNEL_MULT[size]}
        try:
            if AdmClassifier.expected_shapes(flags) == shapes:
                found.append(layout)
        except ValueError:  # channels that do not split into heads of 64 at this size
            continue
    return found


def reconcile_classifier(
    given: Mapping[str, Any], state: Mapping[str, torch.Tensor], path: Path
) -> dict[str, Any]:
    """The resolved classifier flags, checked against (and completed from) what the tensors settle."""
    try:
        flags = resolve_classifier_flags(given)
    except FlagError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    try:
        width = int(state["time_embed.0.weight"].shape[1])
        first = state["input_blocks.1.0.emb_layers.1.weight"]
        seen = {
            "classifier_width": width,
            "classifier_pool": _pool(state),
            "classifier_use_scale_shift_norm": int(first.shape[0])
            == 2 * int(state["input_blocks.1.0.out_layers.3.weight"].shape[0]),
            "classifier_resblock_updown": not any(k.endswith(".op.weight") for k in state),
        }
        head = {"attention": "out.2.c_proj.bias", "adaptive": "out.3.bias", "spatial_v2": "out.3.bias"}
        seen["num_classes"] = int(state[head.get(seen["classifier_pool"], "out.2.bias")].shape[0])
    except (KeyError, IndexError) as exc:
        raise CheckpointError(
            f"{path}: not a guided-diffusion classifier state dict (no {exc} tensor)"
        ) from None
    for name, value in seen.items():
        if name in flags and flags[name] != value:
            if name in given:
                raise CheckpointError(
                    f"{path}: flag {name}={flags[name]!r} contradicts the classifier's weights, which have {name}={value}"
                )
            flags[name] = value
    layouts = _layouts(state, seen)
    if not layouts:
        raise CheckpointError(
            f"{path}: the classifier's blocks fit no classifier of theirs (image_size 64 .. 512, heads of 64)"
        )
    for name in ("image_size", "classifier_depth"):
        if name in given and all(layout[name] != flags[name] for layout in layouts):
            raise CheckpointError(
                f"{path}: flag {name}={flags[name]!r} contradicts the classifier's weights, which have {name}={layouts[0][name]}"
            )
        fitting = [layout for layout in layouts if layout[name] == flags[name]]
        layouts = fitting or layouts  # a default the weights contradict gives way
    layout = layouts[0]
    if seen["classifier_pool"] == "attention":  # the positional embedding fixes the pixels it pools
        positions = int(state["out.2.positional_embedding"].shape[1]) - 1
        side = round(positions**0.5) * 2 ** (len(DEFAULT_CHANNEL_MULT[layout["image_size"]]) - 1)
        if side != layout["image_size"]:
            raise CheckpointError(
                f"{path}: the attention pool's positional embedding is for {side} px, its blocks for {layout['image_size']} px"
            )
    resized = layout["image_size"] != flags["image_size"]
    flags.update(image_size=layout["image_size"], classifier_depth=layout["classifier_depth"])
    if resized:
        flags["attention_ds"] = _rates(flags["classifier_attention_resolutions"], flags["image_size"])
    levels = len(DEFAULT_CHANNEL_MULT[flags["image_size"]])
    rates = {2**level for level in range(levels)}
    if set(flags["attention_ds"]) & rates != set(layout["attention_ds"]):
        pixels = ",".join(str(flags["image_size"] // d) for d in layout["attention_ds"])
        if "classifier_attention_resolutions" in given:
            raise CheckpointError(
                f"{path}: flag classifier_attention_resolutions={given['classifier_attention_resolutions']!r} "
                f"contradicts the classifier's weights, which attend at {pixels} px for image_size={flags['image_size']}"
            )
        flags["classifier_attention_resolutions"] = pixels
        flags["attention_ds"] = layout["attention_ds"]
    flags["channel_mult"] = DEFAULT_CHANNEL_MULT[flags["image_size"]]
    flags["num_classes"] = seen["num_classes"]
    return flags


def read_classifier(path, given: Mapping[str, Any], device=None, dtype=None) -> AdmClassifier:
    """An AdmClassifier from their classifier file (a pickled state dict, or .safetensors) and flags."""
    location = Path(path).expanduser()
    if not location.is_file():
        raise CheckpointError(f"classifier {path}: no such file")
    if location.suffix == ".safetensors":
        state = load_safetensors(location)
    elif location.suffix in PICKLE_SUFFIXES:
        state = load_pickle(location)
    else:
        raise CheckpointError(f"{location}: unknown classifier file type {location.suffix!r} (expected .pt)")
    state = as_state_dict(state, location)
    flags = reconcile_classifier(given, state, location)
    try:
        expected = AdmClassifier.expected_shapes(flags)
    except ValueError as exc:  # a width whose attention channels do not split into heads of 64
        raise CheckpointError(f"{location}: {exc}") from exc
    tensors = fitted_tensors(state, expected, location, "classifier", device, dtype)
    return AdmClassifier.from_state_dict(flags, tensors)


def check_pairing(classifier: AdmClassifier, model_config: Mapping[str, Any], path) -> None:
    """A classifier guides a diffusion model of its image size whose labels (if it takes any) are its own;
    a one-line ValueError naming the mismatch otherwise."""
    flags = classifier.config
    size, model_size = flags["image_size"], model_config.get("image_size")
    if model_size is None:
        raise ValueError(
            f"classifier {path}: guides OpenAI ADM diffusion checkpoints only (their image_size and timesteps)"
        )
    if size != model_size:
        raise ValueError(
            f"classifier {path} is for {size}x{size} images (image_size={size}) and the diffusion model for "
            f"{model_size}x{model_size}: use the classifier of the model's size"
        )
    sample = model_config["sample_size"]
    sides = {sample} if isinstance(sample, int) else set(sample)
    if flags["classifier_pool"] == "attention" and sides != {size}:
        raise ValueError(
            f"sample_size={sample!r}: the classifier's attention pool takes {size}x{size} images only"
        )
    if model_config.get("class_cond"):
        model_classes = 1000  # their class-conditional nets' label_emb (fastddpm.models.adm_unet.NUM_CLASSES)
        if classifier.num_classes != model_classes:
            raise ValueError(
                f"classifier {path} has {classifier.num_classes} classes and the class-conditional diffusion "
                f"model {model_classes}: guidance needs the labels the model takes"
            )
