"""Same seed, same images: record the float images of every sampler on every checkpoint kind, or compare a
new revision's with a recording, bit for bit (torch.equal).

A refactor of the sampling path must not change a single image. Record on the revision before the change,
compare on the one after, on the same machine (float results differ between CPUs; a recording is only
meaningful where it was made):

    python bench/same_images.py --record /tmp/before.pt      # on the old revision
    python bench/same_images.py --compare /tmp/before.pt     # on the new one: exit 1 if any image differs

Only the public API is used (fastddpm.load, Pipeline(...), pipe(...)), so the same script runs on both.
The checkpoints are small random ones written into a temporary folder: the built-in digits model (a diffusers
folder), the google/ddpm-* flat layout with legacy attention names, an original DDPM checkpoint, a
learned-variance diffusers net, and two ADM checkpoints (class-conditional with learned sigmas and
rescale_timesteps; unconditional with fixed variances).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fastddpm  # noqa: E402

SAMPLERS = (
    "ddpm",
    "ddim",
    "pndm",
    "dpm++2m",
    "dpm++3m",
    "dpm++2m-sde",
    "unipc",
    "euler",
    "euler-a",
    "heun",
    "deis",
)
STEPS = 4
BATCH = 3


def calls(sampler: str) -> list[tuple[str, dict]]:
    """(label, call arguments) for one sampler: torch noise with a generator, and Philox at an offset."""
    return [
        ("torch", {"generator": torch.Generator().manual_seed(5), "noise": "torch"}),
        ("philox", {"seed": 11, "noise": "philox", "sample_offset": 7}),
    ]


def sample(pipe, **kwargs) -> torch.Tensor:
    out = pipe(batch_size=BATCH, output_type="pt", progress=False, **kwargs)
    return out.images.detach().cpu().clone()


def cases(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    from fastddpm.checkpoints.adm_flags import parse_flag_string
    from tests import model_factory
    from tests.adm_checkpoint import reference_model, save_checkpoint
    from tests.original_ddpm_model import random_original_model

    # the built-in model (a diffusers folder): every sampler, both noise modes, and the call options
    digits = fastddpm.load()
    for sampler in SAMPLERS:
        for label, noise in calls(sampler):
            yield (
                f"digits/{sampler}/{label}",
                sample(digits, sampler=sampler, num_inference_steps=STEPS, **noise),
            )
    for sampler in ("dpm++2m", "euler", "heun", "unipc"):
        yield (
            f"digits/{sampler}/karras",
            sample(digits, sampler=sampler, num_inference_steps=STEPS, karras=True, seed=2),
        )
    yield "digits/ddim/eta", sample(digits, sampler="ddim", num_inference_steps=STEPS, eta=0.7, seed=3)
    yield (
        "digits/ddim/eta-philox",
        sample(digits, sampler="ddim", num_inference_steps=STEPS, eta=0.7, seed=3, noise="philox"),
    )
    yield (
        "digits/ddim/clipped",
        sample(
            digits, sampler="ddim", num_inference_steps=STEPS, eta=0.3, seed=3, use_clipped_model_output=True
        ),
    )
    yield (
        "digits/ddpm/nchw",
        sample(digits, sampler="ddpm", num_inference_steps=STEPS, seed=4, channels_last=False),
    )
    yield (
        "digits/dpm++2m/nchw",
        sample(digits, sampler="dpm++2m", num_inference_steps=STEPS, seed=4, channels_last=False),
    )
    latents = torch.randn((BATCH, *digits.sample_shape()), generator=torch.Generator().manual_seed(9))
    yield (
        "digits/ddim/latents",
        sample(digits, sampler="ddim", num_inference_steps=STEPS, eta=1.0, seed=6, latents=latents),
    )
    yield "digits/default-steps/ddim", sample(digits, sampler="ddim", seed=8)
    unipc = fastddpm.UniPCMultistepScheduler.from_config(digits.scheduler.config, solver_order=3)
    yield "digits/instance/unipc", sample(digits, sampler=unipc, num_inference_steps=STEPS, seed=1)
    thresholded = fastddpm.DPMSolverMultistepScheduler.from_config(digits.scheduler.config, thresholding=True)
    for label, noise in calls("eager"):
        yield (
            f"digits/eager-thresholding/{label}",
            sample(digits, sampler=thresholded, num_inference_steps=STEPS, **noise),
        )
    sde3 = fastddpm.DPMSolverMultistepScheduler.from_config(
        digits.scheduler.config, algorithm_type="sde-dpmsolver++", solver_order=3
    )
    yield (
        "digits/eager-sde3/philox",
        sample(digits, sampler=sde3, num_inference_steps=STEPS, seed=2, noise="philox"),
    )
    ddim_instance = fastddpm.DDIMScheduler.from_config(digits.scheduler.config, timestep_spacing="trailing")
    yield (
        "digits/instance/ddim-trailing",
        sample(digits, sampler=ddim_instance, num_inference_steps=STEPS, seed=1),
    )
    thresholded_ddpm = fastddpm.DDPMScheduler.from_config(digits.scheduler.config, thresholding=True)
    yield (
        "digits/instance/ddpm-thresholding",
        sample(digits, sampler=thresholded_ddpm, num_inference_steps=STEPS, seed=1),
    )

    # the google/ddpm-* flat layout (legacy attention names) and an original DDPM checkpoint
    config = model_factory.small_cifar10_config(block_out_channels=[16, 32, 32, 32], sample_size=8)
    unet = model_factory.random_fastddpm_unet(config, seed=1)
    flat = model_factory.save_flat_folder(unet, folder / "flat", legacy_attention_names=True)
    original = random_original_model(
        seed=2,
        ch=32,
        out_ch=3,
        ch_mult=(1, 2, 2),
        num_res_blocks=1,
        attn_resolutions=(16,),
        in_channels=3,
        resolution=16,
    )
    original_path = folder / "original.ckpt"
    torch.save(original.state_dict(), original_path)
    for kind, path in (("flat", flat), ("original", original_path)):
        pipe = fastddpm.load(path, **({"sample_size": 16} if kind == "original" else {}))
        for sampler in ("ddpm", "ddim", "dpm++2m", "euler-a"):
            for label, noise in calls(sampler):
                yield (
                    f"{kind}/{sampler}/{label}",
                    sample(pipe, sampler=sampler, num_inference_steps=STEPS, **noise),
                )

    # a learned-variance diffusers net: DDPM reads the variance channels, the fast samplers the mean ones
    learned = model_factory.random_fastddpm_unet(
        model_factory.small_cifar10_config(
            block_out_channels=[16, 32, 32, 32], sample_size=8, out_channels=6
        ),
        seed=3,
    )
    pipe = fastddpm.Pipeline(learned, model_factory.ddpm_scheduler_config(variance_type="learned_range"))
    for sampler in ("ddpm", "ddim", "dpm++2m", "dpm++2m-sde"):
        for label, noise in calls(sampler):
            yield (
                f"learned/{sampler}/{label}",
                sample(pipe, sampler=sampler, num_inference_steps=STEPS, **noise),
            )

    # ADM: their loops (respacing, learned sigmas, class labels, rescaled timesteps) and the fast samplers
    for family, extra in (("improved_imagenet64", ""), ("improved_cifar10", "--learn_sigma False")):
        model, given, _, size = reference_model(family, seed=4, extra_flags=extra)
        path = save_checkpoint(model, folder / f"{family}.pt")
        text = " ".join(f"--{k} {v}" for k, v in given.items())
        pipe = fastddpm.load(path, sample_size=size, **parse_flag_string(text))
        for sampler in ("ddpm", "ddim"):
            for label, noise in calls(sampler):
                yield (
                    f"adm-{family}/{sampler}/{label}",
                    sample(pipe, sampler=sampler, timestep_respacing="5", **noise),
                )
        yield (
            f"adm-{family}/ddim/respacing-ddim",
            sample(pipe, sampler="ddim", timestep_respacing="ddim5", eta=0.5, seed=1),
        )
        for sampler in ("dpm++2m", "euler-a", "heun", "pndm"):
            for label, noise in calls(sampler):
                yield (
                    f"adm-{family}/{sampler}/{label}",
                    sample(pipe, sampler=sampler, num_inference_steps=STEPS, **noise),
                )
        if "class_cond" in given:
            labels = [1, 0, 1] if BATCH == 3 else None
            yield (
                f"adm-{family}/ddim/labels",
                sample(pipe, sampler="ddim", timestep_respacing="4", seed=2, class_labels=labels),
            )
            yield (
                f"adm-{family}/unipc/labels",
                sample(pipe, sampler="unipc", num_inference_steps=STEPS, seed=2, class_labels=labels),
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--record", help="write every case's images to this .pt file")
    action.add_argument("--compare", help="compare every case's images with this recording")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="fastddpm-same-images-") as scratch:
        images = dict(cases(Path(scratch)))
    if args.record:
        torch.save(images, args.record)
        print(f"recorded {len(images)} cases in {args.record}")
        return 0
    recorded = torch.load(args.compare, weights_only=True)
    differing = [
        name for name in recorded if name in images and not torch.equal(images[name], recorded[name])
    ]
    missing = sorted(set(recorded) - set(images))
    for name in differing:
        diff = (images[name] - recorded[name]).abs().max().item()
        print(f"DIFFERS {name}: max |diff| {diff:.3g}")
    for name in missing:
        print(f"MISSING {name}")
    print(f"{len(recorded) - len(differing) - len(missing)} of {len(recorded)} cases bit-identical")
    return 1 if differing or missing else 0


if __name__ == "__main__":
    sys.exit(main())
