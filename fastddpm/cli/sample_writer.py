"""Writing samples so that no interruption loses or corrupts one: PNG files or an npz, atomically.

Every file is written under a temporary name in the same folder, flushed to disk, then renamed over its
final name (os.replace is atomic on POSIX), so a file with a final name is always complete. A process
killed mid-write leaves at most a temporary file, which the next run overwrites or the final clean-up
removes; a failed write (disk full) removes its temporary file and leaves every completed file in place.

- PNG: one file per image, ``000000.png`` ... (zero-padded to at least six digits), as torch-fidelity and
  clean-fid read a folder.
- npz: the images are first written as part files ``.fastddpm_parts/<start>_<stop>.npy`` (one per batch);
  when every index is covered, rank 0 streams them into ``samples_<N>x<H>x<W>x<C>.npz`` holding one uint8
  NHWC array ``arr_0`` (what OpenAI's guided-diffusion evaluator reads; a class-conditional run's labels
  as ``arr_1``, as their scripts write them) and removes the parts. A PNG folder gets ``labels.txt``. Streaming
  keeps memory at one part, whatever N is. A folder grown from M to N images keeps its finished
  ``samples_<M>x...npz`` as the part covering 0..M-1 until the N-image file replaces it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import zipfile

import numpy as np

PARTS_FOLDER = ".fastddpm_parts"
_PART_NAME = re.compile(r"^(\d+)_(\d+)\.npy$")
_NPZ_NAME = re.compile(r"^samples_(\d+)x[\dx]+\.npz$")
_COPY_CHUNK = 1 << 20


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

    def growth_refused(self, before: int) -> str | None:
        """Why a folder of ``before`` images cannot grow to this many (None: it can)."""
        if PngFolder(self.folder, before).digits != self.digits:
            return f"the file names would change from {PngFolder(self.folder, before).digits} to {self.digits} digits"
        return None

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

    def finish(self, labels: np.ndarray | None = None) -> None:
        """Rank 0, after every process is done: write a class-conditional run's labels (labels.txt, line i
        image i's) and remove temporary files left by killed runs."""
        if labels is not None:
            from fastddpm.cli.low_res_source import write_labels

            write_labels(self.folder, labels)
        for stale in glob.glob(os.path.join(self.folder, ".*.png.tmp")) + glob.glob(
            os.path.join(self.folder, ".*.txt.tmp")
        ):
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

    def _earlier_npz(self) -> tuple[int, str] | None:
        """The finished npz of a run with fewer images (the folder was grown): (its count, its path)."""
        for name in sorted(os.listdir(self.folder)):
            match = _NPZ_NAME.match(name)
            if match and int(match.group(1)) < self.num_images:
                return int(match.group(1)), os.path.join(self.folder, name)
        return None

    def _part_ranges(self) -> list[tuple[int, int, str]]:
        """(start, stop, path) of every stored range: the part files, and an earlier, smaller npz."""
        ranges = []
        earlier = self._earlier_npz()
        if earlier is not None:
            ranges.append((0, earlier[0], earlier[1]))
        if not os.path.isdir(self.parts):
            return ranges
        for name in os.listdir(self.parts):
            match = _PART_NAME.match(name)
            if match:
                ranges.append((int(match.group(1)), int(match.group(2)), os.path.join(self.parts, name)))
        return sorted(ranges)

    def has_samples(self) -> bool:
        return bool(glob.glob(os.path.join(self.folder, "samples_*.npz"))) or bool(self._part_ranges())

    def growth_refused(self, before: int) -> str | None:
        """Why a folder of ``before`` images cannot grow to this many (None: it can)."""
        return None

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

    def finish(self, labels: np.ndarray | None = None) -> None:
        """Rank 0, after every process is done: stream the parts into the npz (with a class-conditional run's
        labels as arr_1, as their scripts write them), then remove them."""
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
            shape = _image_shape(parts[0][2])
            final = os.path.join(self.folder, f"samples_{self.num_images}x{'x'.join(map(str, shape))}.npz")
            write_atomically(final, lambda handle: self._stream_npz(handle, parts, shape, labels))
        earlier = self._earlier_npz()
        if earlier is not None:  # its images are in the new file now
            os.remove(earlier[1])
        shutil.rmtree(self.parts, ignore_errors=True)
        for stale in glob.glob(os.path.join(self.folder, ".samples_*.npz.tmp")):
            os.remove(stale)

    def _stream_npz(self, handle, parts: list[tuple[int, int, str]], shape: tuple[int, ...], labels) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False}
        header["shape"] = (self.num_images, *shape)
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            with archive.open("arr_0.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(member, header)
                for _, _, path in parts:
                    if path.endswith(".npz"):
                        with _npz_pixels(path) as (_, pixels):
                            shutil.copyfileobj(pixels, member, _COPY_CHUNK)
                    else:
                        member.write(np.ascontiguousarray(np.load(path)).tobytes())
            if labels is not None:
                with archive.open("arr_1.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.ascontiguousarray(labels, dtype=np.int64))

    def read(self, count: int) -> np.ndarray:
        final = self._final_path()
        if final is not None:
            with np.load(final) as archive:
                return archive["arr_0"][:count]
        chunks, have = [], 0
        for _, _, path in self._part_ranges():
            if have >= count:
                break
            if path.endswith(".npz"):
                with np.load(path) as archive:
                    chunks.append(archive["arr_0"][:count])
            else:
                chunks.append(np.load(path))
            have += len(chunks[-1])
        return np.concatenate(chunks)[:count]


@contextlib.contextmanager
def _npz_pixels(path: str):
    """``with _npz_pixels(path) as (shape, stream)``: the raw uint8 bytes of an npz's arr_0 after its .npy
    header, read from the file as they are copied (the npz is stored, not compressed)."""
    with zipfile.ZipFile(path) as archive, archive.open("arr_0.npy") as member:
        version = np.lib.format.read_magic(member)
        read_header = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read_header(member)
        if dtype != np.uint8:
            raise WriteFailed(0, f"{path} does not hold uint8 images: move it away and rerun")
        yield shape, member


def _image_shape(path: str) -> tuple[int, ...]:
    """(H, W, C) of the images in a part file or an npz."""
    if path.endswith(".npz"):
        with _npz_pixels(path) as (shape, _):
            return tuple(shape[1:])
    return np.load(path, mmap_mode="r").shape[1:]


def folder_has_samples(folder: str) -> bool:
    """Whether ``folder`` holds samples of either format: the manifest guards them whatever --format asks."""
    return PngFolder(folder, 1).has_samples() or NpzFile(folder, 1).has_samples()


def writer_for(output_format: str, folder: str, num_images: int) -> PngFolder | NpzFile:
    return PngFolder(folder, num_images) if output_format == "png" else NpzFile(folder, num_images)


GRID_LONGER_SIDE = 512  # default grid size: 64 digits of 8 px (82 px unscaled) are too small to see


def grid_format(path: str) -> str:
    """PIL's name of the image format that ``path``'s extension asks for (no extension: PNG).

    Checked before sampling, so a grid name PIL cannot write is bad input, not a failure after the run.
    """
    from PIL import Image

    extension = os.path.splitext(path)[1].lower()
    if not extension:
        return "PNG"
    Image.init()  # registers every format PIL has, not just the few it loads up front
    image_format = Image.registered_extensions().get(extension)
    if image_format is None or image_format not in Image.SAVE:
        raise ValueError(
            f"--grid {path}: {extension} is not an image format PIL can write (use .png or .jpg)"
        )
    return image_format


def grid_layout(count: int, height: int, width: int, gap: int = 2) -> tuple[int, int, int, int]:
    """(rows, columns, canvas height, canvas width) of a near-square grid of ``count`` tiles, unscaled."""
    columns = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / columns))
    return rows, columns, rows * (height + gap) + gap, columns * (width + gap) + gap


