"""Growing a sample folder: a rerun with a larger N and otherwise equal settings draws only the new indices."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.cli.test_cli import TINY, assert_same_images, folder_bytes, run_in_process, summary_of


def sample(capsys, out, num: int, *extra: str) -> tuple[int, str, str]:
    return run_in_process(
        ["sample", "--num", str(num), "--batch-size", "2", "--out", str(out), *TINY, *extra], capsys
    )


def test_growing_a_png_folder_gives_the_files_of_a_fresh_run(tmp_path, capsys):
    grown, fresh = tmp_path / "grown", tmp_path / "fresh"
    assert sample(capsys, grown, 3)[0] == 0
    first = folder_bytes(grown)
    code, stdout, stderr = sample(capsys, grown, 5)
    assert code == 0, stderr
    summary = summary_of(stdout)
    assert (summary["images"], summary["skipped"]) == (2, 3), "only indices 3 and 4 are new"
    assert sample(capsys, fresh, 5)[0] == 0
    assert_same_images(folder_bytes(grown), folder_bytes(fresh))  # images 3, 4: other batches there
    assert {name: folder_bytes(grown)[name] for name in first} == first, "images 0..2 were not redrawn"
    manifest = json.loads((grown / "fastddpm_manifest.json").read_text())
    assert manifest["settings"] == json.loads((fresh / "fastddpm_manifest.json").read_text())["settings"]


def test_growing_an_npz_folder_gives_the_npz_of_a_fresh_run(tmp_path, capsys):
    grown, fresh = tmp_path / "grown", tmp_path / "fresh"
    assert sample(capsys, grown, 3, "--format", "npz")[0] == 0
    code, stdout, stderr = sample(capsys, grown, 5, "--format", "npz", "--grid", str(tmp_path / "grid.png"))
    assert code == 0, stderr
    assert (summary_of(stdout)["images"], summary_of(stdout)["skipped"]) == (2, 3)
    assert sample(capsys, fresh, 5, "--format", "npz")[0] == 0
    assert sorted(os.listdir(grown)) == ["fastddpm_manifest.json", "samples_5x8x8x1.npz"], (
        "the 3-image npz is gone"
    )
    assert_same_images(folder_bytes(grown), folder_bytes(fresh))
    with np.load(grown / "samples_5x8x8x1.npz") as archive:
        assert archive["arr_0"].shape == (5, 8, 8, 1)


def test_shrinking_or_growing_with_other_settings_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    assert sample(capsys, out, 3)[0] == 0
    before = folder_bytes(out)
    for extra, expected in [((), "num 3 there, 2 here"), (("--seed", "8"), "seed 7 there, 8 here")]:
        num = 2 if not extra else 5
        code, stdout, stderr = sample(capsys, out, num, *extra)
        assert code == 2 and stdout == "" and len(stderr.splitlines()) == 1 and expected in stderr, stderr
    assert folder_bytes(out) == before
    manifest = json.loads((out / "fastddpm_manifest.json").read_text())
    assert manifest["settings"]["num"] == 3


def test_png_names_that_would_get_longer_refuse_growth(tmp_path):
    from fastddpm.cli.manifest import ManifestMismatch, check_or_write_manifest
    from fastddpm.cli.sample_writer import PngFolder

    settings = {"num": 1_000_000, "seed": 0}
    assert check_or_write_manifest(str(tmp_path), settings, {}, False) is None
    grown = {**settings, "num": 1_000_001}  # 7-digit names: 000000.png ... would be looked for as 0000000.png
    with pytest.raises(ManifestMismatch, match="from 6 to 7 digits"):
        check_or_write_manifest(
            str(tmp_path), grown, {}, True, PngFolder(str(tmp_path), 1_000_001).growth_refused
        )
    assert check_or_write_manifest(str(tmp_path), settings, {}, True) == 1_000_000  # a plain resume
