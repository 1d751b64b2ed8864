"""``fastddpm bench``: a short throughput table, fastddpm against diffusers on the same checkpoint.

Both engines sample the same batch with the same sampler and number of steps on the same device and
dtype, in one process; each gets one untimed warm-up call, then the best of ``--repeats`` timed calls.
diffusers is optional: without it the table has the fastddpm row only. The table (or, with --json, one JSON
object) records the CPU thread count, since it decides the CPU numbers.

An ADM checkpoint (OpenAI's .pt, with --flags) reproduces OpenAI's code, not diffusers' (whose loops would
sample other images from the same net): its reference is their guided_diffusion package where it is
installed (openai_reference.py), and otherwise one line says there is none.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from fastddpm.cli.checkpoint_arg import checkpoint_path, load_pipeline, refuse_unused_respacing
from fastddpm.cli.diffusers_reference import diffusers_sampler
from fastddpm.cli.errors import CliError
from fastddpm.cli.openai_reference import openai_sampler
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
    refuse_unused_respacing(pipe, args.sampler, args.steps, "bench")
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
        sample_checked(
            pipe,
            batch_size=args.batch_size,
            num_inference_steps=args.steps,
            sampler=args.sampler,
            karras=args.karras,
            seed=0,
            output_type="np",
            progress=False,
        )

    rows = [("fastddpm", best_seconds(fastddpm_call, device, args.repeats))]
    difference, note = None, None
    with tempfile.TemporaryDirectory(prefix="fastddpm-bench-") as scratch:
        name, reference = reference_for(pipe, path, args, device, scratch)
        if isinstance(reference, str):
            note = reference  # one line: why there is no reference here
        else:
            generator = torch.Generator(device if name == "openai" else "cpu")

            def reference_call():
                reference(args.batch_size, args.steps, generator.manual_seed(0))

            rows.append((name, best_seconds(reference_call, device, args.repeats)))
            difference = image_difference(pipe, reference, args, generator.device)
    if args.json:
        print(as_json(rows, args, device, path, difference, note))
    else:
        print(format_table(rows, args, device, path))
        if difference is not None:
            print(f"images: fastddpm vs {rows[1][0]}, same generator: max |diff| {difference:.3g}")
        if note is not None:
            print(note)
    return 0


def sample_checked(pipe, **settings):
    """pipe(**settings), its refusal of the settings (a ValueError, e.g. a schedule with no finite update)
    turned into the one line ``fastddpm sample`` prints for it."""
    try:
        return pipe(**settings)
    except ValueError as error:
        raise CliError(" ".join(str(error).split())) from None


def reference_for(pipe, path: str, args, device: str, scratch: str) -> tuple[str, object]:
    """(engine name, run(batch, steps, generator) or a one-line reason there is none): the code whose
    numbers the checkpoint's process reproduces -- diffusers, or for an ADM checkpoint OpenAI's."""
    if pipe.process.reference == "openai":
        return "openai", openai_sampler(path, pipe, args.sampler, device, args.dtype)
    # diffusers reads only its own folder layout: hand it the checkpoint as fastddpm converts it.
    folder = os.path.join(scratch, "model")
    pipe.save_pretrained(folder)
    reference = diffusers_sampler(folder, args.sampler, args.karras, device, args.dtype)
    if reference is None:
        return "diffusers", "no reference: diffusers is not installed (pip install diffusers==0.42.1)"
    return "diffusers", reference


def image_difference(pipe, reference, args, generator_device) -> float:
    """max |diff| of one more call of each engine with the same generator (fastddpm's noise="torch" draws
    exactly as the reference does): a speed-up means something only if both compute the same images."""
    import numpy as np
    import torch

    # dpm-sde's Brownian tree takes its seed from torch's global RNG (noise_sampler_seed None), on both sides
    torch.manual_seed(0)
    ours = sample_checked(
        pipe,
        batch_size=args.batch_size, num_inference_steps=args.steps, sampler=args.sampler, karras=args.karras,
        generator=torch.Generator(generator_device).manual_seed(0), output_type="np", progress=False,
    )  # fmt: skip
    torch.manual_seed(0)
    theirs = reference(args.batch_size, args.steps, torch.Generator(generator_device).manual_seed(0))
    return float(np.abs(ours.images - theirs).max())


def as_json(
    rows: list[tuple[str, float]], args, device: str, path: str, difference: float | None, note=None
) -> str:
    baseline = rows[1][1] if len(rows) > 1 else None
    return json.dumps(
        {
            "reference": note or rows[1][0],
            "checkpoint": path,
            "sampler": args.sampler,
            "karras": args.karras,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "device": device,
            "dtype": args.dtype,
            "threads": args.threads,
            "repeats": args.repeats,
            f"max_image_diff_vs_{rows[1][0] if len(rows) > 1 else 'reference'}": difference,
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
    baseline = rows[1][1] if len(rows) > 1 else None
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
