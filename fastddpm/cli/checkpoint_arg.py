"""The CHECKPOINT argument of every subcommand: a path, a Hub id, or nothing (the embedded model), then loaded.

One function resolves it for `sample`, `info`, `convert` and `bench`, so a missing checkpoint gets the same
message from each, and a Hub id ("google/ddpm-cifar10-32") is resolved as ``fastddpm.load`` resolves it:
through huggingface_hub's download or its local cache (HF_HUB_OFFLINE=1: the cache only).
"""

from __future__ import annotations

import os

from fastddpm.cli.errors import CliError


def checkpoint_path(checkpoint: str | None, argument: str = "checkpoint") -> str:
    """The checkpoint's file or folder on disk (the embedded model's folder when none is given).

    A path that does not exist but has the form owner/name[@revision] is a Hub id: its local snapshot folder
    is returned. ``argument`` names the argument in messages (convert calls it "source").
    """
    if checkpoint is None:
        from fastddpm.pipeline import DEFAULT_MODEL_DIR

        path = str(DEFAULT_MODEL_DIR)
        if not os.path.isdir(path):
            raise CliError(f"the embedded default model is missing from {path}; reinstall fastddpm")
        return path
    if os.path.exists(checkpoint):
        return os.path.abspath(checkpoint)
    from fastddpm.checkpoints.files import CheckpointError
    from fastddpm.checkpoints.hub import looks_like_hub_id, resolve_hub_id

    if not looks_like_hub_id(checkpoint):
        raise CliError(f"{argument} {checkpoint}: no such file or folder, and not a Hub id (owner/name)")
    try:
        return str(resolve_hub_id(checkpoint))
    except CheckpointError as error:
        raise CliError(f"{argument} {_one_line(str(error))}") from None


def load_pipeline(
    path: str, device: str, dtype: str, flags: str | None = None, classifier: str | None = None
):
    """fastddpm.load, with any failure to read the checkpoint turned into one line of bad input.

    ``flags``: an ADM checkpoint's flag string as their README writes it, passed as keyword flags (their
    CLASSIFIER_FLAGS go to ``classifier``, a guided-diffusion classifier file, with image_size)."""
    from fastddpm import pipeline
    from fastddpm.checkpoints.adm_classifier import is_classifier_flag
    from fastddpm.checkpoints.adm_flags import parse_flag_string

    try:
        given = parse_flag_string(flags) if flags else {}
    except ValueError as error:
        raise CliError(f"--flags: {_one_line(str(error))}") from None
    classifier_flags = {k: given.pop(k) for k in list(given) if is_classifier_flag(k)}
    if classifier is None and classifier_flags:
        raise CliError(
            f"--flags {next(iter(classifier_flags))} applies to a classifier, and no --classifier was given"
        )
    if classifier is not None and not os.path.isfile(classifier):
        raise CliError(f"--classifier {classifier}: no such file")
    try:
        pipe = pipeline.load(path, **given)
    except Exception as error:  # a corrupt file raises whatever its parser raises
        raise CliError(f"cannot read checkpoint {path}: {_without(path, error)}") from None
    if classifier is not None:
        shared = {k: given[k] for k in ("image_size",) if k in given}
        try:
            pipe.load_classifier(os.path.abspath(classifier), **shared, **classifier_flags)
        except Exception as error:
            message = _without(os.path.abspath(classifier), error).removeprefix(
                f"classifier {os.path.abspath(classifier)} "
            )
            raise CliError(f"--classifier {classifier}: {message}") from None
    try:
        return pipe.to(device, dtype)
    except Exception as error:
        raise CliError(
            f"cannot move the model to device {device} in {dtype}: {_one_line(str(error))}"
        ) from None


def _without(path: str, error: Exception) -> str:
    """The error in one line, without the path the readers' messages start with (said once by the caller)."""
    message = _one_line(str(error)) or type(error).__name__
    return message.removeprefix(f"{path}: ")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def refuse_unused_respacing(pipe, sampler: str, steps: int | None, command: str = "sample") -> None:
    """An ADM checkpoint's timestep_respacing (in --flags) sets the steps of their ddpm / ddim loops only:
    refused where another sampler or --steps would leave it unused, instead of silently ignored."""
    respacing = pipe.loaded_respacing()
    if respacing is None:
        return
    if sampler not in ("ddpm", "ddim"):
        raise CliError(
            f"--flags timestep_respacing {respacing} applies to --sampler ddpm and ddim only, and --sampler "
            f"{sampler} runs over all {len(pipe.process)} diffusion steps: drop it from --flags"
        )
    if command == "bench":
        raise CliError(
            f"--flags timestep_respacing {respacing}: bench sets the steps with --steps (its reference "
            "respaces to that count); drop it from --flags"
        )
    if steps is not None:
        raise CliError(
            f"--steps {steps} and --flags timestep_respacing {respacing} both set the steps; give one"
        )
