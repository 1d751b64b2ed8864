"""Bad input to classifier guidance: one-line ValueErrors naming the argument and the problem."""

from __future__ import annotations

import pytest
import torch

import fastddpm
from tests.adm_checkpoint import reference_model, save_checkpoint
from tests.adm_classifier_reference import EncoderUNetModel
from tests.adm_classifiers import CLASSIFIERS, OTHER_POOLS, reference_classifier, save_classifier


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    model, given, _, _ = reference_model("guided_64_cond")
    uncond, uncond_given, _, _ = reference_model("guided_64_cond", extra_flags="--class_cond False")
    paths = {
        "model": save_checkpoint(model, folder / "model.pt"),
        "uncond": save_checkpoint(uncond, folder / "uncond.pt"),
        "c64": save_classifier(reference_classifier(CLASSIFIERS["64x64"])[0], folder / "c64.pt"),
        "c128": save_classifier(reference_classifier(CLASSIFIERS["128x128"])[0], folder / "c128.pt"),
        "adaptive": save_classifier(reference_classifier(OTHER_POOLS["adaptive"])[0], folder / "adaptive.pt"),
    }
    ten = EncoderUNetModel(64, 64, 10, 1, (4,), (1, 2, 3, 4), 64, True, True, "adaptive")  # 10 classes
    paths["ten"] = save_classifier(ten, folder / "ten.pt")
    return paths, given, uncond_given


def refused(match: str, call) -> None:
    with pytest.raises(ValueError, match=match) as error:
        call()
    assert "\n" not in str(error.value)


def test_a_classifier_for_another_image_size(files):
    paths, given, _ = files
    refused(
        "flag image_size=64 contradicts the classifier's weights, which have image_size=128",
        lambda: fastddpm.load(paths["model"], classifier=paths["c128"], **given),
    )
    no_size = {k: v for k, v in given.items() if k != "image_size"}  # the model's size from its default
    refused(
        r"is for 128x128 images \(image_size=128\) and the diffusion model for 64x64",
        lambda: fastddpm.load(paths["model"], classifier=paths["c128"], **no_size),
    )


def test_the_attention_pool_takes_its_image_size_only(files):
    paths, given, _ = files
    refused(
        "sample_size=32: the classifier's attention pool takes 64x64 images only",
        lambda: fastddpm.load(paths["model"], classifier=paths["c64"], sample_size=32, **given),
    )
    pipe = fastddpm.load(paths["model"], classifier=paths["adaptive"], sample_size=16, **given)
    assert pipe.classifier.config["classifier_pool"] == "adaptive"  # a convolutional pool: any size


def test_labels_the_model_does_not_take(files):
    paths, given, uncond_given = files
    refused(
        "has 10 classes and the class-conditional diffusion model 1000",
        lambda: fastddpm.load(paths["model"], classifier=paths["ten"], **given),
    )
    pipe = fastddpm.load(paths["uncond"], classifier=paths["ten"], sample_size=16, **uncond_given)
    assert pipe.label_classes() == 10  # an unconditional model: the classifier's labels
    refused(
        r"class_labels must lie in \[0, 10\)",
        lambda: pipe(batch_size=1, class_labels=[10], timestep_respacing="1", progress=False),
    )
    refused(
        "guides OpenAI ADM diffusion checkpoints only",
        lambda: fastddpm.load(None, classifier=paths["adaptive"]),  # the built-in diffusers model
    )


def test_missing_file_contradicting_flags_and_flags_without_a_classifier(files, tmp_path):
    paths, given, _ = files
    refused(
        r"classifier .*missing.pt: no such file",
        lambda: fastddpm.load(paths["model"], classifier=tmp_path / "missing.pt", **given),
    )
    refused(
        "flag classifier_width=128 contradicts the classifier's weights, which have classifier_width=64",
        lambda: fastddpm.load(paths["model"], classifier=paths["c64"], classifier_width=128, **given),
    )
    refused(
        "flag 'classifier_scale' applies to a classifier, and none was given",
        lambda: fastddpm.load(paths["model"], classifier_scale=1.0, **given),
    )


def test_classifier_scale(files):
    paths, given, _ = files
    plain = fastddpm.load(paths["model"], sample_size=16, **given)
    refused(
        "classifier_scale applies to a pipeline loaded with a classifier", lambda: plain(classifier_scale=1.0)
    )
    pipe = fastddpm.load(
        paths["model"], classifier=paths["adaptive"], sample_size=16, classifier_scale="2.5", **given
    )
    assert pipe.classifier_scale == 2.5  # the flag sets the default, as their --classifier_scale
    refused("classifier_scale must be a finite number", lambda: pipe(classifier_scale=float("nan")))
    refused("classifier_scale must be a finite number", lambda: pipe(classifier_scale="1"))
    assert torch.isfinite(
        pipe(batch_size=1, timestep_respacing="1", output_type="pt", progress=False).images
    ).all()
