"""AdmUNet (fastddpm's fused ops) against the independent ADM reference, for every checkpoint family."""

from __future__ import annotations

import pytest
import torch

from fastddpm.models.adm_unet import AdmUNet
from tests.adm_checkpoint import reference_model
from tests.adm_families import FAMILIES

# Measured max |ours - reference| / max |reference| over the families, float32: 1.4e-6 .. 2.6e-6 (the
# reference itself is 1.4e-6 .. 2.4e-6 off a float64 run of it: Winograd convs and fused norms round
# differently, not less accurately).
RELATIVE_TOLERANCE = 1e-5


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_forward_matches_reference(family):
    reference, _, flags, size = reference_model(family)
    unet = AdmUNet.from_state_dict({**flags, "sample_size": size}, dict(reference.state_dict()))
    assert list(unet.state_dict()) == list(reference.state_dict())  # their names, their order
    x = torch.randn(2, 3, size, size + 16 if family == "improved_cifar10" else size)  # H != W once
    t = torch.tensor([3.0, 987.5])  # float: rescale_timesteps feeds 0..1000 floats
    labels = torch.tensor([7, 999]) if flags["class_cond"] else None
    with torch.no_grad():
        expected = reference(x, t, labels)
        got = unet(x, t, labels)
        unet.to(memory_format=torch.channels_last)
        got_nhwc = unet(x.contiguous(memory_format=torch.channels_last), t, labels)
    assert got.shape == expected.shape == (2, 6 if flags["learn_sigma"] else 3, *x.shape[2:])
    assert relative_error(got, expected) < RELATIVE_TOLERANCE
    assert relative_error(got_nhwc, expected) < RELATIVE_TOLERANCE


def test_class_labels_required_exactly_when_class_conditional():
    reference, _, flags, size = reference_model("guided_64_cond")
    unet = AdmUNet.from_state_dict(flags, dict(reference.state_dict()))
    with pytest.raises(ValueError, match="class_labels is required"):
        unet(torch.randn(1, 3, size, size), torch.tensor([1.0]))
    reference, _, flags, size = reference_model("guided_256_uncond")
    unet = AdmUNet.from_state_dict(flags, dict(reference.state_dict()))
    with pytest.raises(ValueError, match="not class-conditional"):
        unet(torch.randn(1, 3, size, size), torch.tensor([1.0]), torch.tensor([0]))


def test_new_and_legacy_attention_orders_differ():
    """The order flag changes which qkv channels form a head: the same weights give other outputs."""
    reference, _, flags, size = reference_model("guided_64_cond")  # use_new_attention_order True
    state = dict(reference.state_dict())
    x, t, y = torch.randn(1, 3, size, size), torch.tensor([500.0]), torch.tensor([3])
    new = AdmUNet.from_state_dict(flags, state)(x, t, y)
    legacy = AdmUNet.from_state_dict({**flags, "use_new_attention_order": False}, state)(x, t, y)
    assert relative_error(new, legacy) > 1e-3
