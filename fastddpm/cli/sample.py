"""``fastddpm sample``: draw N images into a folder, resumably, the same for any batch size or process split.

Image i is drawn with philox noise at sample index i (pipeline noise="philox", sample_offset), so it depends
only on (checkpoint, settings, seed, i); an upsampler's image i also on low-resolution image i (--low-res).
A class-conditional run records its labels: arr_1 in the npz, labels.txt beside PNG files. This process draws the indices of its torchrun block that are not
on disk yet, in batches of consecutive indices, writing each image atomically as soon as its batch is done.
The manifest guards the folder against a rerun with other settings; a rerun with a larger N grows it.
"""

from __future__ import annotations

import json
import os
import sys
import time

from fastddpm.cli.checkpoint_arg import checkpoint_path, load_pipeline, refuse_unused_respacing
from fastddpm.cli.errors import CliError
from fastddpm.cli.low_res_source import LowResSet, read_low_res
from fastddpm.cli.manifest import ManifestMismatch, check_or_write_manifest, checkpoint_fingerprint
from fastddpm.cli.sample_writer import (
    WriteFailed,
    folder_has_samples,
    grid_format,
    to_uint8,
    write_grid,
    writer_for,
)
from fastddpm.cli.sharding import ProcessGroup, batches, device_for, process_share

GRID_IMAGES = 64


def resolve_steps(pipe, sampler: str, steps: int | None) -> int | None:
    """--steps, or the sampler's default on this checkpoint (every step for ddpm, else 50; None: an ADM
    checkpoint's own ddpm / ddim loops take their flags' timestep_respacing)."""
    train_steps = len(pipe.process)
    if steps is None:
        try:
            return pipe.default_steps(sampler)
        except ValueError as error:
            raise CliError(" ".join(str(error).split())) from None
    if not 1 <= steps <= train_steps:
        raise CliError(
            f"--steps {steps} is out of range: this checkpoint has {train_steps} training timesteps"
        )
    return steps


def effective_steps(pipe, steps: int | None) -> int:
    """The number of denoising steps run: ``steps``, or (None) those an ADM checkpoint's respacing keeps."""
    if steps is not None:
        return steps
    kept, _ = pipe.process.respaced(None)
    return len(kept)


