"""`fastddpm sample model.pt --classifier classifier.pt --flags "$MODEL_FLAGS $CLASSIFIER_FLAGS ..."`: their
README's strings as they stand, the same images as the Python API, and one-line refusals (exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fastddpm
from fastddpm.checkpoints.adm_flags import parse_flag_string
from fastddpm.cli.main import main
from tests.adm_checkpoint import reference_model, save_checkpoint
from tests.adm_classifiers import OTHER_POOLS, reference_classifier, save_classifier
from tests.adm_families import FAMILIES

# guided_64_cond's MODEL_FLAGS, an adaptive-pool classifier's CLASSIFIER_FLAGS (it runs at 16 px), their
# scale flag, and their SAMPLE_FLAGS (batch_size, num_samples, use_ddim: accepted, the CLI's options rule)
MODEL_FLAGS = FAMILIES["guided_64_cond"][0]
CLASSIFIER_FLAGS = OTHER_POOLS["adaptive"].replace("--image_size 64 ", "")
SAMPLE_FLAGS = "--batch_size 4 --num_samples 50000 --timestep_respacing ddim2 --use_ddim True"
FLAGS = f"{MODEL_FLAGS} {CLASSIFIER_FLAGS} --classifier_scale 300.0 {SAMPLE_FLAGS}"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("guided_cli")
    model, _, _, _ = reference_model("guided_64_cond")
    classifier, _ = reference_classifier(OTHER_POOLS["adaptive"], seed=2)
    return str(save_checkpoint(model, folder / "model.pt")), str(save_classifier(classifier, folder / "c.pt"))


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_sample_with_their_flag_strings_matches_the_api(files, tmp_path, capsys):
    model, classifier = files
    out = tmp_path / "images"
    argv = ["sample", model, "--classifier", classifier, "--flags", FLAGS, "-n", "2",
            "--sampler", "ddim", "--format", "npz", "--out", str(out), "--device", "cpu", "--seed", "3"]  # fmt: skip
    code, stdout, stderr = run(argv, capsys)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["classifier_scale"] == 300.0 and summary["classifier"].endswith("c.pt")
    images = np.load(next(out.glob("*.npz")))["arr_0"]
    # the API at the same settings (the CLI draws with Philox noise, image i at sample index i)
    pipe = fastddpm.load(model, classifier=classifier, **parse_flag_string(FLAGS))
    expected = pipe(batch_size=2, sampler="ddim", timestep_respacing="ddim2", noise="philox", seed=3,
                    output_type="np", progress=False).images  # fmt: skip
    unguided = pipe(batch_size=2, sampler="ddim", timestep_respacing="ddim2", noise="philox", seed=3,
                    output_type="np", progress=False, classifier_scale=0).images  # fmt: skip
    assert np.array_equal(images, (expected * 255).round().astype(np.uint8))
    assert np.abs(expected - unguided).max() > 0.02  # guided: not the unguided images
    manifest = json.loads((out / "fastddpm_manifest.json").read_text())
    assert len(manifest["settings"]["classifier_sha256"]) == 64


@pytest.mark.parametrize(
    "extra, flags, message",
    [
        (["--classifier", "missing.pt"], MODEL_FLAGS, "--classifier missing.pt: no such file"),
        ([], f"{MODEL_FLAGS} --classifier_scale 1.0", "--flags classifier_scale applies to a classifier, and no --classifier was given"),
        (["--classifier", "CLASSIFIER"], f"{MODEL_FLAGS} --classifier_width 128", "flag classifier_width=128 contradicts the classifier's weights"),
        (["--classifier", "CLASSIFIER"], f"{MODEL_FLAGS} --classifier_pool attention", "flag classifier_pool='attention' contradicts"),
    ],
)  # fmt: skip
def test_bad_classifier_input_exits_2_with_one_line(files, tmp_path, capsys, extra, flags, message):
    model, classifier = files
    extra = [classifier if word == "CLASSIFIER" else word for word in extra]
    out = tmp_path / "never"
    argv = ["sample", model, *extra, "--flags", flags, "-n", "1", "--out", str(out), "--device", "cpu"]
    code, _, stderr = run(argv, capsys)
    assert code == 2
    assert message in stderr and stderr.count("\n") == 1, stderr
    assert not out.exists()


def test_scale_zero_is_their_unguided_sampling(files, tmp_path, capsys):
    """--classifier_scale 0 (their README's way to sample the base model) gives the unguided images."""
    model, classifier = files
    outs = []
    for name, extra in [("guided0", ["--classifier", classifier]), ("plain", [])]:
        flags = (
            MODEL_FLAGS
            + (f" {CLASSIFIER_FLAGS} --classifier_scale 0" if extra else "")
            + " --timestep_respacing ddim2"
        )
        argv = ["sample", model, *extra, "--flags", flags, "-n", "1", "--format", "npz", "--out",
                str(tmp_path / name), "--device", "cpu"]  # fmt: skip
        assert run(argv, capsys)[0] == 0
        outs.append(np.load(next((tmp_path / name).glob("*.npz")))["arr_0"])
    assert np.array_equal(*outs)
