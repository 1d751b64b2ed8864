"""Writing a diffusers pipeline folder (what `fastddpm convert` produces, and what diffusers loads)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from fastddpm.models.unet import UNet2D

DIFFUSERS_VERSION = "0.42.1"  # the version whose numbers fastddpm reproduces, recorded in the written configs


def save_diffusers(
    unet: UNet2D,
    scheduler_config: dict[str, Any],
    folder: str | os.PathLike,
    *,
    scheduler_class: str = "DDPMScheduler",
) -> Path:
    """Write a diffusers pipeline folder that DDPMPipeline.from_pretrained (and read_checkpoint) can load:
    model_index.json, unet/{config.json, diffusion_pytorch_model.safetensors}, scheduler/scheduler_config.json.

    An ADM net with its process's config (``_class_name`` GaussianDiffusion) is written as the UNet2DModel
    and DDPMScheduler it equals, where UNet2DModel can express it (else adm_to_diffusers.NotExpressible, a
    ValueError saying why)."""
    from safetensors.torch import save_file

    if scheduler_config.get("_class_name") == "GaussianDiffusion":
        from fastddpm.checkpoints.adm_to_diffusers import as_diffusers

        unet, scheduler_config = as_diffusers(unet, scheduler_config)

    folder = Path(folder)
    (folder / "unet").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    index = {
        "_class_name": "DDPMPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "scheduler": ["diffusers", scheduler_class],
        "unet": ["diffusers", "UNet2DModel"],
    }
    unet_config = {
        "_class_name": "UNet2DModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        **_jsonable(unet.config),
    }
    scheduler = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    scheduler = {
        "_class_name": scheduler_class,
        "_diffusers_version": DIFFUSERS_VERSION,
        **_jsonable(scheduler),
    }
    state = {name: t.detach().to("cpu").contiguous() for name, t in unet.state_dict().items()}
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    save_file(state, str(weights), metadata={"format": "pt"})
    for path, data in (
        (folder / "model_index.json", index),
        (folder / "unet" / "config.json", unet_config),
        (folder / "scheduler" / "scheduler_config.json", scheduler),
    ):
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    # safetensors writes through a private temporary file (mode 0600); give the weights the mode the umask
    # gave the configs (0644 under the usual umask 022), so every file of the folder is readable alike.
    os.chmod(weights, stat.S_IMODE(os.stat(folder / "model_index.json").st_mode))
    return folder


def _jsonable(config: dict[str, Any]) -> dict[str, Any]:
    def convert(value):
        if isinstance(value, (tuple, list)):
            return [convert(v) for v in value]
        if hasattr(value, "tolist"):  # tensors, numpy arrays and scalars (trained_betas)
            return value.tolist()
        return value

    return {k: convert(v) for k, v in config.items()}
