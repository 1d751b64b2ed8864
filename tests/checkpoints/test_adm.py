"""Reading ADM checkpoints (their torch.save(model.state_dict())) with their README flags."""

from __future__ import annotations

import pytest
import torch

import fastddpm
from fastddpm.checkpoints import CheckpointError
from fastddpm.checkpoints.adm_flags import FlagError, parse_flag_string, resolve_flags
from fastddpm.models.adm_unet import AdmUNet
from tests.adm_checkpoint import reference_model, save_checkpoint


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    model, given, flags, size = reference_model("improved_cifar10")
    return save_checkpoint(model, tmp_path_factory.mktemp("adm") / "cifar.pt"), given, model


@pytest.fixture(scope="module")
def guided(tmp_path_factory):
    model, given, flags, size = reference_model("guided_256_cond")
    return save_checkpoint(model, tmp_path_factory.mktemp("adm") / "guided.pt"), given, model


def test_parse_flag_string_as_their_readme_writes_it():
    text = '--attention_resolutions 32,16,8 --class_cond True --num_channels=256 --noise_schedule "cosine"'
    assert parse_flag_string(text) == {
        "attention_resolutions": "32,16,8",
        "class_cond": "True",
        "num_channels": "256",
        "noise_schedule": "cosine",
    }
    with pytest.raises(FlagError, match="--learn_sigma has no value"):
        parse_flag_string("--learn_sigma --class_cond True")


def test_defaults_are_guided_diffusions():
    flags = resolve_flags({})
    assert flags["num_heads"] == 4 and flags["attention_ds"] == (4, 8) and flags["rescale_timesteps"] is False
    assert flags["channel_mult"] == (1, 2, 3, 4) and flags["use_scale_shift_norm"] is True


def test_load_with_flags_builds_their_net(guided):
    path, given, model = guided
    pipe = fastddpm.load(path, sample_size=32, **given)
    assert isinstance(pipe.unet, AdmUNet) and "ADM checkpoint" in pipe.source
    assert pipe.sample_shape() == (3, 32, 32)
    for name, tensor in model.state_dict().items():
        assert torch.equal(pipe.unet.state_dict()[name], tensor)
    assert pipe.scheduler_config["learn_sigma"] is True and pipe.scheduler_config["diffusion_steps"] == 1000


def test_flags_the_tensors_settle_may_be_left_out(cifar):
    path, given, _ = cifar
    few = {k: given[k] for k in ("image_size", "diffusion_steps", "noise_schedule", "rescale_timesteps")}
    pipe = fastddpm.load(path, **few)  # num_channels 32, learn_sigma, num_res_blocks 3 come from the weights
    assert pipe.unet.config["num_channels"] == 32 and pipe.unet.config["num_res_blocks"] == 3
    assert pipe.unet.config["learn_sigma"] is True and pipe.unet.config["out_channels"] == 6


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"num_channels": "64"},
            "flag num_channels='64' contradicts the weights, which have num_channels=32",
        ),
        ({"learn_sigma": "False"}, "flag learn_sigma='False' contradicts the weights"),
        ({"class_cond": "True"}, "flag class_cond='True' contradicts the weights"),
        ({"num_res_blocks": "2"}, "flag num_res_blocks='2' contradicts the weights"),
        ({"use_scale_shift_norm": "False"}, "flag use_scale_shift_norm='False' contradicts"),
        ({"resblock_updown": "True"}, "flag resblock_updown='True' contradicts"),
        (
            {"channel_mult": "1,2,3,4"},
            "flag channel_mult='1,2,3,4' contradicts the weights, which have channel_mult=1,2,2,2",
        ),
        (
            {"attention_resolutions": "8"},
            "flag attention_resolutions='8' contradicts the weights, which attend at 16,8 px",
        ),
        ({"num_heads": "3"}, "cannot split into 3 heads"),
        ({"learn_sigma": "maybe"}, "flag learn_sigma='maybe' is not a boolean"),
        ({"noise_schedule": "sqrt"}, "flag noise_schedule='sqrt' is not one of linear, cosine"),
        ({"num_chanels": "32"}, "num_chanels"),
    ],
)
def test_bad_flags_are_one_line_errors_naming_the_flag(cifar, change, message):
    path, given, _ = cifar
    with pytest.raises(ValueError) as info:
        fastddpm.load(path, **{**given, **change})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_image_size_the_tensors_cannot_settle_is_asked_for(guided):
    path, given, _ = guided
    flags = {k: v for k, v in given.items() if k not in ("image_size", "attention_resolutions")}
    with pytest.raises(CheckpointError, match="flag image_size is needed: the weights have 6 levels.*256"):
        fastddpm.load(path, **flags)


def test_adm_flags_on_other_checkpoints_are_refused(tmp_path):
    with pytest.raises(ValueError, match="flag 'learn_sigma' applies to ADM checkpoints only"):
        fastddpm.load(None, learn_sigma=True)
