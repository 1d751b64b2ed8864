"""fastddpm.load on a device this machine lacks: a one-line ValueError naming it, not torch's driver error."""

from __future__ import annotations

import pytest
import torch

import fastddpm


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda", 0)])
def test_load_on_a_missing_gpu_names_the_device(device):
    with pytest.raises(ValueError) as error:
        fastddpm.load(device=device)
    message = str(error.value)
    assert repr(device) in message and "no CUDA GPU" in message and "\n" not in message


def test_missing_gpu_count_and_unknown_names_are_refused_too(monkeypatch):
    with pytest.raises(ValueError, match=r"device 'gpu0' is not a device name torch knows"):
        fastddpm.load(device="gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(
        ValueError, match=r"device 'cuda:2' is not available: torch sees 2 CUDA GPU\(s\) here"
    ):
        fastddpm.load(device="cuda:2")


def test_pipeline_to_checks_the_device_as_load_does():
    pipe = fastddpm.load(device="cpu", dtype="bf16")
    assert pipe.device.type == "cpu" and pipe.dtype == torch.bfloat16
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda' is not available"):
            pipe.to("cuda")
