"""read_checkpoint in every layout against diffusers' own forward, save_diffusers, and every bad input."""

from __future__ import annotations

import json
import pathlib
import pickle

import pytest
import torch

from fastddpm.checkpoints import CheckpointError, read_checkpoint, save_diffusers
from fastddpm.models.unet import UNet2D
from tests.model_factory import (
    ddpm_scheduler_config,
    one_cpu_thread,  # noqa: F401  (a fixture: pytest finds it here)
    random_unet,
    save_flat_folder,
    save_hub_cache,
    save_pipeline_folder,
    small_256_family_config,
    small_cifar10_config,
)
from tests.models.test_unet import assert_matches
from tests.original_ddpm_model import random_original_model

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("one_cpu_thread")

TINY = small_cifar10_config(block_out_channels=[16, 16, 32, 32], sample_size=16)


@pytest.fixture(scope="module")
def model():
    return random_unet(TINY, seed=3)


def assert_same_forward(unet: UNet2D, model, what: str) -> None:
    size = model.config.sample_size
    x = torch.randn(2, model.config.in_channels, size, size, generator=torch.Generator().manual_seed(7))
    t = torch.tensor([13, 870])
    with torch.no_grad():
        assert_matches(unet(x, t), model(x, t).sample, what)


# --- layouts that read ------------------------------------------------------------------------------------


def test_pipeline_folder_from_save_pretrained(model, tmp_path):
    folder = save_pipeline_folder(
        model, tmp_path / "pipe", ddpm_scheduler_config(variance_type="fixed_large")
    )
    loaded = read_checkpoint(folder)
    assert_same_forward(loaded.unet, model, "pipeline folder")
    assert loaded.scheduler_config["variance_type"] == "fixed_large"
    assert loaded.scheduler_config["_class_name"] == "DDPMScheduler"
    assert "pipeline folder" in loaded.source and str(folder) in loaded.source


def test_pipeline_folder_256_family(tmp_path):
    model = random_unet(small_256_family_config(), seed=1)
    loaded = read_checkpoint(save_pipeline_folder(model, tmp_path / "pipe256"))
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_matches(loaded.unet(x, 321), model(x, 321).sample, "256 family")


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
@pytest.mark.parametrize("legacy", [False, True], ids=["current_names", "legacy_names"])
@pytest.mark.parametrize("model_index", [True, False], ids=["with_model_index", "without_model_index"])
def test_flat_google_layout(model, tmp_path, weights, legacy, model_index):
    folder = save_flat_folder(
        model, tmp_path / "flat", legacy_attention_names=legacy, weights=weights, model_index=model_index
    )
    if legacy:  # the file really carries the old names
        if weights == "bin":
            names = torch.load(folder / "diffusion_pytorch_model.bin", weights_only=True)
        else:
            from safetensors.torch import load_file

            names = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
        assert any(".query.weight" in n for n in names) and not any(".to_q." in n for n in names)
    loaded = read_checkpoint(folder)
    assert_same_forward(loaded.unet, model, f"flat {weights} legacy={legacy}")
    assert loaded.scheduler_config["beta_schedule"] == "linear"
    # diffusers itself reads the legacy folder to the same model
    assert_same_forward(
        loaded.unet, diffusers.UNet2DModel.from_pretrained(folder).eval(), "diffusers reading it"
    )


def test_legacy_attention_weights_stored_as_1x1_convs(model, tmp_path):
    folder = save_flat_folder(model, tmp_path / "flat", legacy_attention_names=True)

    def as_convs(state):
        for name in [n for n in state if n.endswith((".query.weight", ".key.weight", ".value.weight"))]:
            state[name] = state[name][:, :, None, None].contiguous()

    rewrite_weights(folder, as_convs)
    assert_same_forward(read_checkpoint(folder).unet, model, "legacy 1x1-conv attention weights")


def test_hub_id_from_offline_cache(model, tmp_path, monkeypatch):
    save_hub_cache(model, tmp_path / "hub", "google/ddpm-cifar10-32", legacy_attention_names=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # so "google/ddpm-cifar10-32" is not a relative path that exists
    loaded = read_checkpoint("google/ddpm-cifar10-32")
    assert_same_forward(loaded.unet, model, "hub id")
    assert "google/ddpm-cifar10-32" in loaded.source
    with pytest.raises(CheckpointError, match="google/ddpm-not-cached"):
        read_checkpoint("google/ddpm-not-cached")


def test_hub_id_falls_back_to_the_cache_when_the_hub_is_unreachable(model, tmp_path, monkeypatch):
    save_hub_cache(model, tmp_path / "hub", "google/ddpm-cifar10-32")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: connection refused at once
    monkeypatch.chdir(tmp_path)
    loaded = read_checkpoint("google/ddpm-cifar10-32")
    assert_same_forward(loaded.unet, model, "hub id, cache fallback")


def test_device_dtype_and_overrides(model, tmp_path):
    folder = save_pipeline_folder(model, tmp_path / "pipe")
    loaded = read_checkpoint(
        folder, dtype=torch.float64, sample_size=24, clip_sample=False, variance_type="fixed_large"
    )
    assert loaded.unet.dtype == torch.float64 and loaded.unet.device == torch.device("cpu")
    assert loaded.unet.timestep_frequencies.dtype == torch.float32
    assert loaded.unet.config["sample_size"] == 24
    assert loaded.scheduler_config["clip_sample"] is False
    assert loaded.scheduler_config["variance_type"] == "fixed_large"
    with pytest.raises(ValueError, match="varianse_type"):
        read_checkpoint(folder, varianse_type="fixed_large")


# --- original DDPM checkpoints ------------------------------------------------------------------------------

CIFAR_LIKE = dict(
    ch=32, out_ch=3, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), in_channels=3
)


