"""The CLI on an ADM checkpoint: --flags takes their README's flag string as is."""

from __future__ import annotations

import pytest

from fastddpm.cli.main import main
from tests.adm_checkpoint import reference_model, save_checkpoint
from tests.adm_families import FAMILIES

FLAGS = FAMILIES["improved_cifar10"][0] + " --timestep_respacing 2"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, _, _, _ = reference_model("improved_cifar10")
    return str(save_checkpoint(model, tmp_path_factory.mktemp("adm") / "cifar10_uncond.pt"))


def test_sample_with_their_flag_string(checkpoint, tmp_path, capsys):
    out = tmp_path / "images"
    assert (
        main(
            [
                "sample",
                checkpoint,
                "--flags",
                FLAGS,
                "-n",
                "2",
                "--sampler",
                "ddpm",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "fastddpm_manifest.json"]
    assert "--learn_sigma True" in (out / "fastddpm_manifest.json").read_text()


@pytest.mark.parametrize(
    "flags, message",
    [
        ("--num_channels 64", "flag num_channels='64' contradicts the weights"),
        ("--learn_sigma --class_cond True", "flag --learn_sigma has no value"),
        ("--image_size 32 --num_heads 5", "cannot split into 5 heads"),
    ],
)
def test_bad_flags_exit_2_with_one_line(checkpoint, tmp_path, capsys, flags, message):
    assert (
        main(
            [
                "sample",
                checkpoint,
                "--flags",
                flags,
                "-n",
                "1",
                "--out",
                str(tmp_path / "x"),
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_info_describes_the_adm_net(checkpoint, capsys):
    assert main(["info", checkpoint, "--flags", FLAGS]) == 0
    text = capsys.readouterr().out
    assert "(ADM, improved-/guided-diffusion)" in text and "32 channels x [1, 2, 2, 2]" in text
    assert "4000 steps, cosine betas, learn_sigma True" in text and "rescale_timesteps True" in text