def default_grid_scale(count: int, height: int, width: int) -> int:
    """The whole-number pixel repeat that brings the grid's longer side nearest GRID_LONGER_SIDE (never < 1)."""
    _, _, canvas_height, canvas_width = grid_layout(count, height, width)
    return max(1, round(GRID_LONGER_SIDE / max(canvas_height, canvas_width)))


def write_grid(images: np.ndarray, path: str, scale: int | None = None) -> None:
    """Tile uint8 NHWC images into a near-square grid with 2-pixel gaps and save it (atomically).

    ``scale`` repeats every pixel scale x scale times (nearest neighbour), so tiny samples stay sharp when
    shown large; None: default_grid_scale, about GRID_LONGER_SIDE pixels on the longer side.
    """
    from PIL import Image

    count, height, width, channels = images.shape
    gap = 2
    rows, columns, canvas_height, canvas_width = grid_layout(count, height, width, gap)
    canvas = np.full((canvas_height, canvas_width, channels), 255, np.uint8)
    for index, image in enumerate(images):
        top = gap + (index // columns) * (height + gap)
        left = gap + (index % columns) * (width + gap)
        canvas[top : top + height, left : left + width] = image
    if scale is None:
        scale = default_grid_scale(count, height, width)
    canvas = canvas.repeat(scale, axis=0).repeat(scale, axis=1)
    picture = Image.fromarray(canvas[:, :, 0] if channels == 1 else canvas)
    image_format = grid_format(path)
    write_atomically(path, lambda handle: picture.save(handle, image_format))
