"""A sampling run killed with SIGKILL mid-way, then rerun, gives exactly the uninterrupted result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.cli.test_cli import (
    REPO_ROOT,
    assert_same_images,
    cli_env,
    folder_bytes,
    run_cli,
    run_in_process,
    summary_of,
)

# Enough steps that one image takes a noticeable time at batch size 1, so the kill lands mid-run.
SETTINGS = ["--sampler", "ddim", "--steps", "40", "--eta", "0.5", "--seed", "3"]
NUM = 6


def kill_after_images(out, images: int, args: list[str]) -> None:
    """Start `fastddpm sample`, SIGKILL it as soon as ``images`` PNGs are complete."""
    process = subprocess.Popen(
        [sys.executable, "-m", "fastddpm.cli", "sample", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cli_env(),
        cwd=REPO_ROOT,
    )
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if os.path.isdir(out) and sum(n.endswith(".png") for n in os.listdir(out)) >= images:
                break
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def draw_uninterrupted(capsys, *args) -> None:
    """The reference result, drawn in this process (no interpreter start-up to pay)."""
    code, _, err = run_in_process(["sample", *map(str, args)], capsys)
    assert code == 0, err


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, capsys):
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    draw_uninterrupted(capsys, "--num", NUM, "--batch-size", 3, "--out", uninterrupted, *SETTINGS)

    kill_after_images(
        interrupted, 2, ["--num", str(NUM), "--batch-size", "1", "--out", str(interrupted), *SETTINGS]
    )
    written = sorted(n for n in os.listdir(interrupted) if n.endswith(".png"))
    assert 2 <= len(written) < NUM, f"the kill should land mid-run, the folder holds {written}"

    summary = summary_of(run_cli("sample", "--num", NUM, "--batch-size", 1, "--out", interrupted, *SETTINGS))
    assert summary["skipped"] == len(written) and summary["images"] == NUM - len(written)
    assert_same_images(folder_bytes(interrupted), folder_bytes(uninterrupted))  # batches of 1 vs of 3
    assert not [n for n in os.listdir(interrupted) if n.endswith(".tmp")], "temporary files left behind"


def test_killed_npz_run_resumes_to_the_uninterrupted_npz(tmp_path, capsys):
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    draw_uninterrupted(
        capsys, "--num", NUM, "--batch-size", 6, "--format", "npz", "--out", uninterrupted, *SETTINGS
    )

    args = ["--num", str(NUM), "--batch-size", "1", "--format", "npz", "--out", str(interrupted), *SETTINGS]
    parts = interrupted / ".fastddpm_parts"
    process = subprocess.Popen(
        [sys.executable, "-m", "fastddpm.cli", "sample", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cli_env(),
        cwd=REPO_ROOT,
    )
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if parts.is_dir() and sum(n.endswith(".npy") for n in os.listdir(parts)) >= 2:
                break
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not any(n.endswith(".npz") for n in os.listdir(interrupted)), (
        "the kill should land before assembly"
    )

    summary = summary_of(run_cli("sample", *args))
    assert 0 < summary["images"] <= NUM - 2
    assert_same_images(folder_bytes(interrupted), folder_bytes(uninterrupted))  # batches of 1 vs of 6
    assert not parts.exists()
