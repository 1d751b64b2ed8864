"""Two torchrun processes (gloo, CPU) write exactly the files one process writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.cli.test_cli import REPO_ROOT, TINY, assert_same_images, cli_env, folder_bytes, run_in_process

NUM = 7  # odd: the two processes get blocks of 3 and 4


def torchrun(*args) -> subprocess.CompletedProcess:
    # -n, not --num: torchrun's own parser would take --num for an abbreviation of its --numa-binding.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run(
        [*command, "-m", "fastddpm.cli", "sample", *map(str, args)],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert result.returncode == 0, f"torchrun exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result


@pytest.mark.parametrize("output_format", ["png", "npz"])
def test_two_processes_write_what_one_process_writes(tmp_path, capsys, output_format):
    single, pair = tmp_path / "single", tmp_path / "pair"
    # The single-process result is drawn in this process: no interpreter start-up to pay for it.
    argv = [
        "sample",
        "-n",
        str(NUM),
        "--batch-size",
        "2",
        "--format",
        output_format,
        "--out",
        str(single),
        *TINY,
    ]
    assert run_in_process(argv, capsys)[0] == 0
    result = torchrun("-n", NUM, "--batch-size", 2, "--format", output_format, "--out", pair, *TINY)

    summaries = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1, f"only rank 0 prints the summary, stdout was {result.stdout!r}"
    assert summaries[0]["images"] == NUM and summaries[0]["processes"] == 2
    assert_same_images(folder_bytes(pair), folder_bytes(single))  # blocks of 3 and 4: other batches
    assert not [n for n in os.listdir(pair) if n.startswith(".")], "temporary or part files left behind"
