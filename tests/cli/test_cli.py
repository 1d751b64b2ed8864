"""The command line, driven as users drive it: `python -m fastddpm.cli` in a subprocess.

Every run is tiny (the embedded 8x8 digits model, a handful of images, DDIM with few steps) so the file
stays within seconds per test on two CPU cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--sampler", "ddim", "--steps", "10", "--seed", "7"]


def cli_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    # One thread per process: runs in parallel test workers and torchrun pairs must not oversubscribe.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_cli(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "fastddpm.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=REPO_ROOT,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"fastddpm {' '.join(map(str, args))} exited {result.returncode}:\n{result.stderr}"
        )
    return result


def run_in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    """main(argv) in this process, on this process's torch thread count (one, tests/conftest.py), restored
    afterwards: the CLI's default (every core) would have OpenMP threads spin on a busy machine."""
    import torch

    from fastddpm.cli import main

    threads, environment = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    finally:
        torch.set_num_threads(threads)
        if environment is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = environment
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def summary_of(result: subprocess.CompletedProcess | str) -> dict:
    stdout = result if isinstance(result, str) else result.stdout
    lines = stdout.splitlines()
    assert len(lines) == 1, f"stdout must be exactly the JSON summary line, got {stdout!r}"
    return json.loads(lines[0])


def folder_bytes(folder) -> dict[str, bytes]:
    """Every non-hidden file of a sample folder except the manifest, by name."""
    return {
        name: open(os.path.join(folder, name), "rb").read()
        for name in sorted(os.listdir(folder))
        if not name.startswith(".") and name != "fastddpm_manifest.json"
    }


# Two runs that split the images into other batches (or processes) compute each image the same way only where
# fastddpm._C's CPU kernels serve (fastddpm.models.batch_invariant): then the files are byte for byte the
# same. Where they do not (an extension built for another instruction set), oneDNN / MKL choose their
# kernels by batch: different computations, float images up to ~1.5e-4 apart (tests/test_adm_upsampling.py),
# under the 1/255 of a level, so round(255 x) moves by one level at most. Measured on an Intel Xeon with the
# AVX-512 extension refused (ATEN_CPU_CAPABILITY=avx2 / default): 25 / 18 of 589,824 upsampled pixels one
# level apart (tests/cli/test_upsampler_cli.py), none of the 8x8 digits.
BATCH_VARIANT_PIXEL_LEVELS = 1


def _decoded(name: str, data: bytes) -> dict[str, np.ndarray] | bytes:
    """A sample folder's file as its arrays (a PNG's pixels, an npz's arrays), or its bytes."""
    import io

    if name.endswith(".png"):
        from PIL import Image

        return {"pixels": np.asarray(Image.open(io.BytesIO(data)))}
    if name.endswith(".npz"):
        with np.load(io.BytesIO(data)) as archive:
            return {key: archive[key] for key in archive.files}
    return data


def assert_same_pixels(actual: np.ndarray, expected: np.ndarray, what: str = "") -> None:
    """uint8 images drawn in other batches: equal where the batch-invariant kernels serve, else within
    BATCH_VARIANT_PIXEL_LEVELS."""
    from fastddpm.ops import backend_ext

    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    if backend_ext.cpu_kernels_usable():
        assert np.array_equal(actual, expected), what
        return
    levels = np.abs(actual.astype(np.int16) - expected.astype(np.int16))
    assert int(levels.max()) <= BATCH_VARIANT_PIXEL_LEVELS, (
        f"{what}: {int((levels > BATCH_VARIANT_PIXEL_LEVELS).sum())} pixels differ by more than "
        f"{BATCH_VARIANT_PIXEL_LEVELS} (max {int(levels.max())})"
    )


def assert_same_images(actual: dict[str, bytes], expected: dict[str, bytes]) -> None:
    """Two folders' files (folder_bytes) drawn with other batch sizes or process counts: the same bytes where
    the batch-invariant kernels serve, else the same files with pixels within BATCH_VARIANT_PIXEL_LEVELS (an
    npz's labels and every other file still byte for byte)."""
    from fastddpm.ops import backend_ext

    assert sorted(actual) == sorted(expected)
    if backend_ext.cpu_kernels_usable():
        differing = [name for name in expected if actual[name] != expected[name]]
        assert not differing, f"{len(differing)} of {len(expected)} files differ, first {differing[:3]}"
        return
    for name in expected:
        a, e = _decoded(name, actual[name]), _decoded(name, expected[name])
        if isinstance(e, bytes):
            assert a == e, name
            continue
        assert sorted(a) == sorted(e), name
        for key in e:
            if key in ("pixels", "arr_0"):
                assert_same_pixels(a[key], e[key], f"{name} {key}")
            else:
                assert np.array_equal(a[key], e[key]), f"{name} {key}"