def prepare_folder(folder: str) -> str:
    folder = os.path.abspath(folder)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise CliError(f"--out {folder} cannot be created: {error.strerror or error}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CliError(f"--out {folder} is not writable")
    return folder


def check_eta(sampler: str, eta: float | None) -> float:
    """--eta is DDIM's: DDPM draws with its own variance, so an eta given with --sampler ddpm would be ignored."""
    if eta is None:
        return 0.0
    if sampler != "ddim" and eta != 0.0:
        raise CliError(f"--eta {eta:g} applies to --sampler ddim only; --sampler {sampler} does not use it")
    return eta


def check_grid(grid: str | None) -> None:
    """A grid name PIL cannot write, or a folder, is bad input now, not a traceback after the sampling."""
    if grid is None:
        return
    try:
        grid_format(grid)
    except ValueError as error:
        raise CliError(str(error)) from None
    if os.path.isdir(grid):
        raise CliError(f"--grid {grid} is a folder; give an image file name such as grid.png")


def prepare_grid(grid: str | None) -> str | None:
    """The grid's absolute path, its folder created (as --help says) before sampling."""
    if grid is None:
        return None
    path = os.path.abspath(grid)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as error:
        raise CliError(f"--grid {grid}: its folder cannot be created: {error.strerror or error}") from None
    return path


def run_sample(args) -> int:
    try:
        share = process_share(args.num)
    except ValueError as error:
        raise CliError(str(error)) from None
    if not args.out.strip():  # "" would be the current folder
        raise CliError(f"--out {args.out!r} is empty: give the folder to write the images into")
    args.eta = check_eta(args.sampler, args.eta)
    check_grid(args.grid)
    path = checkpoint_path(args.checkpoint)
    classifier = getattr(args, "classifier", None)
    pipe = load_pipeline(path, device_for(share, args.device), args.dtype, args.flags, classifier)
    refuse_unused_respacing(pipe, args.sampler, args.steps)
    steps = resolve_steps(pipe, args.sampler, args.steps)
    karras = bool(getattr(args, "karras", False))
    if karras:
        from fastddpm.schedulers import samplers

        if not samplers.has_karras(args.sampler):
            raise CliError(
                f"--karras: sampler {args.sampler} has no Karras sigmas (use one of: {samplers.karras_names()})"
            )
    low_res = check_low_res(pipe, args)
    # The folder only after the checkpoint and settings passed: bad input leaves no empty folder behind.
    folder = prepare_folder(args.out)
    writer = writer_for(args.format, folder, args.num)

    settings = {
        "checkpoint_sha256": checkpoint_fingerprint(path),
        "num": args.num,
        "sampler": args.sampler,
        "steps": steps,
        "eta": args.eta if args.sampler == "ddim" else 0.0,
        "seed": args.seed,
        "dtype": args.dtype,
        "noise": "philox",
        "format": args.format,
        **({"flags": args.flags} if args.flags else {}),  # an ADM checkpoint's flags change its images
    }
    if classifier is not None:  # only when set: manifests written before --classifier still match
        settings["classifier_sha256"] = checkpoint_fingerprint(os.path.abspath(classifier))
        settings["classifier_scale"] = pipe.classifier_scale
    if karras:  # only when set: manifests written before --karras existed still match
        settings["karras"] = True
    if low_res is not None:
        settings["low_res_sha256"] = low_res.fingerprint()
    from fastddpm import __version__

    info = {"checkpoint": path, "fastddpm_version": __version__}
    try:
        # samples of the other format count too: a change of --format must not slip past the manifest
        check_or_write_manifest(folder, settings, info, folder_has_samples(folder), writer.growth_refused)
    except ManifestMismatch as error:
        raise CliError(str(error)) from None
    except OSError as error:
        raise CliError(f"--out {folder}: cannot write the manifest: {error.strerror or error}") from None
    args.grid = prepare_grid(args.grid)

    group = ProcessGroup(share)
    started = time.perf_counter()
    todo = writer.missing(share.start, share.stop)
    drawn = draw(pipe, writer, todo, args, steps, share, low_res)
    total_drawn = group.sum(drawn)
    seconds = time.perf_counter() - started
    if share.is_main:
        finish(writer, args, run_labels(pipe, args, low_res))
    group.barrier()
    group.close()
    if share.is_main:
        summary = {
            "images": total_drawn,
            "skipped": args.num - total_drawn,
            "seconds": round(seconds, 3),
            "images_per_s": round(total_drawn / seconds, 3) if seconds > 0 else None,
            "checkpoint": path,
            "sampler": args.sampler,
            "karras": karras,
            "steps": effective_steps(pipe, steps),
            "eta": settings["eta"],
            "dtype": args.dtype,
            "seed": args.seed,
            "format": args.format,
            "out": writer.output,
            "processes": share.world_size,
            **(
                {"classifier": os.path.abspath(classifier), "classifier_scale": pipe.classifier_scale}
                if classifier
                else {}
            ),
            "threads": args.threads,
        }
        print(json.dumps(summary), flush=True)
    return 0


def check_low_res(pipe, args) -> LowResSet | None:
    """--low-res, read and checked against the checkpoint: required by an upsampler, refused by any other
    network; it must hold at least --num images of the upsampler's small_size, with labels for a
    class-conditional upsampler."""
    from fastddpm.upsampling import low_res_size

    size = low_res_size(pipe.unet)
    given = getattr(args, "low_res", None)
    if size is None:
        if given is not None:
            raise CliError(
                f"--low-res applies to upsamplers, and {args.checkpoint or 'the default model'} is not one"
            )
        return None
    if given is None:
        raise CliError(
            f"--low-res is required: this checkpoint is an upsampler from {size} px (an npz or a folder of "
            "base samples)"
        )
    low_res = read_low_res(given)
    if args.num > len(low_res):
        raise CliError(f"--num {args.num} is more than the {len(low_res)} images in --low-res {given}")
    if low_res.images.shape[1:3] != (size, size):
        raise CliError(
            f"--low-res {given} holds {low_res.images.shape[1]} x {low_res.images.shape[2]} images; this "
            f"upsampler takes {size} x {size} (its small_size flag)"
        )
    if pipe.num_classes() is not None and low_res.labels is None:
        raise CliError(
            f"--low-res {given} has no class labels (arr_1 in an npz, labels.txt in a folder), and this "
            "upsampler is class-conditional"
        )
    return low_res


def run_labels(pipe, args, low_res: LowResSet | None):
    """The labels of images 0 .. num - 1 of a class-conditional or classifier-guided run (else None): the
    low-resolution set's for an upsampler, else those philox draws for each index."""
    if pipe.label_classes() is None:
        return None
    if low_res is not None:
        return low_res.labels[: args.num]
    return pipe.philox_class_labels(args.num, args.seed).numpy()


def draw(pipe, writer, todo: list[int], args, steps: int, share, low_res: LowResSet | None = None) -> int:
    """Sample and write the indices in ``todo``; returns how many were drawn."""
    from tqdm.auto import tqdm

    span = share.stop - share.start
    show = share.is_main and sys.stderr.isatty()
    with tqdm(
        total=span,
        initial=span - len(todo),
        unit="img",
        disable=not show,
        desc="fastddpm sample",
        file=sys.stderr,
    ) as progress:
        for first, count in batches(todo, args.batch_size):
            conditions = {}
            if low_res is not None:  # image i from low-resolution image i, with its label
                conditions["low_res"] = low_res.images[first : first + count]
                if pipe.num_classes() is not None:
                    conditions["class_labels"] = low_res.labels[first : first + count]
            try:
                images = pipe(
                    batch_size=count,
                    num_inference_steps=steps,
                    sampler=args.sampler,
                    karras=bool(getattr(args, "karras", False)),
                    eta=args.eta if args.sampler == "ddim" else 0.0,
                    seed=args.seed,
                    noise="philox",
                    output_type="np",
                    progress=False,
                    sample_offset=first,
                    **conditions,
                ).images
            except ValueError as error:  # the pipeline's own check of its arguments
                raise CliError(" ".join(str(error).split())) from None
            try:
                writer.write(first, to_uint8(images))
            except WriteFailed as error:
                raise CliError(
                    f"{error.strerror}; the images written so far are kept, rerun to resume"
                ) from None
            progress.update(count)
    return len(todo)


def finish(writer, args, labels=None) -> None:
    try:
        writer.finish(labels)
        if args.grid:
            write_grid(writer.read(min(GRID_IMAGES, args.num)), args.grid, args.grid_scale)
    except WriteFailed as error:
        raise CliError(f"{error.strerror}; the images written so far are kept, rerun to resume") from None
