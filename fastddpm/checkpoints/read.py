"""Reading DDPM checkpoints into a UNet2D and a scheduler config.

``read_checkpoint(path)`` accepts:

a. a diffusers pipeline folder: model_index.json, unet/{config.json, weights}, scheduler/scheduler_config.json;
b. the flat layout of the google/ddpm-* repositories: config.json, diffusion_pytorch_model.safetensors (or
   .bin), scheduler_config.json in one folder, including the pre-0.14 attention names
   query / key / value / proj_attn (diffusers renames them the same way on load);
c. an ADM checkpoint file of OpenAI's improved-/guided-diffusion (input_blocks.*, middle_block.*,
   output_blocks.*) with their README's flags as keyword arguments, see adm.py;
c'. an original DDPM checkpoint file (.ckpt / .pth / .pt / .bin, or .safetensors) in the
   pesser/pytorch_diffusion / ermongroup/ddim layout, see original.py;
d. a Hub id such as google/ddpm-cifar10-32 (not an existing path), see hub.py.

Keyword overrides: ``sample_size`` changes the U-Net config; any DDPM/DDIM scheduler config key changes the
scheduler config. Every problem with the input is a CheckpointError naming the file and the problem.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastddpm.checkpoints.adm import is_adm_layout, read_adm
from fastddpm.checkpoints.adm_flags import FLAG_DEFAULTS, IGNORED_FLAGS, SUPER_RES_DEFAULTS
from fastddpm.checkpoints.files import (
    PICKLE_SUFFIXES,
    CheckpointError,
    check_finite,
    find_weights,
    load_folder_weights,
    load_pickle,
    load_safetensors,
    read_json,
)
from fastddpm.checkpoints.hub import looks_like_hub_id, resolve_hub_id
from fastddpm.checkpoints.original import (
    convert_state_dict,
    infer_config,
    is_original_layout,
    paper_scheduler_config,
    unwrap_original,
)
from fastddpm.models.adm_unet import AdmUNet
from fastddpm.models.unet import UNet2D
from fastddpm.models.unet_config import normalise_config

SCHEDULER_KEYS = frozenset(
    "num_train_timesteps beta_start beta_end beta_schedule trained_betas variance_type clip_sample "
    "prediction_type thresholding dynamic_thresholding_ratio clip_sample_range sample_max_value "
    "timestep_spacing steps_offset rescale_betas_zero_snr set_alpha_to_one".split()
)
_LEGACY_ATTENTION = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")
_LEGACY_TARGET = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


@dataclass
class LoadedCheckpoint:
    unet: UNet2D | AdmUNet
    scheduler_config: dict[str, Any]
    source: str  # the format and the file or folder it came from


def read_checkpoint(
    path: str | os.PathLike,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **overrides: Any,
) -> LoadedCheckpoint:
    """Read any supported checkpoint (see the module docstring); weights land on ``device`` in ``dtype``
    (default: CPU, float32)."""
    adm_names = FLAG_DEFAULTS.keys() | IGNORED_FLAGS | SUPER_RES_DEFAULTS.keys()
    adm_flags = {k: v for k, v in overrides.items() if k in adm_names}
    unknown = sorted(
        k for k in overrides if k != "sample_size" and k not in SCHEDULER_KEYS and k not in adm_flags
    )
    if unknown:
        raise ValueError(
            f"override {unknown[0]!r} is neither sample_size, a DDPM/DDIM scheduler config key nor an ADM flag"
        )
    text = os.fspath(path)
    location = Path(text).expanduser()
    if location.exists():
        source_prefix = ""
    elif looks_like_hub_id(text):
        location = resolve_hub_id(text)
        source_prefix = f"Hub {text} at "
    else:
        raise CheckpointError(f"{text}: no such file or folder")

    if not location.is_dir():
        obj = _load_file(location)
        if is_adm_layout(obj):
            flags = {k: v for k, v in overrides.items() if k != "sample_size"}
            unet, scheduler = read_adm(obj, location, flags, overrides.get("sample_size"), device, dtype)
            return LoadedCheckpoint(unet, scheduler, f"ADM checkpoint {source_prefix}{location}")
    if adm_flags:
        raise ValueError(
            f"flag {sorted(adm_flags)[0]!r} applies to ADM checkpoints only, and {text} is not one"
        )
    if location.is_dir():
        kind, config, state, scheduler, where = _read_diffusers_folder(location)
    else:
        kind, config, state, scheduler, where = (
            "original DDPM checkpoint",
            *_read_original_file(obj, location, overrides),
        )

    if "sample_size" in overrides:
        config = {**config, "sample_size": overrides["sample_size"]}
    scheduler = {**scheduler, **{k: v for k, v in overrides.items() if k != "sample_size"}}
    unet = _build_unet(config, state, where, device, dtype)
    return LoadedCheckpoint(unet=unet, scheduler_config=scheduler, source=f"{kind} {source_prefix}{location}")


def _read_diffusers_folder(folder: Path):
    """Layouts a and b. As diffusers' pipeline loader does, each component is read from its subfolder
    (unet/, scheduler/) when there is one and from the folder itself otherwise: the google/ddpm-* repositories
    keep model_index.json next to a flat config.json, weights and scheduler_config.json."""
    index_path = folder / "model_index.json"
    unet_folder = folder / "unet" if (folder / "unet").is_dir() else folder
    if not index_path.is_file() and not (unet_folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: missing model_index.json or config.json (not a diffusers folder)")
    if index_path.is_file():
        unet_entry = read_json(index_path, "model_index.json").get("unet")
        if not (isinstance(unet_entry, list) and len(unet_entry) == 2 and unet_entry[1] == "UNet2DModel"):
            raise CheckpointError(f"{index_path}: names unet {unet_entry!r}, not a diffusers UNet2DModel")
    config = _read_unet_config(unet_folder / "config.json")
    weights = find_weights(unet_folder)
    state = _fix_legacy_names(load_folder_weights(weights))
    scheduler_folder = folder / "scheduler" if (folder / "scheduler").is_dir() else folder
    scheduler = read_json(
        scheduler_folder / "scheduler_config.json", "scheduler config (scheduler_config.json)"
    )
    kind = (
        "diffusers pipeline folder"
        if unet_folder != folder
        else "diffusers flat folder (google/ddpm-* layout)"
    )
    return kind, config, state, scheduler, weights


def _read_unet_config(path: Path) -> dict[str, Any]:
    config = read_json(path, "U-Net config")
    name = config.get("_class_name", "UNet2DModel")
    if name != "UNet2DModel":
        raise CheckpointError(f"{path}: describes a {name}, not a UNet2DModel")
    try:
        normalise_config(config)
    except ValueError as exc:  # an unsupported or inconsistent field, named in the message
        raise CheckpointError(f"{path}: {exc}") from exc
    return config


def _load_file(path: Path) -> Any:
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    if path.suffix in PICKLE_SUFFIXES:
        return load_pickle(path)
    raise CheckpointError(
        f"{path}: unknown checkpoint file type {path.suffix!r} (expected .ckpt/.pth/.pt/.bin)"
    )


def _read_original_file(obj: Any, path: Path, overrides: dict[str, Any]):
    if isinstance(obj, dict) and obj and not is_original_layout(obj) and "conv_in.weight" in obj:
        raise CheckpointError(
            f"{path}: a diffusers-named state dict needs its config.json; pass the folder instead"
        )
    state = unwrap_original(obj, path)
    config = infer_config(state, path, overrides.get("sample_size"))
    converted = convert_state_dict(state, len(config["block_out_channels"]))
    return config, converted, paper_scheduler_config(config["sample_size"]), path


def _fix_legacy_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """query/key/value/proj_attn -> to_q/to_k/to_v/to_out.0, as diffusers' _fix_state_dict_keys_on_load.

    Some old exports keep those projections as (C, C, 1, 1) 1x1-conv weights: they become (C, C)."""
    fixed = {}
    for name, tensor in state.items():
        match = _LEGACY_ATTENTION.match(name)
        if match:
            name = f"{match[1]}.{_LEGACY_TARGET[match[2]]}.{match[3]}"
            if tensor.dim() == 4 and tensor.shape[2:] == (1, 1):
                tensor = tensor[:, :, 0, 0]
        fixed[name] = tensor
    return fixed


def _build_unet(config, state, where: Path, device, dtype) -> UNet2D:
    try:
        with torch.device("meta"):
            expected = {name: tuple(p.shape) for name, p in UNet2D(config).state_dict().items()}
    except ValueError as exc:  # an unsupported or inconsistent config field
        raise CheckpointError(f"{where}: {exc}") from exc
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(n for n in set(expected) & set(state) if tuple(state[n].shape) != expected[n])
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if names:
            shown = ", ".join(
                f"{n} {tuple(state[n].shape)} vs {expected[n]}" if label == "mis-shaped" else n
                for n in names[:3]
            )
            problems.append(f"{len(names)} {label} key{'s' if len(names) > 1 else ''} ({shown})")
    if problems:
        raise CheckpointError(f"{where}: weights do not fit the config: {'; '.join(problems)}")
    check_finite(state, where)
    dtype = dtype or torch.float32
    device = torch.device(device) if device is not None else torch.device("cpu")
    tensors = {name: t.to(device=device, dtype=dtype) for name, t in state.items()}
    return UNet2D.from_state_dict(config, tensors).eval()
