"""Reading guided-diffusion's classifiers: every published classifier's structure and every pool, logits and
input gradients against the independent reference (tests/adm_classifier_reference.py), flags inferred from
the tensors, and one-line refusals of contradicting flags."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastddpm.checkpoints.adm_classifier import read_classifier
from fastddpm.checkpoints.files import CheckpointError
from tests.adm_classifiers import CLASSIFIERS, OTHER_POOLS, reference_classifier, save_classifier

# Measured max |ours - reference| (width 64, batch 2, t = 10 and 500): logits 4.2e-7 .. 1.5e-6 (|logits| ~ 1);
# input gradients of one label's log-probability 7e-10 .. 1.5e-8 (|gradient| ~ 2e-4 .. 6e-3).
LOGITS_TOLERANCE = 1e-5
GRADIENT_TOLERANCE = 1e-4  # relative to the gradient's largest entry


def _gradient(model, x, t, label):
    x = x.clone().requires_grad_(True)
    log_probs = F.log_softmax(model(x, t), dim=-1)
    return torch.autograd.grad(log_probs[:, label].sum(), x)[0]


@pytest.mark.parametrize("name", ["64x64", "128x128", *OTHER_POOLS])
def test_classifier_logits_and_gradients_match_the_reference(name, tmp_path):
    text = CLASSIFIERS.get(name) or OTHER_POOLS[name]
    reference, given = reference_classifier(text)
    path = save_classifier(reference, tmp_path / "classifier.pt")
    ours = read_classifier(path, given)
    assert ours.config["classifier_pool"] == (name if name in OTHER_POOLS else "attention")
    side = ours.config["image_size"] if name in CLASSIFIERS else 32  # the other pools take any size
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 500])
    with torch.no_grad():
        assert (ours(x, t) - reference(x, t)).abs().max().item() < LOGITS_TOLERANCE
    expected = _gradient(reference, x, t, 3)
    assert (
        _gradient(ours, x, t, 3) - expected
    ).abs().max().item() < GRADIENT_TOLERANCE * expected.abs().max().item()


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_flags_left_out_are_read_from_the_weights(name, tmp_path):
    reference, given = reference_classifier(CLASSIFIERS[name])
    path = save_classifier(reference, tmp_path / "classifier.pt")
    flags = read_classifier(path, {}).config  # nothing given: image size, depth, width from the tensors
    for key, value in given.items():
        assert str(flags[key]) == value, key
    assert flags["num_classes"] == 1000 and flags["classifier_pool"] == "attention"


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("image_size", 128, "flag image_size=128 contradicts the classifier's weights, which have image_size=64"),
        ("classifier_depth", 2, "flag classifier_depth=2 contradicts the classifier's weights, which have classifier_depth=4"),
        ("classifier_width", 128, "flag classifier_width=128 contradicts the classifier's weights, which have classifier_width=64"),
        ("classifier_pool", "adaptive", "flag classifier_pool='adaptive' contradicts the classifier's weights, which have classifier_pool=attention"),
        ("classifier_resblock_updown", False, "flag classifier_resblock_updown=False contradicts"),
        ("classifier_use_scale_shift_norm", False, "flag classifier_use_scale_shift_norm=False contradicts"),
        ("classifier_attention_resolutions", "16", "flag classifier_attention_resolutions='16' contradicts the classifier's weights, which attend at 32,16,8 px"),
        ("classifier_pool", "max", "flag classifier_pool='max' is not one of adaptive, attention, spatial, spatial_v2"),
    ],
)  # fmt: skip
def test_a_contradicting_flag_is_one_line_naming_it(flag, value, message, tmp_path):
    reference, given = reference_classifier(CLASSIFIERS["64x64"])
    path = save_classifier(reference, tmp_path / "classifier.pt")
    with pytest.raises(CheckpointError) as error:
        read_classifier(path, {**given, flag: value})
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_missing_or_foreign_classifier_file_is_one_line(tmp_path):
    with pytest.raises(CheckpointError, match=r"classifier .*nowhere.pt: no such file"):
        read_classifier(tmp_path / "nowhere.pt", {})
    torch.save({"time_embed.0.weight": torch.zeros(4, 4)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a guided-diffusion classifier state dict"):
        read_classifier(tmp_path / "other.pt", {})
