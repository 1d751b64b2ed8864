"""Train the embedded default model: a small DDPM on scikit-learn's 8x8 handwritten digits.

    python examples/train_digits.py                    # writes fastddpm/default_model
    python examples/train_digits.py --iterations 300 --out /tmp/digits_try    # a quick check that loss falls

The data is sklearn.datasets.load_digits (1797 images, pixel values 0..16, mapped to [-1, 1]); the network is
fastddpm's UNet2D (diffusers UNet2DModel's config keys and parameter names); x_t comes from fastddpm's
q-sampling (ops.q_sample) with the linear beta schedule of DDPM, and the loss is the epsilon-prediction MSE.
The weights saved are an exponential moving average of the trained ones, in the diffusers pipeline-folder
layout, so diffusers' DDPMPipeline / DDIMPipeline read the folder too. Data order, timesteps and noise come
from one seeded generator, and training runs single-threaded, so the same command with the same torch
version repeats the same run.

Timing: 4000 steps of batch 64 take 0.32 s each on one core of this 2-core machine when the other core is
busy (about 21 minutes); the committed model took 40 minutes (2428 s) because other jobs kept the load
average of the two cores between 4 and 9 (steps slowed to 1.1 s at worst).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time

import numpy as np
import torch

# Run from a checkout without installing: the repository root holds the fastddpm package.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# The committed settings of the default model. Small on purpose: the package ships it (1.1 M parameters,
# 4.5 MB in float32) and it trains on one CPU core in about 20 minutes.
UNET_CONFIG = {
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "dropout": 0.0,
    "act_fn": "silu",
    "attention_head_dim": None,
    "norm_num_groups": 8,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "num_train_timesteps": None,
}
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "variance_type": "fixed_small",
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "prediction_type": "epsilon",
    "thresholding": False,
    "timestep_spacing": "leading",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
}
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fastddpm", "default_model")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="diffusers pipeline folder to write")
    parser.add_argument("--iterations", type=int, default=4000, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    parser.add_argument("--warmup", type=int, default=200, help="linear warm-up steps, then cosine decay")
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0)
    # One thread: on this 2-core machine shared with other jobs, a [32, 64, 64] batch-128 step took 0.75 s
    # with one thread and 3.5 s with two (OpenMP threads wait on each other when a core is taken away).
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--save-every", type=int, default=0, help="also save the EMA weights every N steps")
    parser.add_argument(
        "--unet",
        choices=("fastddpm", "diffusers"),
        default="fastddpm",
        help="which UNet2D implementation to train (same config and parameter names; the default model is "
        "trained with fastddpm's)",
    )
    return parser.parse_args(argv)


def load_digits_tensor() -> torch.Tensor:
    """The 1797 sklearn digits as float32 (N, 1, 8, 8) in [-1, 1]."""
    from sklearn.datasets import load_digits

    pixels = load_digits().images.astype(np.float32)  # 0..16
    return torch.from_numpy(pixels / 8.0 - 1.0).unsqueeze(1)


def build_unet(kind: str) -> torch.nn.Module:
    if kind == "fastddpm":
        from fastddpm.models.unet import UNet2D

        return UNet2D(dict(UNET_CONFIG))
    from diffusers import UNet2DModel

    return UNet2DModel(**UNET_CONFIG)


def unet_epsilon(unet: torch.nn.Module, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    out = unet(x_t, timesteps)
    # diffusers' UNet2DModel returns an output object; fastddpm's UNet2D returns the tensor.
    return out.sample if hasattr(out, "sample") else out


def linear_alphas_cumprod(config: dict) -> torch.Tensor:
    # The same float32 arithmetic as diffusers' DDPMScheduler for beta_schedule="linear".
    betas = torch.linspace(
        config["beta_start"], config["beta_end"], config["num_train_timesteps"], dtype=torch.float32
    )
    return torch.cumprod(1.0 - betas, dim=0)


def learning_rate(step: int, args: argparse.Namespace) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.iterations - args.warmup)
    return args.lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for ema_param, param in zip(ema.parameters(), model.parameters(), strict=True):
        ema_param.lerp_(param, 1.0 - decay)


def save_model(unet: torch.nn.Module, folder: str) -> None:
    """The diffusers pipeline folder: model_index.json, unet/, scheduler/."""
    try:
        from fastddpm.checkpoints import save_diffusers
    except ImportError:
        save_diffusers = None
    if save_diffusers is not None:
        save_diffusers(unet, dict(SCHEDULER_CONFIG), folder, scheduler_class="DDPMScheduler")
        return
    write_diffusers_folder(unet.state_dict(), folder)


def write_diffusers_folder(state_dict: dict, folder: str) -> None:
    """The same layout diffusers' DDPMPipeline.save_pretrained writes, without needing diffusers."""
    from safetensors.torch import save_file

    os.makedirs(os.path.join(folder, "unet"), exist_ok=True)
    os.makedirs(os.path.join(folder, "scheduler"), exist_ok=True)
    tensors = {name: tensor.detach().float().contiguous() for name, tensor in state_dict.items()}
    save_file(tensors, os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"))
    documents = {
        "model_index.json": {
            "_class_name": "DDPMPipeline",
            "_diffusers_version": "0.42.1",
            "scheduler": ["diffusers", "DDPMScheduler"],
            "unet": ["diffusers", "UNet2DModel"],
        },
        "unet/config.json": {"_class_name": "UNet2DModel", "_diffusers_version": "0.42.1", **UNET_CONFIG},
        "scheduler/scheduler_config.json": {
            "_class_name": "DDPMScheduler",
            "_diffusers_version": "0.42.1",
            **SCHEDULER_CONFIG,
        },
    }
    for name, document in documents.items():
        with open(os.path.join(folder, name), "w") as handle:
            json.dump(document, handle, indent=2, sort_keys=True)
            handle.write("\n")


def train(args: argparse.Namespace) -> torch.nn.Module:
    from fastddpm import ops

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = load_digits_tensor()
    alphas_cumprod = linear_alphas_cumprod(SCHEDULER_CONFIG)
    num_timesteps = SCHEDULER_CONFIG["num_train_timesteps"]

    unet = build_unet(args.unet).train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    parameters = sum(p.numel() for p in unet.parameters())
    print(f"unet={args.unet} parameters={parameters} images={len(data)}", flush=True)

    generator = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()
    running_loss, logged_steps = 0.0, 0
    for step in range(args.iterations):
        index = torch.randint(0, len(data), (args.batch_size,), generator=generator)
        x0 = data[index]
        timesteps = torch.randint(0, num_timesteps, (args.batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        x_t, eps = ops.q_sample(x0, timesteps, alphas_cumprod, noise)
        loss = torch.nn.functional.mse_loss(unet_epsilon(unet, x_t, timesteps), eps)

        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        update_ema(ema, unet, args.ema_decay if step >= args.warmup else 0.0)

        running_loss += loss.item()
        logged_steps += 1
        if (step + 1) % args.log_every == 0 or step + 1 == args.iterations:
            elapsed = time.perf_counter() - started
            mean_loss = running_loss / logged_steps
            print(
                f"step {step + 1}/{args.iterations} loss {mean_loss:.4f} lr {learning_rate(step, args):.2e} "
                f"elapsed {elapsed:.0f}s eta {elapsed / (step + 1) * (args.iterations - step - 1):.0f}s",
                flush=True,
            )
            running_loss, logged_steps = 0.0, 0
        if args.save_every and (step + 1) % args.save_every == 0 and step + 1 < args.iterations:
            save_model(ema, os.path.abspath(args.out))
    return ema


def main(argv=None) -> int:
    args = parse_args(argv)
    ema = train(args)
    save_model(ema, os.path.abspath(args.out))
    print(f"saved {os.path.abspath(args.out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
