"""The whole cascade on the command line: a class-conditional base model writes images and labels, and an
upsampler draws image i from base image i and its label, for any batch size, from an npz or a PNG folder."""

from __future__ import annotations

import numpy as np
import pytest

import fastddpm
from fastddpm.cli.sample_writer import to_uint8
from tests.adm_checkpoint import reference_model, reference_upsampler, save_checkpoint
from tests.adm_families import FAMILIES, SUPER_RES_FAMILIES
from tests.cli.test_cli import assert_same_pixels, run_in_process

BASE_FLAGS = FAMILIES["guided_64_cond"][0] + " --timestep_respacing 2"  # 64 px, class-conditional
UP_FLAGS = SUPER_RES_FAMILIES["guided_64_256_upsampler"][0] + " --timestep_respacing 2"  # 64 -> 256 px


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cascade")
    base, _, _, _ = reference_model("guided_64_cond")
    up = reference_upsampler("guided_64_256_upsampler")[0]
    return str(save_checkpoint(base, folder / "base.pt")), str(save_checkpoint(up, folder / "up.pt"))


def sample(capsys, *argv):
    return run_in_process(["sample", *map(str, argv), "--device", "cpu", "--sampler", "ddpm"], capsys)


@pytest.fixture(scope="module")
def base_npz(checkpoints, tmp_path_factory):
    """Three base images as an npz folder; the labels are written beside them (arr_1)."""
    out = tmp_path_factory.mktemp("base") / "npz"
    from fastddpm.cli.main import main

    assert main(["sample", checkpoints[0], "--flags", BASE_FLAGS, "-n", "3", "--format", "npz",
                 "--out", str(out), "--device", "cpu", "--sampler", "ddpm", "--seed", "4"]) == 0  # fmt: skip
    return out


def test_a_class_conditional_run_records_its_labels(checkpoints, base_npz, tmp_path, capsys):
    pipe = fastddpm.load(checkpoints[0], **fastddpm.checkpoints.adm_flags.parse_flag_string(BASE_FLAGS))
    expected = pipe.philox_class_labels(3, seed=4).numpy()
    (archive,) = base_npz.glob("samples_*.npz")
    with np.load(archive) as saved:
        pixels, labels = saved["arr_0"], saved["arr_1"]
    assert pixels.shape == (3, 64, 64, 3) and np.array_equal(labels, expected)
    # the labels are the ones the images were drawn with: image 1 alone, with its label given, is the same
    alone = pipe(batch_size=1, sampler="ddpm", seed=4, noise="philox", sample_offset=1, output_type="np",
                 class_labels=expected[1:2], progress=False).images  # fmt: skip
    assert_same_pixels(to_uint8(alone)[0], pixels[1], "base image 1 alone vs in the CLI's batch of 3")
    png = tmp_path / "png"
    code, _, err = sample(
        capsys, checkpoints[0], "--flags", BASE_FLAGS, "-n", "3", "--out", png, "--seed", "4"
    )
    assert code == 0, err
    assert (png / "labels.txt").read_text() == "".join(f"{label}\n" for label in expected)


