"""Every subcommand on every checkpoint kind: sample, info, convert and bench on a diffusers folder, the
google/ddpm-* flat layout, an original DDPM checkpoint, an ADM .pt with --flags, and a Hub id (offline, from
a fake Hub cache). Each must answer as a user expects, not end in a traceback."""

from __future__ import annotations

import json

import pytest
import torch

from tests.adm_checkpoint import reference_model, save_checkpoint
from tests.adm_families import FAMILIES
from tests.cli.test_cli import run_in_process
from tests.model_factory import random_fastddpm_unet, save_flat_folder, save_hub_cache, small_cifar10_config
from tests.original_ddpm_model import random_original_model

HUB_ID = "google/ddpm-cifar10-32"
# the family diffusers' UNet2DModel can express (first channel multiplier 1, one head size), at 16 px
ADM_FLAGS = FAMILIES["improved_lsun"][0].replace("--image_size 256", "--image_size 32")
KINDS = ["diffusers", "flat", "original", "adm", "hub"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """kind -> (CHECKPOINT argument, extra arguments) for each kind, written once."""
    from fastddpm.pipeline import Pipeline

    root = tmp_path_factory.mktemp("kinds")
    unet = random_fastddpm_unet(
        small_cifar10_config(block_out_channels=[16, 16, 32, 32], sample_size=8), seed=1
    )
    Pipeline(unet, {"num_train_timesteps": 1000}).save_pretrained(root / "diffusers")
    save_flat_folder(unet, root / "flat", legacy_attention_names=True)
    save_hub_cache(unet, root / "hub", HUB_ID)
    original = random_original_model(
        seed=2,
        ch=32,
        out_ch=3,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(8,),
        in_channels=3,
        resolution=16,
    )
    torch.save(original.state_dict(), root / "original.ckpt")
    model, _, _, _ = reference_model("improved_lsun", extra_flags="--image_size 32")
    adm = save_checkpoint(model, root / "lsun.pt")
    return {
        "diffusers": (str(root / "diffusers"), []),
        "flat": (str(root / "flat"), []),
        "original": (str(root / "original.ckpt"), []),
        "adm": (str(adm), ["--flags", ADM_FLAGS]),
        "hub": (HUB_ID, []),
        "hub_cache": str(root / "hub"),
    }


@pytest.fixture
def kind_args(checkpoints, request, monkeypatch):
    if (
        request.param == "hub"
    ):  # resolving a Hub id needs huggingface_hub (the GPU image has it; not every venv)
        pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_CACHE", checkpoints["hub_cache"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return checkpoints[request.param]


@pytest.mark.parametrize("kind_args", KINDS, indirect=True)
@pytest.mark.parametrize("sampler", ["ddim", "dpm++2m"])
def test_sample(kind_args, sampler, tmp_path, capsys):
    checkpoint, extra = kind_args
    out = tmp_path / "images"
    argv = ["sample", checkpoint, *extra, "-n", "2", "--batch-size", "2", "--steps", "2", "--out", str(out)]
    code, stdout, stderr = run_in_process([*argv, "--sampler", sampler, "--device", "cpu"], capsys)
    assert code == 0, stderr
    assert json.loads(stdout)["images"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "fastddpm_manifest.json"]


@pytest.mark.parametrize("kind_args", KINDS, indirect=True)
def test_info(kind_args, capsys):
    checkpoint, extra = kind_args
    code, stdout, stderr = run_in_process(["info", checkpoint, *extra, "--json"], capsys)
    assert code == 0, stderr
    info = json.loads(stdout)
    assert info["parameters"] > 0 and info["gflop_per_step"] > 0


@pytest.mark.parametrize("kind_args", KINDS, indirect=True)
def test_convert_then_sample_the_folder(kind_args, tmp_path, capsys):
    """convert writes a diffusers folder that samples what the source samples (float images equal: the
    same net in the same layout; ADM's ddim on its own process vs diffusers' DDIM differ, so ddpm/dpm++2m
    are not compared there, only that the folder loads and samples)."""
    import fastddpm

    checkpoint, extra = kind_args
    destination = tmp_path / "converted"
    code, stdout, stderr = run_in_process(["convert", checkpoint, str(destination), *extra], capsys)
    assert code == 0, stderr
    assert stdout.startswith(f"wrote {destination}: a diffusers pipeline folder")
    converted = fastddpm.load(destination)
    run = dict(
        batch_size=2, num_inference_steps=2, sampler="dpm++2m", seed=3, noise="philox", output_type="pt"
    )
    images = converted(progress=False, **run).images
    assert images.shape[0] == 2 and torch.isfinite(images).all()
    if not extra:  # not ADM: the source as fastddpm loads it draws the same float images
        assert torch.equal(images, fastddpm.load(checkpoint)(progress=False, **run).images)


@pytest.mark.parametrize("kind_args", KINDS, indirect=True)
def test_bench(kind_args, capsys):
    checkpoint, extra = kind_args
    argv = ["bench", checkpoint, *extra, "--steps", "2", "--batch-size", "1", "--repeats", "1", "--json"]
    code, stdout, stderr = run_in_process([*argv, "--device", "cpu"], capsys)
    assert code == 0, stderr
    result = json.loads(stdout)
    engines = [row["engine"] for row in result["results"]]
    if extra:  # ADM: OpenAI's code is the reference, and it is not installed: said in one line
        assert engines == ["fastddpm"] and result["reference"].startswith("no reference: an ADM checkpoint")
        code, stdout, _ = run_in_process(argv[:-1] + ["--device", "cpu"], capsys)
        assert code == 0 and stdout.strip().splitlines()[-1].startswith("no reference:")
    else:
        pytest.importorskip("diffusers")
        assert engines == ["fastddpm", "diffusers"] and result["reference"] == "diffusers"
        # measured (DDIM, 2 steps): 1.6e-6 on the diffusers / flat / Hub net, 1.1e-5 on the original DDPM net
        assert result["max_image_diff_vs_diffusers"] < 5e-5


@pytest.fixture
def standin_guided_diffusion(monkeypatch):
    """OpenAI's guided_diffusion as if installed: a stand-in on tests/adm_reference.py (theirs is not a
    package this machine can install; checked by hand against their code: fastddpm vs their p_sample_loop
    5.3e-6, ddim_sample_loop 3.3e-6 on this family, 4 steps, batch 2)."""
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parent / "openai_standin"))
    yield
    sys.modules.pop("guided_diffusion.script_util", None)
    sys.modules.pop("guided_diffusion", None)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_bench_on_adm_compares_with_openais_code_where_it_is_installed(
    sampler, tmp_path, capsys, standin_guided_diffusion
):
    text, _ = FAMILIES["improved_cifar10"]
    model, _, _, _ = reference_model("improved_cifar10", seed=3)
    path = str(save_checkpoint(model, tmp_path / "cifar10.pt"))
    argv = ["bench", path, "--flags", text, "--sampler", sampler, "--steps", "4", "--batch-size", "2"]
    code, stdout, stderr = run_in_process([*argv, "--repeats", "1", "--json", "--device", "cpu"], capsys)
    assert code == 0, stderr
    result = json.loads(stdout)
    assert [row["engine"] for row in result["results"]] == ["fastddpm", "openai"] and result[
        "reference"
    ] == "openai"
    # the same noise draws and respaced process: measured 5.3e-6 (ddpm) and 3.3e-6 (ddim), as with their code
    assert result["max_image_diff_vs_openai"] < 2e-5
    code, stdout, _ = run_in_process(
        [*argv[:6], "--sampler", "dpm++2m", *argv[8:], "--repeats", "1", "--device", "cpu"], capsys
    )
    assert (
        code == 0
        and stdout.strip().splitlines()[-1]
        == "no reference: OpenAI's code samples with ddpm and ddim only, not dpm++2m"
    )
