"""Writing samples so that no interruption loses or corrupts one: PNG files or an npz, atomically.

Every file is written under a temporary name in the same folder, flushed to disk, then renamed over its
final name (os.replace is atomic on POSIX), so a file with a final name is always complete. A process
killed mid-write leaves at most a temporary file, which the next run overwrites or the final clean-up
removes; a failed write (disk full) removes its temporary file and leaves every completed file in place.

- PNG: one file per image, ``000000.png`` ... (zero-padded to at least six digits), as torch-fidelity and
  clean-fid read a folder.
- npz: the images are first written as part files ``.fastddpm_parts/<start>_<stop>.npy`` (one per batch);
  when every index is covered, rank 0 streams them into ``samples_<N>x<H>x<W>x<C>.npz`` holding one uint8
  NHWC array ``arr_0`` (what OpenAI's guided-diffusion evaluator reads) and removes the parts. Streaming
  keeps memory at one part, whatever N is.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import zipfile

import numpy as np

PARTS_FOLDER = ".fastddpm_parts"
_PART_NAME = re.compile(r"^(\d+)_(\d+)\.npy$")


class WriteFailed(OSError):
    """Writing an output file failed (disk full, permissions); the message names the file."""


def temporary_name(final_path: str) -> str:
    """Where final_path is written before its rename (deterministic, so a rerun overwrites stale ones)."""
    folder, name = os.path.split(final_path)
    return os.path.join(folder, f".{name}.tmp")


def write_atomically(final_path: str, write) -> None:
    """Call write(handle) on a temporary file, fsync it, then rename it to final_path."""
    temporary = temporary_name(final_path)
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            # Without fsync a crash of the machine (not just of the process) could leave a renamed but
            # empty file, which a resumed run would take as complete.
            os.fsync(handle.fileno())
        os.replace(temporary, final_path)
    except BaseException as exc:
        try:
            os.remove(temporary)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise WriteFailed(exc.errno, f"cannot write {final_path}: {exc.strerror or exc}") from None
        raise


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float images in [0, 1] (NHWC) to uint8 the way diffusers' numpy_to_pil does: round(x * 255)."""
    return np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)


class PngFolder:
    format = "png"

    def __init__(self, folder: str, num_images: int):
        self.folder = folder
        self.num_images = num_images
        self.digits = max(6, len(str(num_images - 1)))

    def path_of(self, index: int) -> str:
        return os.path.join(self.folder, f"{index:0{self.digits}d}.png")

    @property
    def output(self) -> str:
        return self.folder

    def has_samples(self) -> bool:
        return any(re.fullmatch(r"\d+\.png", name) for name in os.listdir(self.folder))

    def missing(self, start: int, stop: int) -> list[int]:
        return [index for index in range(start, stop) if not os.path.exists(self.path_of(index))]

    def write(self, first_index: int, images: np.ndarray) -> None:
        from PIL import Image

        for offset, image in enumerate(images):
            pixels = image[:, :, 0] if image.shape[2] == 1 else image
            picture = Image.fromarray(pixels)
            write_atomically(
                self.path_of(first_index + offset), lambda handle, p=picture: p.save(handle, "PNG")
            )

    def finish(self) -> None:
        """Rank 0, after every process is done: remove temporary files left by killed runs."""
        for stale in glob.glob(os.path.join(self.folder, ".*.png.tmp")):
            os.remove(stale)

    def read(self, count: int) -> np.ndarray:
        """The first ``count`` images, uint8 NHWC."""
        from PIL import Image

        images = [np.asarray(Image.open(self.path_of(index))) for index in range(count)]
        return np.stack([image[:, :, None] if image.ndim == 2 else image for image in images])


