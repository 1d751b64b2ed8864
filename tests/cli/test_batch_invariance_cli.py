"""The README's promise at the scale users run it: 256 images of the built-in model are the same files for
--batch-size 1, 7 and 64, on one or two threads, and from two torchrun processes (fastddpm.models.
batch_invariant). DDPM, so every step draws noise. Before the batch-invariant mode, files differed between
batch sizes on an Intel Xeon (AVX-512); here every float image is bit-identical, so no file can differ on
any CPU the extension is built for."""

from __future__ import annotations

import pytest
import torch

from fastddpm.ops import backend_ext
from tests.cli.test_cli import folder_bytes, run_in_process
from tests.cli.test_torchrun import torchrun

NUM = 256
RUN = ["--sampler", "ddpm", "--steps", "10", "--seed", "19"]


@pytest.mark.skipif(not backend_ext.cpu_kernels_usable(), reason="fastddpm._C's CPU kernels are not built")
def test_256_images_are_the_same_files_for_every_batch_size_and_process_count(tmp_path, capsys):
    folders = {}
    for batch, threads in [(1, 1), (7, 1), (64, 2)]:
        folder = tmp_path / f"batch{batch}"
        torch.set_num_threads(threads)  # tests/conftest.py restores the thread count afterwards
        code, _, err = run_in_process(
            ["sample", "-n", str(NUM), "--batch-size", str(batch), "--out", str(folder), *RUN], capsys
        )
        assert code == 0, err
        folders[batch] = folder_bytes(folder)
    torchrun("-n", NUM, "--batch-size", 64, "--out", tmp_path / "torchrun", *RUN)
    folders["torchrun"] = folder_bytes(tmp_path / "torchrun")

    reference = folders[1]
    assert len(reference) == NUM
    assert len(set(reference.values())) == NUM, "every image must differ from the others"
    for name, files in folders.items():
        differing = [f for f in reference if files.get(f) != reference[f]]
        assert not differing, (
            f"{name}: {len(differing)} of {NUM} files differ from batch 1, first {differing[:3]}"
        )
