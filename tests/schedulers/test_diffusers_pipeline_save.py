"""A diffusers pipeline holding a fastddpm scheduler saves with diffusers' save_pretrained and reloads with
DiffusionPipeline.from_pretrained into the same class and config, giving the same images
(fastddpm/schedulers/diffusers_interop.py). Before, diffusers logged "... cannot be saved", wrote
[null, null] for the scheduler and could not load the folder."""

import inspect
import json
import subprocess
import sys

import pytest
import torch

import fastddpm
from fastddpm.sampler_registry import SCHEDULER_MODULES
from tests import model_factory

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def tiny_unet():
    config = model_factory.small_cifar10_config(
        sample_size=8, block_out_channels=[8, 16, 16, 16], norm_num_groups=4
    )
    return model_factory.random_unet(config, seed=0)


def images(pipe) -> torch.Tensor:
    """diffusers' standard loop with the pipeline's U-Net and scheduler (DDPMPipeline's own __call__ passes a
    generator to step(), which PNDM, UniPC, Heun and DEIS do not take, in diffusers as here)."""
    unet, scheduler = pipe.unet, pipe.scheduler
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # DPMSolverSDE seeds its Brownian tree from the global RNG (noise_sampler_seed None)
    scheduler.set_timesteps(4)
    x = torch.randn(2, 3, 8, 8, generator=generator) * scheduler.init_noise_sigma
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    with torch.no_grad():
        for t in scheduler.timesteps:
            output = unet(scheduler.scale_model_input(x, t), t).sample
            extra = {"generator": generator} if takes_generator else {}
            x = scheduler.step(output, t, x, **extra).prev_sample
    return x


def public_config(scheduler) -> dict:
    return {k: v for k, v in scheduler.config.items() if k != "_use_default_values"}


@pytest.mark.parametrize("name", list(SCHEDULER_MODULES))
def test_a_pipeline_with_a_fastddpm_scheduler_saves_and_reloads(name, tiny_unet, tmp_path):
    scheduler = getattr(fastddpm, name).from_config(
        model_factory.ddpm_scheduler_config(num_train_timesteps=50)
    )
    pipe = diffusers.DDPMPipeline(tiny_unet, scheduler)
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scheduler"] == ["fastddpm", name]
    again = diffusers.DiffusionPipeline.from_pretrained(tmp_path)
    assert type(again.scheduler) is type(scheduler)
    assert public_config(again.scheduler) == public_config(scheduler)
    # The same images as the saved scheduler gives with the reloaded U-Net (the U-Net reloaded from
    # safetensors can itself differ from the in-memory one by an ulp: oneDNN's choices, not the scheduler's).
    before = images(diffusers.DDPMPipeline(again.unet, scheduler))
    after = images(again)
    assert torch.equal(after, before), float((after - before).abs().max())


def test_a_fresh_process_loads_the_folder_once_fastddpm_is_imported(tiny_unet, tmp_path):
    # diffusers imports no library a folder names that the user has not imported (its rule, 0.42).
    scheduler = fastddpm.UniPCMultistepScheduler.from_config(model_factory.ddpm_scheduler_config())
    diffusers.DDPMPipeline(tiny_unet, scheduler).save_pretrained(tmp_path)
    code = (
        "import fastddpm\nfrom diffusers import DiffusionPipeline\n"
        f"pipe = DiffusionPipeline.from_pretrained({str(tmp_path)!r})\n"
        "print(type(pipe.scheduler).__module__, type(pipe.scheduler).__name__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["fastddpm.schedulers.unipc", "UniPCMultistepScheduler"]


def test_fastddpm_never_imports_diffusers_itself():
    code = (
        "import sys, fastddpm\nscheduler = fastddpm.DPMSolverMultistepScheduler()\n"
        "fastddpm.load(None)(batch_size=1, num_inference_steps=2, progress=False)\n"
        "assert 'diffusers' not in sys.modules, 'fastddpm imported diffusers'\nprint('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
