"""`fastddpm convert` of ADM checkpoints: a diffusers folder where UNet2DModel can express the net, with
the same outputs in diffusers; otherwise exit 2 with the reason."""

from __future__ import annotations

import pytest
import torch

from fastddpm.cli.main import main
from tests.adm_checkpoint import reference_model, save_checkpoint
from tests.adm_families import FAMILIES

# Measured max |diffusers - reference| / max |reference|: 8.6e-7 .. 1.2e-6.
RELATIVE_TOLERANCE = 1e-5


@pytest.mark.parametrize(
    "family",
    [
        "guided_256_uncond",  # resblock up/down, scale-shift, head channels, legacy order
        "guided_64_cond",  # new attention order, class embedding
        "improved_lsun",  # conv resampling, no scale-shift, one head of each block's width
    ],
)
def test_converted_folder_gives_the_same_outputs_in_diffusers(family, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    model, _, flags, size = reference_model(family)
    checkpoint = save_checkpoint(model, tmp_path / "model.pt")
    assert main(["convert", str(checkpoint), str(tmp_path / "out"), "--flags", FAMILIES[family][0]]) == 0
    unet = diffusers.UNet2DModel.from_pretrained(tmp_path / "out" / "unet").eval()
    scheduler = diffusers.DDPMScheduler.from_pretrained(tmp_path / "out" / "scheduler")
    assert scheduler.config.variance_type == "learned_range"
    x, t = torch.randn(2, 3, size, size), torch.tensor([3, 987])
    labels = torch.tensor([7, 999]) if flags["class_cond"] else None
    with torch.no_grad():
        expected = model(x, t, labels)
        got = unet(x, t, class_labels=labels).sample
    assert ((got - expected).abs().max() / expected.abs().max()).item() < RELATIVE_TOLERANCE


@pytest.mark.parametrize(
    "family, reason",
    [
        ("guided_512_cond", "channel_mult starts at 0.5"),
        ("guided_128_cond", "num_heads=4 gives heads of [16, 24, 32] channels"),
        ("improved_cifar10", "rescale_timesteps with diffusion_steps=4000"),
    ],
)
def test_inexpressible_nets_are_refused_with_the_reason(family, reason, tmp_path, capsys):
    model, _, _, _ = reference_model(family)
    checkpoint = save_checkpoint(model, tmp_path / "model.pt")
    assert main(["convert", str(checkpoint), str(tmp_path / "out"), "--flags", FAMILIES[family][0]]) == 2
    err = capsys.readouterr().err
    assert (
        "diffusers' UNet2DModel cannot express this ADM net" in err and reason in err and err.count("\n") == 1
    )
    assert not (tmp_path / "out").exists()
