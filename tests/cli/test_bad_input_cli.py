"""Bad input on the command line (issue 22): one line on stderr, exit 2, nothing written is lost; and the
flags that cannot apply are refused rather than ignored."""

from __future__ import annotations

import json

import pytest

from tests.cli.test_cli import run_in_process


def one_line_refusal(code: int, stdout: str, stderr: str) -> str:
    assert code == 2, f"exit {code}, stderr {stderr!r}"
    assert stdout == "" and "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, f"stderr must be one line, got {stderr!r}"
    return lines[0]


def test_bench_in_bfloat16_compares_with_diffusers_ddim_and_ddpm(capsys):
    """diffusers' DDIMPipeline / DDPMPipeline with output_type="np" call .numpy() on bfloat16 images, which
    numpy lacks: the reference side now converts to float32 itself."""
    pytest.importorskip("diffusers")
    for sampler in ("ddim", "ddpm"):
        argv = ["bench", "--dtype", "bfloat16", "--sampler", sampler, "--steps", "2", "--batch-size", "1"]
        code, stdout, stderr = run_in_process([*argv, "--repeats", "1", "--threads", "1", "--json"], capsys)
        assert code == 0, stderr
        result = json.loads(stdout)
        assert result["dtype"] == "bfloat16"
        assert [row["engine"] for row in result["results"]] == ["fastddpm", "diffusers"]
        assert 0 <= result["max_image_diff_vs_diffusers"] <= 1  # a number: both sides made images


def test_bench_refuses_a_schedule_with_no_finite_update_as_sample_does(tmp_path, capsys):
    argv = ["--sampler", "dpm++2m", "--steps", "1000", "--threads", "1"]
    bench = one_line_refusal(*run_in_process(["bench", *argv, "--batch-size", "1"], capsys))
    sample = one_line_refusal(
        *run_in_process(["sample", *argv, "--num", "1", "--out", str(tmp_path / "o")], capsys)
    )
    assert bench.removeprefix("fastddpm bench: ") == sample.removeprefix("fastddpm sample: ")
    assert "has no finite update" in bench


@pytest.mark.parametrize("error", ["oserror", "safetensors"])
def test_convert_onto_a_full_disk_is_one_line_naming_the_destination_and_leaves_nothing(
    tmp_path, capsys, monkeypatch, error
):
    import errno

    import safetensors.torch
    from safetensors import SafetensorError

    from fastddpm.pipeline import DEFAULT_MODEL_DIR

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:  # a partial file, as a write cut short leaves
            handle.write(b"\0" * 16)
        if error == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    destination = tmp_path / "converted"
    line = one_line_refusal(*run_in_process(["convert", str(DEFAULT_MODEL_DIR), str(destination)], capsys))
    assert line.startswith(f"fastddpm convert: cannot write {destination}: ") and "No space left" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no destination, no staging folder
    # an empty destination folder given by the user stays as it was
    destination.mkdir()
    one_line_refusal(*run_in_process(["convert", str(DEFAULT_MODEL_DIR), str(destination)], capsys))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted"] and not any(destination.iterdir())


def folder_state(folder) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones and the manifest included), by relative name."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_a_change_of_format_does_not_slip_past_the_manifest(tmp_path, capsys):
    out = tmp_path / "m"
    first = ["sample", "-n", "3", "--steps", "2", "--format", "npz", "--out", str(out), "--threads", "1"]
    code, _, stderr = run_in_process(first, capsys)
    assert code == 0, stderr
    before = folder_state(out)
    other = ["sample", "-n", "3", "--steps", "3", "--seed", "5", "--sampler", "euler", "--out", str(out)]
    line = one_line_refusal(*run_in_process([*other, "--threads", "1"], capsys))
    assert "other settings" in line and "format 'npz' there, 'png' here" in line
    # the same settings but the format: refused as well
    same = ["sample", "-n", "3", "--steps", "2", "--format", "png", "--out", str(out), "--threads", "1"]
    assert "format 'npz' there, 'png' here" in one_line_refusal(*run_in_process(same, capsys))
    assert folder_state(out) == before


@pytest.fixture(scope="module")
def adm_checkpoint(tmp_path_factory):
    from tests.adm_checkpoint import reference_model, save_checkpoint

    model, _, _, _ = reference_model("improved_cifar10")
    return str(save_checkpoint(model, tmp_path_factory.mktemp("adm") / "cifar10_uncond.pt"))


