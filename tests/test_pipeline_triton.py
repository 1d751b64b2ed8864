"""The whole sampling pipeline on the triton backend (Triton interpreter on CPU) matches the torch backend.

FASTDDPM_BACKEND=triton runs every GroupNorm and every sampler step of the loop through the Triton
kernels (group_norm, sampler_step with in-kernel philox noise); FASTDDPM_BACKEND=torch runs the
reference. The U-Net has no attention blocks: the triton backend has no attention kernel, and a named
backend serves every op or raises.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the definition of every triton kernel

pytest.importorskip("triton")

import fastddpm  # noqa: E402
from fastddpm.ops import backend_triton  # noqa: E402
from tests import model_factory  # noqa: E402
from tests.tolerances import assert_close  # noqa: E402

interpreter_only = pytest.mark.skipif(
    not backend_triton.interpreted(),
    reason="kernels are compiled for CUDA here; interpreter tests run on CPU",
)


def _tiny_unet_without_attention():
    config = model_factory.small_cifar10_config(
        sample_size=[8, 6],  # H != W
        block_out_channels=[6, 10],
        down_block_types=["DownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "UpBlock2D"],
        layers_per_block=1,
        norm_num_groups=2,  # groups of 3 and 5 channels
        add_attention=False,
    )
    return model_factory.random_unet(config, seed=5)


def _sample(pipe, monkeypatch, backend, **kwargs):
    monkeypatch.setenv("FASTDDPM_BACKEND", backend)
    common = dict(
        batch_size=3, num_inference_steps=10, noise="philox", seed=77, output_type="pt", progress=False
    )
    return pipe(**{**common, **kwargs}).images


@interpreter_only
def test_triton_pipeline_matches_torch_pipeline(monkeypatch):
    # DDPM only: each interpreted step costs seconds, and DDIM's step is covered kernel-level.
    pipe = fastddpm.Pipeline.from_diffusers(_tiny_unet_without_attention())
    expected = _sample(pipe, monkeypatch, "torch", sampler="ddpm")
    calls = []
    for op in ("group_norm", "sampler_step"):
        served = getattr(backend_triton, op)
        monkeypatch.setattr(
            backend_triton, op, lambda *a, _op=op, _f=served, **k: calls.append(_op) or _f(*a, **k)
        )
    actual = _sample(pipe, monkeypatch, "triton", sampler="ddpm")
    assert (
        calls.count("sampler_step") == 10 and calls.count("group_norm") == 10 * 17
    )  # 8 resnets x 2 norms + norm_out
    inside = ((expected > 0) & (expected < 1)).double().mean()
    assert inside > 0.5, f"only {inside:.0%} of the pixels are unclamped: the comparison would say little"
    assert_close(
        actual, expected, 3e-6, 0, what="ddpm pipeline, triton vs torch backend, 10 philox steps"
    )  # measured 6.0e-7


@interpreter_only
@pytest.mark.parametrize("sampler", ["dpm++2m-sde", "heun"])
def test_triton_multistep_pipeline_matches_torch_pipeline(monkeypatch, sampler):
    """The table-driven loop with every update in the linear_update kernel (in-kernel Philox for the SDE)."""
    pipe = fastddpm.Pipeline.from_diffusers(_tiny_unet_without_attention())
    expected = _sample(pipe, monkeypatch, "torch", sampler=sampler, num_inference_steps=4)
    calls = []
    served = backend_triton.linear_update
    monkeypatch.setattr(backend_triton, "linear_update", lambda *a, **k: calls.append(1) or served(*a, **k))
    actual = _sample(pipe, monkeypatch, "triton", sampler=sampler, num_inference_steps=4)
    assert len(calls) == {"dpm++2m-sde": 4, "heun": 7}[sampler]  # Heun: 2 evaluations a step but the last
    print(f"MEASURED {sampler}: {(actual - expected).abs().max().item():.2e}")
    # measured 3.9e-6 (heun) and 0 (dpm++2m-sde): the multistep kernel equals the reference bit for
    # bit (tests/kernels), the GroupNorm kernel does not, and Heun's x / sqrt(sigma^2 + 1) input and long
    # first step amplify its differences more than DDPM's steps do
    assert_close(actual, expected, 1e-5, 0, what=f"{sampler} pipeline, triton vs torch backend")