def test_upsampling_draws_image_i_from_base_image_i(checkpoints, base_npz, tmp_path, capsys):
    (archive,) = base_npz.glob("samples_*.npz")
    runs = {}
    for batch_size in (1, 3):
        out = tmp_path / f"up{batch_size}"
        code, _, err = sample(capsys, checkpoints[1], "--flags", UP_FLAGS, "--low-res", base_npz, "-n", "3",
                              "--batch-size", batch_size, "--out", out, "--format", "npz")  # fmt: skip
        assert code == 0, err
        (result,) = out.glob("samples_*.npz")
        with np.load(result) as saved:
            runs[batch_size] = saved["arr_0"], saved["arr_1"]
    assert runs[1][0].shape == (3, 256, 256, 3)
    assert_same_pixels(runs[1][0], runs[3][0], "upsampled in batches of 1 vs of 3")
    with np.load(archive) as base:
        assert np.array_equal(runs[1][1], base["arr_1"])  # the upsampled images keep their labels
        pixels, labels = base["arr_0"], base["arr_1"]
    flags = fastddpm.checkpoints.adm_flags.parse_flag_string(UP_FLAGS)
    pipe = fastddpm.load(checkpoints[1], **flags)
    image_2 = pipe(batch_size=1, sampler="ddpm", seed=0, noise="philox", sample_offset=2, output_type="np",
                   low_res=pixels[2:3], class_labels=labels[2:3], progress=False).images  # fmt: skip
    # a batch of 1 on both sides (the CLI's --batch-size 1 run): the same computation
    assert np.array_equal(to_uint8(image_2)[0], runs[1][0][2])
    # a base PNG folder (labels.txt beside the images) gives the same upsampled images
    png_base = tmp_path / "base_png"
    code, _, err = sample(capsys, checkpoints[0], "--flags", BASE_FLAGS, "-n", "3", "--out", png_base,
                          "--seed", "4")  # fmt: skip
    assert code == 0, err
    out = tmp_path / "up_from_png"
    code, _, err = sample(capsys, checkpoints[1], "--flags", UP_FLAGS, "--low-res", png_base, "-n", "2",
                          "--out", out)  # fmt: skip
    assert code == 0, err
    from PIL import Image

    png_pixels = np.asarray(Image.open(out / "000001.png"))
    assert_same_pixels(png_pixels, runs[1][0][1], "upsampled from PNGs in a batch of 2 vs alone")


@pytest.mark.parametrize(
    "case, message",
    [
        ("too_many", "--num 4 is more than the 3 images in --low-res"),
        ("missing", "--low-res is required: this checkpoint is an upsampler from 64 px"),
        ("not_an_upsampler", "--low-res applies to upsamplers"),
        ("no_such_file", "no such file or folder"),
        ("wrong_size", "holds 32 x 32 images; this upsampler takes 64 x 64"),
        ("no_labels", "has no class labels (arr_1 in an npz, labels.txt in a folder)"),
        ("not_an_npz", "is not a readable npz"),
    ],
)
def test_bad_low_res_exits_2_with_one_line(case, message, checkpoints, base_npz, tmp_path, capsys):
    checkpoint, flags, low_res, num = checkpoints[1], UP_FLAGS, str(base_npz), 3
    if case == "too_many":
        num = 4
    elif case == "missing":
        low_res = None
    elif case == "not_an_upsampler":
        checkpoint, flags = checkpoints[0], BASE_FLAGS
    elif case == "no_such_file":
        low_res = str(tmp_path / "nothing.npz")
    elif case in ("wrong_size", "no_labels"):
        low_res = str(tmp_path / "base.npz")
        side = 32 if case == "wrong_size" else 64
        arrays = {"arr_0": np.zeros((3, side, side, 3), np.uint8)}
        if case == "wrong_size":
            arrays["arr_1"] = np.zeros(3, np.int64)
        np.savez(low_res, **arrays)
    elif case == "not_an_npz":
        low_res = str(tmp_path / "base.npz")
        (tmp_path / "base.npz").write_text("not an archive")
    argv = [checkpoint, "--flags", flags, "-n", num, "--out", tmp_path / "out"]
    argv += ["--low-res", low_res] if low_res is not None else []
    code, _, err = sample(capsys, *argv)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_low_res_set_fingerprint_guards_the_folder(checkpoints, base_npz, tmp_path, capsys):
    """A rerun into the same folder with another low-resolution set is refused by the manifest."""
    out = tmp_path / "up"
    code, _, err = sample(capsys, checkpoints[1], "--flags", UP_FLAGS, "--low-res", base_npz, "-n", "1",
                          "--out", out)  # fmt: skip
    assert code == 0, err
    other = tmp_path / "other.npz"
    with np.load(next(base_npz.glob("samples_*.npz"))) as base:
        np.savez(other, arr_0=255 - base["arr_0"], arr_1=base["arr_1"])
    code, _, err = sample(capsys, checkpoints[1], "--flags", UP_FLAGS, "--low-res", other, "-n", "1",
                          "--out", out)  # fmt: skip
    assert code == 2 and "low_res_sha256" in err, err
    assert (out / "000000.png").exists()  # the first run's image is kept