def png_pixels(folder, count: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(os.path.join(folder, f"{i:06d}.png"))) for i in range(count)])


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """8 images in one batch: the result every other way of drawing them must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    result = run_cli("sample", "--num", 8, "--batch-size", 8, "--out", out, "--grid", out / "grid.png", *TINY)
    return out, summary_of(result)


def test_sample_writes_pngs_and_a_one_line_summary(reference_run):
    out, summary = reference_run
    names = sorted(os.listdir(out))
    assert [n for n in names if n.endswith(".png") and n != "grid.png"] == [f"{i:06d}.png" for i in range(8)]
    assert "fastddpm_manifest.json" in names
    assert not [n for n in names if n.endswith(".tmp")]
    assert summary["images"] == 8 and summary["skipped"] == 0
    assert (summary["sampler"], summary["steps"], summary["seed"]) == ("ddim", 10, 7)
    assert summary["checkpoint"].endswith("default_model") and summary["images_per_s"] > 0
    assert summary["threads"] == int(cli_env()["OMP_NUM_THREADS"])  # 1 from cli_env() unless set outside
    pixels = png_pixels(out, 8)
    assert pixels.shape == (8, 8, 8) and pixels.dtype == np.uint8
    assert len({p.tobytes() for p in pixels}) == 8, "different indices must give different images"
    from PIL import Image

    grid = Image.open(out / "grid.png")
    # 8 images: 3 x 3 tiles of 8 px with 2 px gaps = 32 px, scaled 16 x by default to 512 px.
    assert grid.size == (512, 512)
    tiles = np.asarray(grid)[::16, ::16]  # nearest-neighbour scaling: every 16th pixel is the unscaled grid
    np.testing.assert_array_equal(tiles[2:10, 2:10], pixels[0])
    np.testing.assert_array_equal(tiles[22:30, 12:20], pixels[7])


@pytest.mark.parametrize("batch_size", [1, 3])
def test_files_are_identical_for_any_batch_size(reference_run, tmp_path, batch_size):
    reference, _ = reference_run
    run_cli("sample", "--num", 8, "--batch-size", batch_size, "--out", tmp_path, *TINY)
    expected = {k: v for k, v in folder_bytes(reference).items() if k != "grid.png"}
    assert_same_images(folder_bytes(tmp_path), expected)


def test_rerun_of_a_complete_folder_draws_nothing(reference_run, capsys):
    out, _ = reference_run
    before = folder_bytes(out)
    code, stdout, _ = run_in_process(
        ["sample", "--num", "8", "--batch-size", "5", "--out", str(out), *TINY], capsys
    )
    summary = summary_of(stdout)
    assert code == 0 and summary["images"] == 0 and summary["skipped"] == 8
    assert folder_bytes(out) == before


def test_npz_holds_the_same_images_as_uint8_nhwc(reference_run, tmp_path):
    reference, _ = reference_run
    summary = summary_of(
        run_cli("sample", "--num", 8, "--batch-size", 3, "--format", "npz", "--out", tmp_path, *TINY)
    )
    assert summary["out"] == str(tmp_path / "samples_8x8x8x1.npz")
    assert sorted(os.listdir(tmp_path)) == ["fastddpm_manifest.json", "samples_8x8x8x1.npz"]
    with np.load(summary["out"]) as archive:
        assert list(archive.keys()) == ["arr_0"]
        images = archive["arr_0"]
    assert images.dtype == np.uint8 and images.shape == (8, 8, 8, 1)
    assert_same_pixels(images[..., 0], png_pixels(reference, 8), "npz (batches of 3) vs PNGs (a batch of 8)")


def test_rerun_with_other_settings_is_refused(reference_run, capsys):
    out, _ = reference_run
    before = folder_bytes(out)
    argv = ["sample", "--num", "8", "--out", str(out), "--sampler", "ddim", "--steps", "11", "--seed", "7"]
    code, stdout, stderr = run_in_process(argv, capsys)
    assert code == 2 and stdout == ""
    lines = stderr.splitlines()
    assert len(lines) == 1 and "other settings" in lines[0] and "steps 10 there, 11 here" in lines[0]
    assert folder_bytes(out) == before


def test_a_refused_schedule_leaves_the_folder_free_for_other_settings(tmp_path, capsys):
    """1000 dpm++2m steps on the digits model's 1000-step "leading" schedule repeat timestep 0 (diffusers
    gives NaN): one line, exit 2, and the folder, which holds no image, takes the next settings."""
    out = tmp_path / "out"
    argv = ["sample", "--num", "2", "--out", str(out), "--sampler", "dpm++2m", "--threads", "1"]
    code, stdout, stderr = run_in_process([*argv, "--steps", "1000"], capsys)
    assert code == 2 and stdout == "" and stderr.count("\n") == 1
    assert "with 1000 steps" in stderr and "has no finite update" in stderr and "use fewer steps" in stderr
    code, stdout, stderr = run_in_process([*argv, "--steps", "4"], capsys)
    assert code == 0, stderr
    assert sorted(os.listdir(out)) == ["000000.png", "000001.png", "fastddpm_manifest.json"]


def _corrupt_checkpoint(tmp_path) -> str:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json at all")
    return str(path)


def _corrupt_folder(tmp_path) -> str:
    folder = tmp_path / "broken_model"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text('{"sample_size": 8, "in_channels"')
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(os.urandom(64))
    return str(folder)


BAD_INPUTS = {
    "missing checkpoint": lambda tmp: ["sample", str(tmp / "nope"), "--num", "2", "--out", str(tmp / "o")],
    "corrupt checkpoint file": lambda tmp: [
        "sample",
        _corrupt_checkpoint(tmp),
        "--num",
        "2",
        "--out",
        str(tmp / "o"),
    ],
    "corrupt checkpoint folder": lambda tmp: [
        "sample",
        _corrupt_folder(tmp),
        "--num",
        "2",
        "--out",
        str(tmp / "o"),
    ],
    "unknown sampler": lambda tmp: ["sample", "--num", "2", "--out", str(tmp / "o"), "--sampler", "lcm"],
    "karras on a sampler without": lambda tmp: [
        "sample",
        "--num",
        "2",
        "--out",
        str(tmp / "o"),
        "--sampler",
        "euler-a",
        "--karras",
    ],  # fmt: skip
    "zero steps": lambda tmp: ["sample", "--num", "2", "--out", str(tmp / "o"), "--steps", "0"],
    "too many steps": lambda tmp: ["sample", "--num", "2", "--out", str(tmp / "o"), "--steps", "1001"],
    "zero images": lambda tmp: ["sample", "--num", "0", "--out", str(tmp / "o")],
    "negative images": lambda tmp: ["sample", "--num", "-3", "--out", str(tmp / "o")],
    "images not a number": lambda tmp: ["sample", "--num", "many", "--out", str(tmp / "o")],
    "seed too large": lambda tmp: ["sample", "--num", "2", "--out", str(tmp / "o"), "--seed", str(2**63)],
    "too many images": lambda tmp: ["sample", "--num", str(2**31 + 1), "--out", str(tmp / "o")],
    "eta out of range": lambda tmp: ["sample", "--num", "2", "--out", str(tmp / "o"), "--eta", "1.5"],
    "unwritable folder": lambda tmp: ["sample", "--num", "2", "--out", str(_a_file(tmp) / "sub")],
    "unknown dtype": lambda tmp: ["sample", "--num", "2", "--out", str(tmp / "o"), "--dtype", "float8"],
    "unknown command": lambda tmp: ["draw", "--num", "2"],
    "grid format unknown": lambda tmp: ["sample", "--num", "2", "--out", str(tmp / "o"), "--grid", "g.xyz"],
    "grid is a folder": lambda tmp: ["sample", "--num", "2", "--out", str(tmp / "o"), "--grid", str(tmp)],
    "eta with ddpm": lambda tmp: [
        "sample",
        "--num",
        "2",
        "--out",
        str(tmp / "o"),
        "--sampler",
        "ddpm",
        "--eta",
        "0.5",
    ],
    "threads zero": lambda tmp: ["sample", "--num", "2", "--out", str(tmp / "o"), "--threads", "0"],
    "info of a missing checkpoint": lambda tmp: ["info", str(tmp / "nope")],
    "convert of a corrupt checkpoint": lambda tmp: ["convert", _corrupt_checkpoint(tmp), str(tmp / "dst")],
}


def _a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


# Each subprocess pays a torch import (seconds on a loaded 2-core machine): these cases run as real processes,
# the rest through main() in this process, which prints and exits exactly as the console script does.
IN_SUBPROCESS = {"corrupt checkpoint folder", "unknown sampler", "grid format unknown"}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, case):
    argv = BAD_INPUTS[case](tmp_path)
    if case in IN_SUBPROCESS:
        result = run_cli(*argv, check=False, timeout=120)
        code, out, err = result.returncode, result.stdout, result.stderr
    else:
        code, out, err = run_in_process(argv, capsys)
    assert code == 2, f"{case}: exit {code}, stderr {err!r}"
    lines = err.splitlines()
    assert len(lines) == 1, f"{case}: stderr must be one line, got {err!r}"
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / "o").exists(), f"{case}: created the output folder"


def test_bad_grid_and_eta_say_which_argument_is_wrong(tmp_path, capsys):
    argv = BAD_INPUTS["grid format unknown"](tmp_path)
    assert ".xyz is not an image format" in run_in_process(argv, capsys)[2]
    argv = BAD_INPUTS["eta with ddpm"](tmp_path)
    assert "--eta 0.5 applies to --sampler ddim only" in run_in_process(argv, capsys)[2]


def test_missing_checkpoint_gets_one_message_from_every_command(tmp_path, capsys):
    missing = str(tmp_path / "nope")
    messages = {
        command: run_in_process(argv, capsys)[2].split(": ", 1)[1]
        for command, argv in {
            "info": ["info", missing],
            "sample": ["sample", missing, "--num", "2", "--out", str(tmp_path / "o")],
            "bench": ["bench", missing],
        }.items()
    }
    assert len(set(messages.values())) == 1, messages
    assert (
        messages["info"] == f"checkpoint {missing}: no such file or folder, and not a Hub id (owner/name)\n"
    )


def test_version_and_help(capsys):
    from fastddpm import __version__

    assert run_in_process(["--version"], capsys)[:2] == (0, f"fastddpm {__version__}\n")
    code, stdout, _ = run_in_process(["sample", "--help"], capsys)
    assert code == 0 and "missing folders are created" in " ".join(stdout.split())


def test_grid_creates_missing_folders_and_takes_its_format_from_its_name(reference_run, tmp_path, capsys):
    reference, _ = reference_run
    grid = tmp_path / "new" / "folders" / "grid.jpg"
    argv = ["sample", "--num", "8", "--batch-size", "8", "--out", str(reference), "--grid", str(grid)]
    assert run_in_process([*argv, "--grid-scale", "3", *TINY], capsys)[0] == 0
    from PIL import Image

    with Image.open(grid) as picture:
        assert picture.format == "JPEG" and picture.size == (3 * 32, 3 * 32)


def test_disk_full_keeps_completed_images_and_removes_the_temporary_file(tmp_path, capsys):
    from fastddpm.cli.sample_writer import temporary_name

    out = tmp_path / "out"
    out.mkdir()
    # The temporary file of image 3 is a link to /dev/full: writing it fails with ENOSPC, as on a full disk.
    os.symlink("/dev/full", temporary_name(str(out / "000003.png")))
    result = run_cli("sample", "--num", 6, "--batch-size", 2, "--out", out, *TINY, check=False)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0] and "000003.png" in lines[0]
    assert sorted(n for n in os.listdir(out) if not n.endswith(".json")) == [
        "000000.png",
        "000001.png",
        "000002.png",
    ]
    # The rerun finishes the folder; image 2 was written before the failure and is kept as it was.
    kept = (out / "000002.png").read_bytes()
    code, stdout, _ = run_in_process(
        ["sample", "--num", "6", "--batch-size", "2", "--out", str(out), *TINY], capsys
    )
    summary = summary_of(stdout)
    assert code == 0 and summary["images"] == 3 and (out / "000002.png").read_bytes() == kept


def test_info_counts_parameters_and_flops(capsys):
    code, stdout, _ = run_in_process(["info", "--json"], capsys)
    info = json.loads(stdout)
    assert code == 0
    from safetensors.torch import load_file

    from fastddpm.pipeline import DEFAULT_MODEL_DIR

    weights = load_file(os.path.join(DEFAULT_MODEL_DIR, "unet", "diffusion_pytorch_model.safetensors"))
    assert info["parameters"] == sum(t.numel() for t in weights.values())
    assert info["sample_shape"] == [1, 8, 8]
    assert info["scheduler"]["num_train_timesteps"] == 1000
    # The network's count, whatever algorithm fastddpm computes it with: diffusers' model, same counter.
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    diffusers = pytest.importorskip("diffusers")
    model = diffusers.UNet2DModel.from_pretrained(os.path.join(DEFAULT_MODEL_DIR, "unet")).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 1, 8, 8), 500)
    assert info["gflop_per_step"] == pytest.approx(counter.get_total_flops() / 1e9, rel=1e-9)


def test_convert_writes_a_folder_that_samples_identically(reference_run, tmp_path, capsys):
    from fastddpm.pipeline import DEFAULT_MODEL_DIR

    reference, _ = reference_run
    destination = tmp_path / "converted"
    code, stdout, _ = run_in_process(["convert", str(DEFAULT_MODEL_DIR), str(destination)], capsys)
    assert code == 0 and len(stdout.splitlines()) == 1
    assert (
        stdout.startswith(f"wrote {destination}: a diffusers pipeline folder (1,") and "1 x 8 x 8" in stdout
    )
    assert (destination / "model_index.json").exists()
    assert (destination / "unet" / "config.json").exists() and (destination / "scheduler").is_dir()
    # Every file gets the mode the umask gives a new file (safetensors alone used to write 0600).
    umask = os.umask(0)
    os.umask(umask)
    modes = {
        os.path.relpath(os.path.join(root, name), destination): os.stat(os.path.join(root, name)).st_mode
        & 0o777
        for root, _, names in os.walk(destination)
        for name in names
    }
    assert len(modes) == 4 and set(modes.values()) == {0o666 & ~umask}, modes
    argv = [
        "sample",
        str(destination),
        "--num",
        "8",
        "--batch-size",
        "8",
        "--out",
        str(tmp_path / "out"),
        *TINY,
    ]
    assert run_in_process(argv, capsys)[0] == 0
    expected = {k: v for k, v in folder_bytes(reference).items() if k != "grid.png"}
    # The same weights in the same network, one batch of 8 as the reference: the same computation.
    assert folder_bytes(tmp_path / "out") == expected
    code, _, err = run_in_process(["convert", str(DEFAULT_MODEL_DIR), str(destination)], capsys)
    assert code == 2 and "already exists" in err and len(err.splitlines()) == 1


def test_bench_prints_a_table_its_thread_count_and_image_parity(capsys):
    import torch

    pytest.importorskip("diffusers")  # the table's speed-ups and the parity line are against diffusers
    threads = torch.get_num_threads()
    argv = ["bench", "--batch-size", "2", "--steps", "2", "--repeats", "1", "--threads", "1"]
    try:
        code, stdout, _ = run_in_process(argv, capsys)
        lines = stdout.splitlines()
        assert code == 0 and "1 CPU threads" in lines[1]
        rows = {line.split()[0]: line.split() for line in lines[3:5]}
        assert set(rows) == {"fastddpm", "diffusers"}, stdout
        # The engines computed the same images (float32, same generator): measured 2.1e-06 on the default model.
        assert lines[5].startswith("images: fastddpm vs diffusers, same generator: max |diff| "), stdout
        assert float(lines[5].rsplit(" ", 1)[1]) <= 2e-5, lines[5]
        code, stdout, _ = run_in_process([*argv, "--json"], capsys)
    finally:
        torch.set_num_threads(threads)
    result = json.loads(stdout)
    assert code == 0 and result["threads"] == 1
    assert [row["engine"] for row in result["results"]] == ["fastddpm", "diffusers"]
    diffusers_seconds = result["results"][1]["seconds"]
    for row in result["results"]:  # batch 2, 2 steps
        assert row["seconds"] > 0
        assert row["images_per_s"] == pytest.approx(2 / row["seconds"])
        assert row["ms_per_step"] == pytest.approx(1000 * row["seconds"] / 2)
        assert row["speed_up"] == pytest.approx(diffusers_seconds / row["seconds"])
    assert result["max_image_diff_vs_diffusers"] <= 2e-5


@pytest.mark.parametrize(
    "sampler, extra",
    [("euler-a", []), ("unipc", ["--karras"]), ("heun", []), ("sa-solver", []), ("dpm-sde", [])],
)
def test_bench_runs_the_fast_samplers_against_diffusers_standard_loop(capsys, sampler, extra):
    """diffusers' side is its standard loop with its own scheduler class (init_noise_sigma and
    scale_model_input included): the images agree, so both engines ran the same sampler. Measured max
    |diff|: euler-a 4.8e-6, heun 1.3e-5, sa-solver 3.9e-6, unipc with Karras sigmas 3.7e-5 -- float32 rounding: on the same
    3 steps diffusers' own float32 loop is 7.0e-6 (heun) and 3.9e-5 (unipc, Karras) from its float64
    run, fastddpm 7.3e-6 and 3.2e-5. Neighbouring samplers differ by more than the bound: unipc vs
    dpm++2m 9.2e-3, dpm++2m vs deis 2.0e-2 on these 3 steps. dpm-sde (both sides seed the Brownian tree
    from the global RNG, which bench seeds before each): 6.6e-7; 0.80 without that seeding."""
    import torch

    pytest.importorskip("diffusers")
    threads = torch.get_num_threads()
    argv = ["bench", "--batch-size", "2", "--steps", "3", "--repeats", "1", "--threads", "1"]
    try:
        code, stdout, _ = run_in_process([*argv, "--sampler", sampler, *extra, "--json"], capsys)
    finally:
        torch.set_num_threads(threads)
    result = json.loads(stdout)
    assert code == 0 and result["sampler"] == sampler and result["karras"] == bool(extra)
    assert [row["engine"] for row in result["results"]] == ["fastddpm", "diffusers"]
    print(f"MEASURED {sampler}: {result['max_image_diff_vs_diffusers']:.2e}")
    assert result["max_image_diff_vs_diffusers"] <= 1e-4


def test_bench_refuses_karras_for_a_sampler_without_it(capsys):
    code, _, stderr = run_in_process(["bench", "--sampler", "pndm", "--karras", "--steps", "2"], capsys)
    assert code == 2 and stderr.count("\n") == 1 and "--karras: sampler pndm has no Karras sigmas" in stderr


def test_process_blocks_cover_every_index_once_and_resumed_batches_cut_where_the_first_run_did():
    from fastddpm.cli.sharding import batches, block_of

    for num, world in [(7, 2), (5, 3), (1, 4), (10, 1)]:
        covered = [i for rank in range(world) for i in range(*block_of(num, rank, world))]
        assert covered == list(range(num))
    assert batches(list(range(10)), 4) == [(0, 4), (4, 4), (8, 2)]
    # Killed after the first batch: the resumed run cuts the rest at the same places.
    assert batches(list(range(4, 10)), 4) == [(4, 4), (8, 2)]
    # Holes (images deleted by hand) split runs; no batch spans a hole.
    assert batches([0, 1, 2, 5, 6, 9], 2) == [(0, 2), (2, 1), (5, 2), (9, 1)]


def test_sampler_names_are_the_pipelines():
    from fastddpm.cli.main import SAMPLER_NAMES
    from fastddpm.schedulers import samplers

    assert SAMPLER_NAMES == samplers.NAMES


def test_sample_with_a_fast_sampler_and_karras(tmp_path, capsys):
    out = tmp_path / "dpm"
    argv = ["sample", "--num", "3", "--out", str(out), "--sampler", "dpm++2m", "--karras", "--steps", "4"]
    code, stdout, err = run_in_process(argv, capsys)
    assert code == 0, err
    assert summary_of(stdout)["sampler"] == "dpm++2m"
    assert len(list(out.glob("*.png"))) == 3