def respaced_flags() -> str:
    from tests.adm_families import FAMILIES

    return FAMILIES["improved_cifar10"][0] + " --timestep_respacing 2"


@pytest.mark.parametrize(
    "command, extra, message",
    [
        (
            "sample",
            ["--sampler", "ddpm", "--steps", "3"],
            "--steps 3 and --flags timestep_respacing 2 both set",
        ),
        ("sample", ["--sampler", "dpm++2m", "--steps", "3"], "applies to --sampler ddpm and ddim only"),
        ("sample", ["--sampler", "dpm++2m"], "applies to --sampler ddpm and ddim only"),
        ("bench", ["--sampler", "ddim", "--steps", "3"], "bench sets the steps with --steps"),
        ("bench", ["--sampler", "dpm++2m", "--steps", "3"], "applies to --sampler ddpm and ddim only"),
    ],
)
def test_a_respacing_in_flags_that_would_go_unused_is_refused(
    adm_checkpoint, tmp_path, capsys, command, extra, message
):
    argv = [command, adm_checkpoint, "--flags", respaced_flags(), *extra, "--device", "cpu", "--threads", "1"]
    if command == "sample":
        argv += ["-n", "1", "--out", str(tmp_path / "o")]
    line = one_line_refusal(*run_in_process(argv, capsys))
    assert message in line
    assert not (tmp_path / "o").exists()


def test_an_empty_out_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_line_refusal(*run_in_process(["sample", "-n", "1", "--steps", "2", "--out", ""], capsys))
    assert "--out '' is empty" in line
    assert list(tmp_path.iterdir()) == []


def test_a_closed_stdout_is_not_an_error():
    """`fastddpm info --json | head -c 10`: the reader is gone before the output is written."""
    import os
    import subprocess
    import sys

    from tests.cli.test_cli import REPO_ROOT, cli_env

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "fastddpm.cli", "info", "--json", "--threads", "1"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=REPO_ROOT, timeout=300,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (0, "")


def test_a_refused_pickle_is_one_line_without_torchs_warning(tmp_path):
    """A plain pickle (protocol 4, not torch.save's zip) made torch's weights_only unpickler warn in two
    lines about the protocol before fastddpm's one line."""
    import pickle

    from tests.cli.test_cli import run_cli

    path = tmp_path / "plain.pt"
    with open(path, "wb") as handle:
        pickle.dump({"weight": __import__("fractions").Fraction(1, 3)}, handle, protocol=4)
    result = run_cli("info", path, "--threads", "1", check=False, timeout=300)
    line = one_line_refusal(result.returncode, result.stdout, result.stderr)
    assert line == (
        f"fastddpm info: cannot read checkpoint {path}: refused to unpickle, the file holds objects other "
        "than tensors (unpickling it could run code)"
    )


def test_dtype_takes_the_python_aliases_and_the_summary_says_dtype_and_karras(tmp_path, capsys):
    out = tmp_path / "bf16"
    argv = ["sample", "-n", "1", "--steps", "2", "--out", str(out), "--threads", "1"]
    code, stdout, stderr = run_in_process([*argv, "--dtype", "bf16"], capsys)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert (summary["dtype"], summary["karras"], summary["steps"]) == ("bfloat16", False, 2)
    assert json.loads((out / "fastddpm_manifest.json").read_text())["settings"]["dtype"] == "bfloat16"
    # the long name is the same setting: the rerun resumes the folder
    code, stdout, stderr = run_in_process([*argv, "--dtype", "BFloat16"], capsys)
    assert code == 0 and json.loads(stdout)["skipped"] == 1, stderr
    line = one_line_refusal(*run_in_process([*argv, "--dtype", "float8"], capsys))
    assert "--dtype" in line and "'float8' is not one of float32 (fp32), bfloat16 (bf16)" in line


def test_the_summary_reports_the_steps_a_respacing_keeps(adm_checkpoint, tmp_path, capsys):
    argv = ["sample", adm_checkpoint, "--flags", respaced_flags(), "--sampler", "ddpm", "-n", "1"]
    code, stdout, stderr = run_in_process([*argv, "--out", str(tmp_path / "o"), "--threads", "1"], capsys)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["steps"] == 2 and summary["dtype"] == "float32" and summary["karras"] is False