class NpzFile:
    format = "npz"

    def __init__(self, folder: str, num_images: int):
        self.folder = folder
        self.num_images = num_images
        self.parts = os.path.join(folder, PARTS_FOLDER)

    @property
    def output(self) -> str:
        done = self._final_path()
        return done if done is not None else os.path.join(self.folder, f"samples_{self.num_images}x*.npz")

    def _final_path(self) -> str | None:
        found = sorted(glob.glob(os.path.join(self.folder, f"samples_{self.num_images}x*.npz")))
        return found[0] if found else None

    def _part_ranges(self) -> list[tuple[int, int, str]]:
        if not os.path.isdir(self.parts):
            return []
        ranges = []
        for name in os.listdir(self.parts):
            match = _PART_NAME.match(name)
            if match:
                ranges.append((int(match.group(1)), int(match.group(2)), os.path.join(self.parts, name)))
        return sorted(ranges)

    def has_samples(self) -> bool:
        return bool(glob.glob(os.path.join(self.folder, "samples_*.npz"))) or bool(self._part_ranges())

    def missing(self, start: int, stop: int) -> list[int]:
        if self._final_path() is not None:
            return []
        covered = set()
        for part_start, part_stop, _ in self._part_ranges():
            covered.update(range(part_start, part_stop))
        return [index for index in range(start, stop) if index not in covered]

    def write(self, first_index: int, images: np.ndarray) -> None:
        os.makedirs(self.parts, exist_ok=True)
        path = os.path.join(self.parts, f"{first_index:09d}_{first_index + len(images):09d}.npy")
        write_atomically(path, lambda handle: np.save(handle, np.ascontiguousarray(images)))

    def finish(self) -> None:
        """Rank 0, after every process is done: stream the parts into the npz, then remove them."""
        if self._final_path() is None:
            parts = self._part_ranges()
            expected = 0
            for part_start, part_stop, _ in parts:
                if part_start != expected:
                    raise WriteFailed(
                        0, f"{self.parts} lacks images {expected}..{part_start - 1}: rerun to finish"
                    )
                expected = part_stop
            if expected != self.num_images:
                raise WriteFailed(
                    0, f"{self.parts} lacks images {expected}..{self.num_images - 1}: rerun to finish"
                )
            shape = np.load(parts[0][2], mmap_mode="r").shape[1:]
            final = os.path.join(self.folder, f"samples_{self.num_images}x{'x'.join(map(str, shape))}.npz")
            write_atomically(final, lambda handle: self._stream_npz(handle, parts, shape))
        shutil.rmtree(self.parts, ignore_errors=True)
        for stale in glob.glob(os.path.join(self.folder, ".samples_*.npz.tmp")):
            os.remove(stale)

    def _stream_npz(self, handle, parts: list[tuple[int, int, str]], shape: tuple[int, ...]) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False}
        header["shape"] = (self.num_images, *shape)
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            with archive.open("arr_0.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(member, header)
                for _, _, path in parts:
                    member.write(np.ascontiguousarray(np.load(path)).tobytes())

    def read(self, count: int) -> np.ndarray:
        final = self._final_path()
        if final is not None:
            with np.load(final) as archive:
                return archive["arr_0"][:count]
        chunks, have = [], 0
        for _, _, path in self._part_ranges():
            if have >= count:
                break
            chunks.append(np.load(path))
            have += len(chunks[-1])
        return np.concatenate(chunks)[:count]


def writer_for(output_format: str, folder: str, num_images: int) -> PngFolder | NpzFile:
    return PngFolder(folder, num_images) if output_format == "png" else NpzFile(folder, num_images)


def write_grid(images: np.ndarray, path: str, scale: int = 1) -> None:
    """Tile uint8 NHWC images into a near-square grid with 2-pixel gaps and save it (atomically).

    ``scale`` repeats every pixel scale x scale times, so tiny samples stay sharp when shown large.
    """
    from PIL import Image

    count, height, width, channels = images.shape
    columns = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / columns))
    gap = 2
    canvas = np.full((rows * (height + gap) + gap, columns * (width + gap) + gap, channels), 255, np.uint8)
    for index, image in enumerate(images):
        top = gap + (index // columns) * (height + gap)
        left = gap + (index % columns) * (width + gap)
        canvas[top : top + height, left : left + width] = image
    canvas = canvas.repeat(scale, axis=0).repeat(scale, axis=1)
    picture = Image.fromarray(canvas[:, :, 0] if channels == 1 else canvas)
    extension = os.path.splitext(path)[1].lstrip(".").upper() or "PNG"
    image_format = "JPEG" if extension == "JPG" else extension
    write_atomically(path, lambda handle: picture.save(handle, image_format))