def compare_original(original, loaded, size: int) -> None:
    x = torch.randn(3, original.conv_in.in_channels, size, size, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([0, 511, 999])
    with torch.no_grad():
        assert_matches(loaded.unet(x, t), original(x, t), "original DDPM")


def test_original_cifar10_layout(tmp_path):
    original = random_original_model(seed=0, resolution=32, **CIFAR_LIKE)
    torch.save(original.state_dict(), tmp_path / "model-790000.ckpt")
    loaded = read_checkpoint(tmp_path / "model-790000.ckpt")
    config = loaded.unet.config
    assert config["sample_size"] == 32 and config["down_block_types"][1] == "AttnDownBlock2D"
    assert config["up_block_types"] == ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    schedule = loaded.scheduler_config
    assert (schedule["beta_start"], schedule["beta_end"], schedule["num_train_timesteps"]) == (
        1e-4,
        0.02,
        1000,
    )
    assert schedule["variance_type"] == "fixed_large" and schedule["clip_sample"] is True
    assert "original DDPM" in loaded.source
    compare_original(original, loaded, 32)


def test_original_256_family_layout_in_ddim_list_format(tmp_path):
    """6 levels, attention at 16 px (level 2 of a 64 px model), ermongroup/ddim's [model, opt, epoch, step, ema]."""
    architecture = dict(CIFAR_LIKE, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=1)
    original = random_original_model(seed=1, resolution=64, **architecture)
    decoy = random_original_model(seed=2, resolution=64, **architecture)  # the non-EMA weights
    prefixed = {f"module.{k}": v for k, v in original.state_dict().items()}
    decoy_state = {f"module.{k}": v for k, v in decoy.state_dict().items()}
    torch.save([decoy_state, {"state": {}, "param_groups": []}, 12, 34000, prefixed], tmp_path / "ckpt.pth")
    loaded = read_checkpoint(tmp_path / "ckpt.pth")
    assert loaded.unet.config["sample_size"] == 64
    assert (
        loaded.unet.config["down_block_types"]
        == ("DownBlock2D",) * 2 + ("AttnDownBlock2D",) + ("DownBlock2D",) * 3
    )
    assert loaded.scheduler_config["variance_type"] == "fixed_small"
    compare_original(original, loaded, 64)
    overridden = read_checkpoint(tmp_path / "ckpt.pth", sample_size=32, clip_sample=False)
    assert overridden.unet.config["sample_size"] == 32
    assert overridden.scheduler_config["variance_type"] == "fixed_large"
    assert overridden.scheduler_config["clip_sample"] is False


# --- save_diffusers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler_class", ["DDPMScheduler", "DDIMScheduler"])
def test_save_diffusers_loads_in_diffusers(model, tmp_path, scheduler_class):
    unet = UNet2D.from_diffusers(model)
    folder = save_diffusers(unet, ddpm_scheduler_config(), tmp_path / "out", scheduler_class=scheduler_class)
    pipeline = diffusers.DDPMPipeline.from_pretrained(folder)
    assert type(pipeline.scheduler).__name__ == scheduler_class
    assert pipeline.scheduler.config.beta_end == 0.02
    assert_same_forward(unet, pipeline.unet.eval(), "diffusers reading save_diffusers")
    again = read_checkpoint(folder)
    assert_same_forward(again.unet, model, "read_checkpoint reading save_diffusers")
    assert again.scheduler_config["_class_name"] == scheduler_class


# --- bad input ---------------------------------------------------------------------------------------------


def flat(model, tmp_path, **options) -> pathlib.Path:
    return save_flat_folder(model, tmp_path / "flat", **options)


def rewrite_weights(folder: pathlib.Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))


def test_missing_path():
    with pytest.raises(CheckpointError, match="/no/such/model.ckpt: no such file"):
        read_checkpoint("/no/such/model.ckpt")
    with pytest.raises(CheckpointError, match="runs/model.ckpt: no such file"):
        read_checkpoint("runs/model.ckpt")  # relative, owner/name-shaped, but a file name: not a Hub id


