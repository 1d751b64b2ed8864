"""The pipeline on a GPU against the same pipeline on the torch backend (reference.py's ops, any device):
the fused kernels (Triton, and the extension's CUDA kernels where enabled) inside the whole loop. Runs only
with CUDA (bench/gpu_check.sh's pipeline stage); not run yet, no GPU has been lent.

float32 with cuDNN's TF32 off, so both sides round as float32; the bound is the CPU's pipeline parity (1e-4)
times ten until a GPU run measures it."""

import copy

import pytest
import torch

import fastddpm
from fastddpm import ops

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++2m-sde", "euler-a"])
def test_fused_backends_match_the_torch_backend(small_fastddpm_unet, sampler, monkeypatch):
    pipe = fastddpm.Pipeline(copy.deepcopy(small_fastddpm_unet)).to("cuda")
    run = dict(batch_size=3, num_inference_steps=4, sampler=sampler, seed=2, noise="philox", output_type="pt")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    fused = pipe(progress=False, **run)
    monkeypatch.setenv("FASTDDPM_BACKEND", "torch")
    ops.forget_decisions()
    try:
        reference = pipe(progress=False, use_cuda_graph=False, **run).images
    finally:
        ops.forget_decisions()
    assert fused.cuda_graph == "replayed"
    assert (fused.images - reference).abs().max().item() < 1e-3
