"""The manifest of a sample folder: the settings its images were drawn with, so a rerun can resume it.

``fastddpm_manifest.json`` holds the settings that decide the pixels (checkpoint fingerprint, number of
images, sampler, steps, eta, seed, dtype, noise, format). A rerun with equal settings resumes; a rerun that
only asks for more images grows the folder (image i depends only on the settings, the seed and i, so images
0..M-1 stay valid and only M..N-1 are drawn); a rerun with other settings is refused, because mixing images
of two settings in one folder would silently spoil an FID run. Batch size, device and the number of processes are not settings: philox noise makes the images
independent of them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable

MANIFEST_NAME = "fastddpm_manifest.json"
MANIFEST_VERSION = 1
_HASH_CHUNK = 1 << 20


class ManifestMismatch(ValueError):
    """The folder holds samples drawn with other settings."""


def checkpoint_fingerprint(path: str) -> str:
    """sha256 over a checkpoint file, or over a folder's files (relative names and contents, sorted).

    Hidden files are left out, so editor or OS droppings in a checkpoint folder do not change it.
    """
    digest = hashlib.sha256()
    if os.path.isdir(path):
        files = []
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files += [os.path.join(root, name) for name in names if not name.startswith(".")]
        for file_path in sorted(files, key=lambda p: os.path.relpath(p, path)):
            digest.update(os.path.relpath(file_path, path).replace(os.sep, "/").encode() + b"\0")
            _hash_file(digest, file_path)
    else:
        _hash_file(digest, path)
    return digest.hexdigest()


def _hash_file(digest, file_path: str) -> None:
    with open(file_path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    digest.update(b"\0")


def read_manifest(folder: str) -> dict | None:
    path = os.path.join(folder, MANIFEST_NAME)
    try:
        with open(path) as handle:
            manifest = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ManifestMismatch(
            f"{path} cannot be read ({exc}); move it away or use another --out folder"
        ) from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("settings"), dict):
        raise ManifestMismatch(f"{path} is not a fastddpm manifest; use another --out folder")
    return manifest


def check_or_write_manifest(
    folder: str,
    settings: dict,
    info: dict,
    folder_has_samples: bool,
    growth_refused: Callable[[int], str | None] = lambda before: None,
) -> int | None:
    """Refuse a folder drawn with other settings; write the manifest if there is none, or if this run grows
    the folder (the same settings but a larger ``num``, unless ``growth_refused(old num)`` gives a reason).

    Returns the number of images the folder's manifest asked for before this run (None: a new folder).
    """
    existing = read_manifest(folder)
    if existing is not None:
        before = existing["settings"].get("num")
        same_but_num = {**existing["settings"], "num": settings.get("num")} == settings
        if same_but_num and isinstance(before, int) and before < settings["num"]:
            reason = growth_refused(before)
            if reason is not None:
                raise ManifestMismatch(
                    f"{folder} cannot grow from {before} to {settings['num']} images: {reason}"
                )
            _write(folder, {**existing, **info, "settings": settings})
            return before
        differences = [
            f"{key} {existing['settings'].get(key)!r} there, {value!r} here"
            for key, value in settings.items()
            if existing["settings"].get(key) != value
        ]
        differences += [
            f"{key} {value!r} there, absent here"
            for key, value in existing["settings"].items()
            if key not in settings
        ]
        if differences and not folder_has_samples:
            # a run that stopped before its first image (e.g. refused settings) left only the manifest:
            # nothing to spoil, so the new settings take the folder
            _write(folder, {"version": MANIFEST_VERSION, "settings": settings, **info})
            return None
        if differences:
            raise ManifestMismatch(
                f"{folder} holds samples drawn with other settings ({'; '.join(differences)}): "
                "rerun with the same settings to resume (--num may grow), or use another --out folder"
            )
        return before
    if folder_has_samples:
        raise ManifestMismatch(
            f"{folder} already holds sample files but no {MANIFEST_NAME}: refusing to mix them with new ones; "
            "use another --out folder"
        )
    _write(folder, {"version": MANIFEST_VERSION, "settings": settings, **info})
    return None


def _write(folder: str, document: dict) -> None:
    path = os.path.join(folder, MANIFEST_NAME)
    # Unique temporary name: under torchrun every process may write the (identical) manifest at once.
    temporary = os.path.join(folder, f".{MANIFEST_NAME}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w") as handle:
            json.dump(document, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(temporary, path)
    except BaseException:
        _remove_quietly(temporary)
        raise


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
