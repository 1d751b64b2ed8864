"""Small random diffusers UNet2DModels and the on-disk layouts fastddpm reads, for tests.

Configs (plain dicts, UNet2DModel fields):
    cifar10_config()          the exact google/ddpm-cifar10-32 U-Net config (35.7M parameters)
    small_cifar10_config()    its structure (block types, attention at 16x16, 2 layers) with few channels
    small_256_family_config() the google/ddpm-{church,bedroom,cat,celebahq}-256 structure (6 levels, attention
                              at one resolution), scaled down to 64 px and few channels
Models and files:
    random_unet(config, seed)            a diffusers UNet2DModel, eval mode, every weight random and
                                         non-trivial (GroupNorm weights and biases too)
    ddpm_scheduler_config(**overrides)   a DDPMScheduler config dict like the google/ddpm-* repositories'
    save_pipeline_folder(model, folder)  layout a: model_index.json, unet/, scheduler/ (DDPMPipeline)
    save_flat_folder(model, folder, legacy_attention_names=False, weights="safetensors")
                                         layout b: config.json + weights + scheduler_config.json in one folder
    save_hub_cache(model, cache, "owner/name")
                                         layout d: a huggingface_hub cache folder holding the flat layout
Fixture:
    one_cpu_thread                       import it into a test module to run its tests on one torch thread
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module", autouse=False)
def one_cpu_thread():
    """torch on one thread for the module's tests, restored afterwards.

    These tests run tiny shapes on a 2-core machine shared by other processes: there, a second OpenMP thread
    only waits for the first. Measured: one small U-Net parity check took 5.5 s with 2 threads, 0.2-0.4 s with 1.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CIFAR10_CONFIG = {
    "act_fn": "silu",
    "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256],
    "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 32,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}

FAMILY_256_CONFIG = {
    **CIFAR10_CONFIG,
    "block_out_channels": [128, 128, 256, 256, 512, 512],
    "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4,
    "sample_size": 256,
}


def cifar10_config(**overrides) -> dict:
    return {**CIFAR10_CONFIG, **overrides}


def small_cifar10_config(**overrides) -> dict:
    return {**CIFAR10_CONFIG, "block_out_channels": [32, 64, 64, 64], "norm_num_groups": 8, **overrides}


def small_256_family_config(**overrides) -> dict:
    small = {"block_out_channels": [16, 16, 32, 32, 48, 48], "norm_num_groups": 8, "sample_size": 64}
    return {**FAMILY_256_CONFIG, **small, **overrides}


def random_unet(config: dict, seed: int = 0):
    """A diffusers UNet2DModel of ``config`` in eval mode, with every parameter drawn at random.

    diffusers initialises GroupNorm to weight 1 / bias 0 and some projections to zero; a parity test on such
    weights would not notice a swapped or missing affine, so everything is redrawn here: weights ~ N(0, s^2)
    with s = 1/sqrt(fan_in), biases ~ N(0, 0.1^2), norm weights ~ 1 + N(0, 0.2^2), norm biases ~ N(0, 0.2^2).
    """
    UNet2DModel = _diffusers().UNet2DModel

    torch.manual_seed(seed)
    return redraw_parameters(UNet2DModel(**config).eval(), seed)


def random_fastddpm_unet(config: dict, seed: int = 0):
    """fastddpm's own UNet2D of ``config``, parameters drawn as random_unet draws them: for tests that must
    also run where diffusers is absent (the GPU image lacks it)."""
    from fastddpm.models.unet import UNet2D

    torch.manual_seed(seed)
    return redraw_parameters(UNet2D.from_config(config).eval(), seed)


def redraw_parameters(model, seed: int):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            is_norm = "norm" in name.rsplit(".", 2)[-2]
            if is_norm:
                p.copy_((1 + 0.2 * noise) if name.endswith("weight") else 0.2 * noise)
            elif p.dim() == 1:
                p.copy_(0.1 * noise)
            else:
                fan_in = p[0].numel() if "embedding.weight" not in name else 1
                p.copy_(noise / fan_in**0.5)
    return model


def ddpm_scheduler_config(**overrides) -> dict:
    return {
        "_class_name": "DDPMScheduler",
        "_diffusers_version": "0.42.1",
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "beta_start": 0.0001,
        "clip_sample": True,
        "num_train_timesteps": 1000,
        "trained_betas": None,
        "variance_type": "fixed_small",
        **overrides,
    }


def save_pipeline_folder(model, folder, scheduler_config: dict | None = None) -> Path:
    """Layout a, as DDPMPipeline.save_pretrained writes it."""
    DDPMPipeline, DDPMScheduler = _diffusers().DDPMPipeline, _diffusers().DDPMScheduler

    scheduler = DDPMScheduler.from_config(scheduler_config or ddpm_scheduler_config())
    DDPMPipeline(unet=model, scheduler=scheduler).save_pretrained(folder)
    return Path(folder)


_LEGACY_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
_ATTENTION_PARAMETER = re.compile(r"(\.attentions\.\d+\.)(to_q|to_k|to_v|to_out\.0)(\.(?:weight|bias))$")


def legacy_state_dict(state_dict: dict) -> dict:
    """The attention parameters under the names diffusers used before 0.14 (query/key/value/proj_attn)."""
    return {
        _ATTENTION_PARAMETER.sub(lambda m: m[1] + _LEGACY_NAMES[m[2]] + m[3], name): tensor
        for name, tensor in state_dict.items()
    }


def save_flat_folder(
    model,
    folder,
    scheduler_config: dict | None = None,
    *,
    legacy_attention_names: bool = False,
    weights: str = "safetensors",
    model_index: bool = True,
) -> Path:
    """Layout b, as in the google/ddpm-* repositories: config.json, weights, scheduler_config.json together,
    and (``model_index``) a model_index.json naming DDPMPipeline, with which DDPMPipeline.from_pretrained reads
    the components from the folder itself.

    ``weights`` is "safetensors" (diffusion_pytorch_model.safetensors) or "bin" (diffusion_pytorch_model.bin,
    a torch.save'd state dict).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "UNet2DModel", "_diffusers_version": "0.1.1", **dict(model.config)}
    config = {
        k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items() if k != "_use_default_values"
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if legacy_attention_names:
        state = legacy_state_dict(state)
    if weights == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    elif weights == "bin":
        torch.save(state, folder / "diffusion_pytorch_model.bin")
    else:
        raise ValueError(f"weights must be 'safetensors' or 'bin', got {weights!r}")
    (folder / "scheduler_config.json").write_text(
        json.dumps(scheduler_config or ddpm_scheduler_config(), indent=2)
    )
    return folder


def save_hub_cache(model, cache, repo_id: str, scheduler_config: dict | None = None, **flat_options) -> Path:
    """Layout d: ``cache/models--owner--name/{refs/main, snapshots/<hash>/...}`` as huggingface_hub writes it.

    Returns the snapshot folder. Point HF_HUB_CACHE (and HF_HUB_OFFLINE=1) at ``cache`` to resolve ``repo_id``.
    """
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    save_flat_folder(model, snapshot, scheduler_config, **flat_options)
    return snapshot


def _diffusers():
    """diffusers, or a skip of the calling test where it is not installed (the GPU image lacks it)."""
    import pytest

    return pytest.importorskip("diffusers")
