"""A Hub id on the command line is resolved as fastddpm.load resolves it, offline, from a fake Hub cache."""

from __future__ import annotations

import json

import pytest

from tests.cli.test_cli import folder_bytes, run_in_process
from tests.model_factory import random_unet, save_hub_cache, small_cifar10_config

pytest.importorskip("diffusers")
HUB_ID = "google/ddpm-cifar10-32"
SETTINGS = ["--num", "2", "--batch-size", "2", "--steps", "2", "--seed", "5"]


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """The flat google/ddpm-* layout, legacy attention names included, as huggingface_hub caches it."""
    model = random_unet(small_cifar10_config(block_out_channels=[16, 16, 32, 32], sample_size=8), seed=1)
    snapshot = save_hub_cache(model, tmp_path / "hub", HUB_ID, legacy_attention_names=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return snapshot


def test_sample_takes_a_hub_id_and_draws_what_the_snapshot_folder_draws(hub_cache, tmp_path, capsys):
    code, stdout, stderr = run_in_process(
        ["sample", HUB_ID, *SETTINGS, "--out", str(tmp_path / "by_id")], capsys
    )
    assert code == 0, stderr
    assert json.loads(stdout)["checkpoint"] == str(hub_cache)
    code, _, stderr = run_in_process(
        ["sample", str(hub_cache), *SETTINGS, "--out", str(tmp_path / "by_path")], capsys
    )
    assert code == 0, stderr
    by_id = folder_bytes(tmp_path / "by_id")
    assert len(by_id) == 2 and by_id == folder_bytes(tmp_path / "by_path")


def test_info_takes_a_hub_id(hub_cache, capsys):
    code, stdout, stderr = run_in_process(["info", HUB_ID, "--json"], capsys)
    assert code == 0, stderr
    info = json.loads(stdout)
    assert info["checkpoint"] == str(hub_cache) and info["sample_shape"] == [3, 8, 8]


def test_a_hub_id_missing_from_the_cache_is_one_line_ending_in_a_whole_sentence(hub_cache, tmp_path, capsys):
    code, stdout, stderr = run_in_process(
        ["sample", "google/ddpm-not-cached", "--num", "1", "--out", str(tmp_path / "o")], capsys
    )
    assert code == 2 and stdout == "" and len(stderr.splitlines()) == 1
    assert "google/ddpm-not-cached" in stderr and "the local Hub cache (offline)" in stderr
    # huggingface_hub's message, up to its first full stop (it used to be cut at 160 characters, mid-word).
    assert stderr.rstrip().endswith("outgoing traffic has been disabled.)"), stderr
    assert not (tmp_path / "o").exists()