def test_folder_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="missing model_index.json or config.json"):
        read_checkpoint(tmp_path)


def test_missing_weights_and_scheduler(model, tmp_path):
    folder = flat(model, tmp_path)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing weights"):
        read_checkpoint(folder)
    folder = save_flat_folder(model, tmp_path / "other")
    (folder / "scheduler_config.json").unlink()
    with pytest.raises(CheckpointError, match="scheduler_config.json: missing"):
        read_checkpoint(folder)


def test_corrupt_files(model, tmp_path):
    folder = flat(model, tmp_path)
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"\x07not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt safetensors"):
        read_checkpoint(folder)
    (tmp_path / "broken.ckpt").write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(CheckpointError, match="broken.ckpt: unreadable or corrupt"):
        read_checkpoint(tmp_path / "broken.ckpt")
    (folder / "config.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="config.json: U-Net config is not readable JSON"):
        read_checkpoint(folder)


def test_unknown_block_type(model, tmp_path):
    folder = flat(model, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["down_block_types"][1] = "CrossAttnDownBlock2D"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json.*down_block_types.*CrossAttnDownBlock2D"):
        read_checkpoint(folder)


def test_pipeline_index_naming_another_unet(model, tmp_path):
    folder = save_pipeline_folder(model, tmp_path / "pipe")
    index = json.loads((folder / "model_index.json").read_text())
    index["unet"] = ["diffusers", "UNet2DConditionModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="UNet2DConditionModel"):
        read_checkpoint(folder)


def test_missing_unexpected_and_misshaped_keys(model, tmp_path):
    folder = flat(model, tmp_path)

    def edit(state):
        for name in ["conv_in.bias", "conv_out.weight", "conv_out.bias", "mid_block.resnets.0.conv1.bias"]:
            del state[name]
        state["extra.weight"] = torch.zeros(2)
        state["time_embedding.linear_1.weight"] = torch.zeros(3, 3)

    rewrite_weights(folder, edit)
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(folder)
    message = str(error.value)
    assert str(folder / "diffusion_pytorch_model.safetensors") in message
    assert "4 missing keys (conv_in.bias, conv_out.bias, conv_out.weight)" in message
    assert "1 unexpected key (extra.weight)" in message
    assert "1 mis-shaped key (time_embedding.linear_1.weight (3, 3) vs (64, 16))" in message
    assert "\n" not in message


def test_nan_and_inf_weights_are_named(model, tmp_path):
    folder = flat(model, tmp_path)
    rewrite_weights(
        folder, lambda s: s["down_blocks.1.attentions.0.to_k.weight"].__setitem__((0, 0), float("nan"))
    )
    with pytest.raises(CheckpointError, match="down_blocks.1.attentions.0.to_k.weight holds NaN or inf"):
        read_checkpoint(folder)
    original = random_original_model(seed=0, resolution=32, **CIFAR_LIKE).state_dict()
    original["mid.block_1.conv2.bias"][3] = float("inf")
    torch.save(original, tmp_path / "inf.ckpt")
    with pytest.raises(
        CheckpointError, match="inf.ckpt: tensor mid_block.resnets.0.conv2.bias holds NaN or inf"
    ):
        read_checkpoint(tmp_path / "inf.ckpt")


class _RunsCode:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.mark.parametrize("where", ["original_ckpt", "flat_bin"])
def test_pickle_that_would_run_code_is_refused(model, tmp_path, where):
    marker = tmp_path / "code_ran"
    payload = {"conv_in.weight": torch.zeros(1), "trap": _RunsCode(marker)}
    if where == "original_ckpt":
        target = tmp_path / "evil.ckpt"
    else:
        folder = flat(model, tmp_path, weights="bin")
        target = folder / "diffusion_pytorch_model.bin"
    with open(target, "wb") as handle:
        pickle.dump(payload, handle, protocol=2)  # a plain pickle file
    torch.save(payload, tmp_path / "evil_zip.pt")  # and torch's zip format
    for path in (target.parent if where == "flat_bin" else target, tmp_path / "evil_zip.pt"):
        with pytest.raises(CheckpointError, match="refused to unpickle|unreadable"):
            read_checkpoint(path)
    assert not marker.exists(), "unpickling ran code"


def test_diffusers_state_dict_without_config(model, tmp_path):
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(
        CheckpointError, match="weights.pt: a diffusers-named state dict needs its config.json"
    ):
        read_checkpoint(tmp_path / "weights.pt")


def test_file_that_is_no_ddpm_checkpoint(tmp_path):
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt: not an original DDPM checkpoint"):
        read_checkpoint(tmp_path / "other.pt")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="notes.txt: unknown checkpoint file type"):
        read_checkpoint(tmp_path / "notes.txt")
