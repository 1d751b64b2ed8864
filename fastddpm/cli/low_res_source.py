"""``fastddpm sample --low-res``: the low-resolution images (and labels) an upsampler run draws from.

Two sources, the ones a base run leaves:
- an npz as their scripts (and ``fastddpm sample --format npz``) write it: ``arr_0`` uint8 NHWC images, and for
  class-conditional runs ``arr_1``, one integer label per image; a fastddpm npz output folder (one
  ``samples_<N>x...npz`` in it) is read the same way;
- a fastddpm PNG output folder: ``000000.png``, ``000001.png``, ... and, for class-conditional runs,
  ``labels.txt`` beside them (line i: image i's label).

Image i of the upsampler's output is drawn from low-resolution image i (and its label), so an upsampler run
is deterministic, resumable and shardable like any other. Everything that cannot serve is one CliError line
naming the path.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import zipfile
from dataclasses import dataclass

import numpy as np

from fastddpm.cli.errors import CliError

LABELS_FILE = "labels.txt"  # beside a PNG folder's images: one integer label per line, in image order
_PNG_NAME = re.compile(r"^(\d+)\.png$")


@dataclass(frozen=True)
class LowResSet:
    path: str
    images: np.ndarray  # uint8 (N, h, w, 3)
    labels: np.ndarray | None  # int64 (N,), or None

    def __len__(self) -> int:
        return len(self.images)

    def fingerprint(self) -> str:
        """sha256 over the pixels and labels (not the files): the manifest records which set a run used."""
        digest = hashlib.sha256(np.ascontiguousarray(self.images).tobytes())
        if self.labels is not None:
            digest.update(b"labels" + np.ascontiguousarray(self.labels).tobytes())
        return digest.hexdigest()


def read_low_res(path: str) -> LowResSet:
    """The images and labels at ``path`` (module docstring), checked."""
    where = os.path.abspath(path)
    if os.path.isdir(where):
        archives = sorted(glob.glob(os.path.join(where, "samples_*.npz")))
        if len(archives) == 1:
            return _from_npz(archives[0], f"--low-res {path}")
        if len(archives) > 1:
            raise CliError(f"--low-res {path} holds {len(archives)} samples_*.npz files; name one of them")
        return _from_png_folder(where, f"--low-res {path}")
    if not os.path.exists(where):
        raise CliError(f"--low-res {path}: no such file or folder")
    return _from_npz(where, f"--low-res {path}")


def _from_npz(path: str, name: str) -> LowResSet:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "arr_0" not in archive.files:
                raise CliError(f"{name} has no arr_0 (the images) in it")
            images = archive["arr_0"]
            labels = archive["arr_1"] if "arr_1" in archive.files else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise CliError(f"{name} is not a readable npz: {' '.join(str(error).split())}") from None
    return _checked(path, images, labels, name)


def _from_png_folder(folder: str, name: str) -> LowResSet:
    from PIL import Image, UnidentifiedImageError

    indices = sorted(int(m[1]) for n in os.listdir(folder) if (m := _PNG_NAME.match(n)))
    if not indices:
        raise CliError(f"{name} holds no images (NNNNNN.png files or one samples_*.npz)")
    if indices != list(range(len(indices))):
        missing = next(i for i, index in enumerate(indices) if i != index)
        raise CliError(f"{name} lacks image {missing} (its PNG files must be numbered from 0 without gaps)")
    digits = {len(n) - 4 for n in os.listdir(folder) if _PNG_NAME.match(n)}
    width = min(digits)
    try:
        pictures = []
        for index in indices:
            with Image.open(os.path.join(folder, f"{index:0{width}d}.png")) as picture:
                pictures.append(np.asarray(picture.convert("RGB")))
    except (OSError, UnidentifiedImageError) as error:
        raise CliError(f"{name}: cannot read an image: {' '.join(str(error).split())}") from None
    if len({p.shape for p in pictures}) != 1:
        raise CliError(f"{name} holds images of different sizes")
    labels = None
    labels_path = os.path.join(folder, LABELS_FILE)
    if os.path.exists(labels_path):
        try:
            labels = np.loadtxt(labels_path, dtype=np.int64, ndmin=1)
        except ValueError as error:
            raise CliError(f"{name}: {LABELS_FILE} is not one integer per line ({error})") from None
    return _checked(folder, np.stack(pictures), labels, name)


def _checked(path: str, images: np.ndarray, labels: np.ndarray | None, name: str) -> LowResSet:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise CliError(
            f"{name}: arr_0 must be uint8 RGB images (N, h, w, 3), got {images.dtype} {images.shape}"
        )
    if labels is not None:
        if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(images):
            raise CliError(
                f"{name}: the labels must be {len(images)} integers, one per image, got {labels.dtype} "
                f"{labels.shape}"
            )
        labels = labels.astype(np.int64)
    return LowResSet(path, images, labels)


def write_labels(folder: str, labels: np.ndarray) -> None:
    """``labels.txt`` beside a PNG folder's images, atomically (what read_low_res reads back)."""
    from fastddpm.cli.sample_writer import write_atomically

    text = "".join(f"{int(label)}\n" for label in labels).encode()
    write_atomically(os.path.join(folder, LABELS_FILE), lambda handle: handle.write(text))
