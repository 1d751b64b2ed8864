"""``fastddpm bench``: a short throughput table, fastddpm against diffusers on the same checkpoint.

Both engines sample the same batch with the same sampler and number of steps on the same device and
dtype, in one process; each gets one untimed warm-up call, then the best of ``--repeats`` timed calls.
diffusers is optional: without it the table has the fastddpm row only. The table (or, with --json, one JSON
object) records the CPU thread count, since it decides the CPU numbers.

An ADM checkpoint (OpenAI's .pt, with --flags) reproduces OpenAI's code, not diffusers': diffusers' loops
would compute other images from the same net, so the table has the fastddpm row and one line saying there
is no reference here (OpenAI's guided_diffusion is not a package this command runs; the tests compare
fastddpm's ADM sampling with an independent model of their code).
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from fastddpm.cli.checkpoint_arg import checkpoint_path, load_pipeline
from fastddpm.cli.diffusers_reference import diffusers_sampler
from fastddpm.cli.errors import CliError
from fastddpm.cli.sharding import ProcessShare, device_for
from fastddpm.schedulers import samplers


def _synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def best_seconds(call, device: str, repeats: int) -> float:
    call()  # warm-up: kernel compilation, caches, allocator
    best = float("inf")
    for _ in range(repeats):
        _synchronize(device)
        started = time.perf_counter()
        call()
        _synchronize(device)
        best = min(best, time.perf_counter() - started)
    return best


def run_bench(args) -> int:
    import torch

    path = checkpoint_path(args.checkpoint)
    device = device_for(ProcessShare(0, 1, 0, 0, 0), args.device)
    pipe = load_pipeline(path, device, args.dtype, getattr(args, "flags", None))
    train_steps = len(pipe.process)
    if args.steps > train_steps:
        raise CliError(
            f"--steps {args.steps} is out of range: this checkpoint has {train_steps} training timesteps"
        )
    if args.karras and not samplers.has_karras(args.sampler):
        raise CliError(
            f"--karras: sampler {args.sampler} has no Karras sigmas (use one of: {samplers.karras_names()})"
        )

    def fastddpm_call():
        pipe(
            batch_size=args.batch_size,
            num_inference_steps=args.steps,
            sampler=args.sampler,
            karras=args.karras,
            seed=0,
            output_type="np",
            progress=False,
        )

    rows = [("fastddpm", best_seconds(fastddpm_call, device, args.repeats))]
    difference = None
    no_reference = NO_ADM_REFERENCE if pipe.process.reference == "openai" else None
    with tempfile.TemporaryDirectory(prefix="fastddpm-bench-") as scratch:
        if no_reference is not None:
            return report(rows, args, device, path, difference, no_reference)
        # diffusers reads only its own folder layout: hand it the checkpoint as fastddpm converts it.
        folder = os.path.join(scratch, "model")
        pipe.save_pretrained(folder)
        reference = diffusers_sampler(folder, args.sampler, args.karras, device, args.dtype)
        if reference is not None:
            generator = torch.Generator("cpu")

            def diffusers_call():
                reference(args.batch_size, args.steps, generator.manual_seed(0))

            rows.append(("diffusers", best_seconds(diffusers_call, device, args.repeats)))
            difference = image_difference(pipe, reference, args)
        else:
            no_reference = "no reference: diffusers is not installed (pip install diffusers==0.42.1)"
    return report(rows, args, device, path, difference, no_reference)


NO_ADM_REFERENCE = (
    "no reference: an ADM checkpoint reproduces OpenAI's guided-diffusion, which is not installed as a package "
    "here (diffusers' loops would sample other images from this net)"
)


def report(rows, args, device: str, path: str, difference: float | None, no_reference: str | None) -> int:
    if args.json:
        print(as_json(rows, args, device, path, difference, no_reference))
    else:
        print(format_table(rows, args, device, path))
        if difference is not None:
            print(f"images: fastddpm vs diffusers, same generator: max |diff| {difference:.3g}")
        if no_reference is not None:
            print(no_reference)
    return 0


def image_difference(pipe, reference, args) -> float:
    """max |diff| of one more call of each engine with the same generator (fastddpm's noise="torch" draws
    exactly as diffusers does): a speed-up means something only if both compute the same images."""
    import numpy as np
    import torch

    ours = pipe(
        batch_size=args.batch_size, num_inference_steps=args.steps, sampler=args.sampler, karras=args.karras,
        generator=torch.Generator("cpu").manual_seed(0), output_type="np", progress=False,
    )  # fmt: skip
    theirs = reference(args.batch_size, args.steps, torch.Generator("cpu").manual_seed(0))
    return float(np.abs(ours.images - theirs).max())


def as_json(
    rows: list[tuple[str, float]], args, device: str, path: str, difference: float | None, no_reference=None
) -> str:
    baseline = dict(rows).get("diffusers")
    return json.dumps(
        {
            "reference": no_reference or "diffusers",
            "checkpoint": path,
            "sampler": args.sampler,
            "karras": args.karras,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "device": device,
            "dtype": args.dtype,
            "threads": args.threads,
            "repeats": args.repeats,
            "max_image_diff_vs_diffusers": difference,
            "results": [
                {
                    "engine": engine,
                    "seconds": seconds,
                    "images_per_s": args.batch_size / seconds,
                    "ms_per_step": 1000 * seconds / args.steps,
                    "speed_up": baseline / seconds if baseline else None,
                }
                for engine, seconds in rows
            ],
        }
    )


def format_table(rows: list[tuple[str, float]], args, device: str, path: str) -> str:
    baseline = dict(rows).get("diffusers")
    lines = [
        f"checkpoint {path}",
        f"{args.sampler}{' (karras)' if args.karras else ''} {args.steps} steps, batch {args.batch_size}, {device}, {args.dtype}, "
        f"{args.threads} CPU threads, best of {args.repeats} after one warm-up",
        f"{'engine':<10} {'seconds':>9} {'images/s':>10} {'ms/step':>9} {'speed-up':>9}",
    ]
    for engine, seconds in rows:
        speed_up = f"{baseline / seconds:.2f}x" if baseline else "-"
        lines.append(
            f"{engine:<10} {seconds:>9.3f} {args.batch_size / seconds:>10.1f} "
            f"{1000 * seconds / args.steps:>9.2f} {speed_up:>9}"
        )
    return "\n".join(lines)
