"""``fastddpm info`` (what a checkpoint holds, and its cost per step) and ``fastddpm convert``."""

from __future__ import annotations

import json
import os
import shutil

from fastddpm.cli.checkpoint_arg import checkpoint_path, load_pipeline
from fastddpm.cli.errors import CliError

FLOP_COUNTING = (
    "torch.utils.flop_counter.FlopCounterMode over one U-Net forward at batch 1 on the CPU with the torch "
    "backend: convolutions, matrix products and attention, 2 FLOP per multiply-add; normalisation and "
    "elementwise ops are not counted"
)


def gflop_per_step(pipe) -> float:
    """GFLOP of one U-Net forward at batch 1 (one sampling step), counted as FLOP_COUNTING says."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    # The torch backend calls aten ops the counter knows (SDPA, conv, mm); the extension's custom ops
    # would be invisible to it.
    previous = os.environ.get("FASTDDPM_BACKEND")
    os.environ["FASTDDPM_BACKEND"] = "torch"
    try:
        x = torch.zeros(1, *pipe.sample_shape(), device=pipe.device, dtype=pipe.dtype)
        t = torch.tensor(len(pipe.process) // 2, device=pipe.device)
        conditional = pipe.num_classes() is not None  # class 0: the cost does not depend on the class
        labels = {"class_labels": torch.zeros(1, dtype=torch.long, device=pipe.device)} if conditional else {}
        # Grad mode keeps fastddpm.models.conv on nn.Conv2d (aten.convolution, which the counter knows) instead of
        # its CPU inference paths (oneDNN's opaque op, or Winograd, which does fewer multiply-adds): the
        # count is the network's, whatever algorithm computes it.
        with torch.enable_grad(), FlopCounterMode(display=False) as counter:
            pipe.unet(x, t, **labels)
        return counter.get_total_flops() / 1e9
    finally:
        if previous is None:
            del os.environ["FASTDDPM_BACKEND"]
        else:
            os.environ["FASTDDPM_BACKEND"] = previous


def describe(path: str, pipe) -> dict:
    config = dict(pipe.config)
    parameters = sum(p.numel() for p in pipe.unet.parameters())
    scheduler = {key: _plain(value) for key, value in dict(pipe.process.config).items()}
    return {
        "checkpoint": path,
        "sample_shape": list(pipe.sample_shape()),
        "parameters": parameters,
        "megabytes_float32": round(parameters * 4 / 1e6, 2),
        "unet": {key: _plain(value) for key, value in config.items()},
        "scheduler": scheduler,
        "gflop_per_step": gflop_per_step(pipe),
        "flop_counting": FLOP_COUNTING,
    }


def _plain(value):
    """JSON-ready: tuples to lists, tensors and arrays to lists."""
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def as_text(info: dict) -> str:
    unet, scheduler = info["unet"], info["scheduler"]
    if "num_channels" in unet:  # an ADM checkpoint: their flags say it all
        return adm_text(info)
    channels, height, width = info["sample_shape"]
    levels = ", ".join(
        f"{out} {'+attn' if 'Attn' in block else ''}".strip()
        for out, block in zip(unet["block_out_channels"], unet["down_block_types"], strict=False)
    )
    lines = [
        f"checkpoint   {info['checkpoint']}",
        f"sample       {channels} x {height} x {width}",
        f"unet         levels [{levels}], {unet['layers_per_block']} resnet(s) per level, "
        f"{unet.get('norm_num_groups')} norm groups",
        f"parameters   {info['parameters']:,} ({info['megabytes_float32']} MB in float32)",
        f"scheduler    {scheduler.get('num_train_timesteps')} train steps, {scheduler.get('beta_schedule')} betas "
        f"{scheduler.get('beta_start')}..{scheduler.get('beta_end')}, {scheduler.get('prediction_type')} "
        f"prediction, variance {scheduler.get('variance_type')}, clip_sample {scheduler.get('clip_sample')}",
        f"GFLOP/step   {info['gflop_per_step']:.4g} at batch 1 ({info['flop_counting']})",
    ]
    return "\n".join(lines)


def adm_text(info: dict) -> str:
    unet, scheduler = info["unet"], info["scheduler"]
    channels, height, width = info["sample_shape"]
    heads = (
        f"{unet['num_head_channels']} channels per head"
        if unet["num_head_channels"] != -1
        else f"{unet['num_heads']} head(s)"
    )
    lines = [
        f"checkpoint   {info['checkpoint']} (ADM, improved-/guided-diffusion)",
        f"sample       {channels} x {height} x {width}",
        f"unet         {unet['num_channels']} channels x {unet['channel_mult']}, {unet['num_res_blocks']} resblocks "
        f"per level, attention at {unet['attention_resolutions']} px ({heads}), scale-shift norm "
        f"{unet['use_scale_shift_norm']}, resblock up/down {unet['resblock_updown']}, class_cond {unet['class_cond']}",
        f"parameters   {info['parameters']:,} ({info['megabytes_float32']} MB in float32)",
        f"diffusion    {scheduler['diffusion_steps']} steps, {scheduler['noise_schedule']} betas, learn_sigma "
        f"{scheduler['learn_sigma']}, predict_xstart {scheduler['predict_xstart']}, rescale_timesteps "
        f"{scheduler['rescale_timesteps']}, respacing {scheduler['timestep_respacing'] or 'none'}",
        f"GFLOP/step   {info['gflop_per_step']:.4g} at batch 1 ({info['flop_counting']})",
    ]
    return "\n".join(lines)


def run_info(args) -> int:
    path = checkpoint_path(args.checkpoint)
    pipe = load_pipeline(path, "cpu", "float32", args.flags)
    info = describe(path, pipe)
    print(json.dumps(info) if args.json else as_text(info))
    return 0


def run_convert(args) -> int:
    source = checkpoint_path(args.source, "source")
    destination = os.path.abspath(args.destination)
    if os.path.exists(destination) and (not os.path.isdir(destination) or os.listdir(destination)):
        raise CliError(f"destination {destination} already exists and is not an empty folder")
    parent = os.path.dirname(destination)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise CliError(f"destination folder {parent} does not exist or is not writable")
    pipe = load_pipeline(source, "cpu", "float32", args.flags)
    from safetensors import SafetensorError

    from fastddpm.checkpoints.adm_to_diffusers import NotExpressible

    # Written next to the destination, then renamed: an interrupted convert leaves no half folder.
    staging = os.path.join(parent, f".{os.path.basename(destination)}.{os.getpid()}.tmp")
    try:
        try:
            pipe.save_pretrained(staging)
        except NotExpressible as error:
            raise CliError(f"{source}: diffusers' UNet2DModel cannot express this ADM net: {error}") from None
        if os.path.isdir(destination):
            os.rmdir(destination)
        os.replace(staging, destination)
    except (OSError, SafetensorError) as error:  # a full disk: safetensors raises its own error type
        reason = getattr(error, "strerror", None) or " ".join(str(error).split()) or type(error).__name__
        raise CliError(f"cannot write {destination}: {reason}; nothing was written there") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    parameters = sum(p.numel() for p in pipe.unet.parameters())
    channels, height, width = pipe.sample_shape()
    print(
        f"wrote {destination}: a diffusers pipeline folder ({parameters:,} parameters, "
        f"{channels} x {height} x {width} samples) from {pipe.source}"
    )
    return 0
