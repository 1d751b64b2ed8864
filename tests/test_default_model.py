"""The embedded default model: a small diffusers folder whose samples are recognisable digits.

Quality is judged by a classifier trained on three quarters of the real 8x8 digits (an RBF SVC with
Platt-calibrated probabilities; on the held-out quarter, which it never saw: 98.7% accurate, mean top
probability 0.93; on uniform noise 0.22): 500 samples drawn through the command line must be classified
with mean top probability >= 0.8, and every digit must make up at least 4% of them.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

from tests.cli.test_cli import run_cli, summary_of
from tests.models.test_unet import assert_matches

DEFAULT_MODEL = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fastddpm", "default_model"
)
QUALITY_SAMPLES = 500


def digit_split():
    """(train pixels, train labels, held-out pixels, held-out labels): a stratified 75 / 25 split of the
    1797 real digits, pixels scaled to [0, 1]. The classifier never sees the held-out quarter."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    return tuple(
        train_test_split(
            digits.data / 16.0, digits.target, test_size=0.25, stratify=digits.target, random_state=0
        )[i]
        for i in (0, 2, 1, 3)
    )


def digit_classifier():
    from sklearn.svm import SVC

    train_x, train_y, _, _ = digit_split()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # SVC(probability=True) is deprecated in sklearn 1.9
        return SVC(probability=True, random_state=0).fit(train_x, train_y)


def classify(classifier, images_uint8: np.ndarray) -> tuple[float, np.ndarray]:
    """(mean top probability, share of each digit) of uint8 NHWC 8x8 grayscale images."""
    pixels = images_uint8.reshape(len(images_uint8), 64).astype(np.float64) / 255.0
    probabilities = classifier.predict_proba(pixels)
    shares = np.bincount(probabilities.argmax(axis=1), minlength=10) / len(images_uint8)
    return float(probabilities.max(axis=1).mean()), shares


def test_default_model_is_a_small_diffusers_folder():
    files = {
        os.path.relpath(os.path.join(root, name), DEFAULT_MODEL)
        for root, _, names in os.walk(DEFAULT_MODEL)
        for name in names
    }
    assert files == {
        "model_index.json",
        os.path.join("unet", "config.json"),
        os.path.join("unet", "diffusion_pytorch_model.safetensors"),
        os.path.join("scheduler", "scheduler_config.json"),
    }
    size = sum(os.path.getsize(os.path.join(DEFAULT_MODEL, name)) for name in files)
    assert size < 8e6, f"the embedded model is {size / 1e6:.1f} MB"
    with open(os.path.join(DEFAULT_MODEL, "unet", "config.json")) as handle:
        config = json.load(handle)
    assert (config["sample_size"], config["in_channels"], config["out_channels"]) == (8, 1, 1)


def test_diffusers_reads_the_default_model_and_agrees_with_fastddpm():
    import torch

    diffusers = pytest.importorskip("diffusers")
    import fastddpm

    theirs = diffusers.UNet2DModel.from_pretrained(os.path.join(DEFAULT_MODEL, "unet")).eval()
    ours = fastddpm.load().unet
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([999, 500, 3])
    with torch.no_grad():
        assert_matches(ours(x, t), theirs(x, t).sample, "default model vs diffusers")  # measured 1.4e-6


def test_classifier_separates_real_digits_from_noise():
    """The judge itself must be able to fail: held-out real digits pass the criterion, noise does not."""
    classifier = digit_classifier()
    _, _, held_out_x, held_out_y = digit_split()
    real = np.round(held_out_x * 255).astype(np.uint8).reshape(-1, 8, 8)
    noise = np.random.default_rng(0).integers(0, 256, size=(len(real), 8, 8), dtype=np.uint8)
    accuracy = float((classifier.predict(held_out_x) == held_out_y).mean())
    assert accuracy >= 0.97, f"held-out accuracy {accuracy:.3f}"  # measured 0.987
    real_confidence, real_shares = classify(classifier, real)
    assert real_confidence >= 0.8 and real_shares.min() >= 0.04, (real_confidence, real_shares)
    assert classify(classifier, noise)[0] < 0.5


@pytest.mark.slow
def test_default_model_samples_are_recognisable_digits_of_every_class(tmp_path):
    # Exactly the default sampling settings of `fastddpm sample` (DDIM, 50 steps, eta 0).
    result = run_cli(
        "sample", "--num", QUALITY_SAMPLES, "--batch-size", 250, "--format", "npz", "--out", tmp_path
    )
    with np.load(summary_of(result)["out"]) as archive:
        images = archive["arr_0"]
    assert images.shape == (QUALITY_SAMPLES, 8, 8, 1)
    mean_top_probability, shares = classify(digit_classifier(), images)
    assert mean_top_probability >= 0.8, (
        f"samples are classified with mean top probability {mean_top_probability:.3f}"
    )
    assert shares.min() >= 0.04, f"digit shares {np.round(shares, 3).tolist()}: some digit is below 4%"
