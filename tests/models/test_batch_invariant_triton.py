"""The batch-invariant U-Net on the Triton kernels (FASTDDPM_BATCH_INVARIANT=triton, FASTDDPM_BACKEND=triton),
run on the CPU under the Triton interpreter as CUDA would take them: every convolution and linear layer
through kernels/conv_rows.py, attention through kernels/attention_rows.py, GroupNorm planned by group size. A sample alone gives the same bits as in its
batch, in float32 and bfloat16, and the float32 output matches the torch backend. (On CUDA this path is
compiled, not run: a GPU run of this file is what would let CUDA take it by default.)"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the definition of every triton kernel

pytest.importorskip("triton")

from fastddpm.models import batch_invariant  # noqa: E402
from fastddpm.ops import backend_triton  # noqa: E402
from tests import model_factory  # noqa: E402
from tests.tolerances import assert_close  # noqa: E402

interpreter_only = pytest.mark.skipif(
    not backend_triton.interpreted(),
    reason="kernels are compiled for CUDA here; interpreter tests run on CPU",
)
# 12 and 20 channels in groups of 3 and 5, attention with 4 heads of 5 at 4x4, stride-2 downsampling, 1x1
# shortcuts, scale-shift norm: every layer kind of the diffusers U-Net, small enough for the interpreter.
CONFIG = model_factory.small_cifar10_config(
    sample_size=8,
    block_out_channels=[12, 20],
    norm_num_groups=4,
    down_block_types=["DownBlock2D", "AttnDownBlock2D"],
    up_block_types=["AttnUpBlock2D", "UpBlock2D"],
    layers_per_block=1,
    attention_head_dim=5,
    resnet_time_scale_shift="scale_shift",
)


@pytest.fixture(scope="module")
def unet():
    return model_factory.random_fastddpm_unet(CONFIG, seed=2)


def forward(unet, x, monkeypatch, invariant="triton", backend="triton"):
    monkeypatch.setenv("FASTDDPM_BATCH_INVARIANT", invariant)
    monkeypatch.setenv("FASTDDPM_BACKEND", backend)
    with torch.no_grad():
        return unet(x, torch.tensor(40))


@interpreter_only
@pytest.mark.slow  # about 30 s under the interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_a_sample_alone_matches_its_batch_on_the_triton_kernels(unet, dtype, monkeypatch):
    net = unet.to(dtype)
    try:
        x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(4)).to(dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        calls = []
        for launcher in ("conv2d_rows", "attention_rows"):
            original = getattr(backend_triton, launcher)
            monkeypatch.setattr(
                backend_triton,
                launcher,
                lambda *a, name=launcher, run=original: calls.append(name) or run(*a),
            )
        whole = forward(net, x, monkeypatch)
        assert "conv2d_rows" in calls, "the convolutions did not take kernels/conv_rows.py"
        assert "attention_rows" in calls, "the attention did not take kernels/attention_rows.py"
        singles = torch.cat([forward(net, x[i : i + 1], monkeypatch) for i in range(3)])
        assert torch.equal(singles, whole)
        if dtype == torch.float32:
            # Against the torch backend with the batch-variant layers: float32 rounding, measured 1.2e-6 of
            # an output of scale 2.
            expected = forward(net, x, monkeypatch, invariant="0", backend="torch")
            assert_close(whole, expected, 5e-6 * float(expected.abs().max()), 0, "triton vs torch")
    finally:
        unet.to(torch.float32)


@interpreter_only
def test_asking_for_triton_where_it_cannot_run_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("FASTDDPM_BATCH_INVARIANT", "triton")
    monkeypatch.setattr(backend_triton, "why_not_batch_invariant", lambda x: ["triton is not installed"])
    with (
        torch.no_grad(),
        pytest.raises(
            RuntimeError,
            match="FASTDDPM_BATCH_INVARIANT=triton: the Triton kernels cannot serve: triton is not installed",
        ),
    ):
        batch_invariant.kernels(torch.zeros(1, 3, 4, 4))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_batch_of_eight_equals_eight_single_samples(dtype, monkeypatch):
    # What the CPU run above checks, on a GPU with the compiled kernels (tl.dot on tensor cores) and a net
    # of the cifar10-32 structure at reduced width; against cuDNN / cuBLAS within TF32 / bf16 rounding.
    config = model_factory.small_cifar10_config(sample_size=32)
    net = model_factory.random_fastddpm_unet(config, seed=3).to("cuda", dtype)
    x = torch.randn(8, 3, 32, 32, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    whole = forward(net, x, monkeypatch, invariant="1", backend="auto")
    singles = torch.cat(
        [forward(net, x[i : i + 1], monkeypatch, invariant="1", backend="auto") for i in range(8)]
    )
    assert torch.equal(singles, whole)
    expected = forward(net, x, monkeypatch, invariant="0", backend="auto").float()
    bound = 2e-2 if dtype == torch.bfloat16 else 2e-3  # TF32 / bf16 products on both sides (not measured yet)
    assert_close(whole.float(), expected, bound * float(expected.abs().max()), 0, "conv_rows vs cuDNN")


@interpreter_only
@pytest.mark.parametrize("new_order", [True, False], ids=["QKVAttention", "QKVAttentionLegacy"])
def test_adm_attention_block_on_the_triton_kernels(new_order, monkeypatch):
    """ADM's attention block (both qkv orders, 4 heads of 16) on the Triton path: a sample alone equals its
    batch, and the block matches its batch-variant torch path. (A whole ADM net under the interpreter takes
    about a minute: GroupNorm and each convolution cost ~0.1 s a call there.)"""
    from fastddpm.models.adm_blocks import AttentionBlock

    torch.manual_seed(6)
    block = AttentionBlock(64, heads=4, new_order=new_order).eval()
    for parameter in block.parameters():  # their zero-initialised proj_out would hide the attention
        parameter.data.normal_(0, 0.3)
    x = torch.randn(3, 64, 5, 3).contiguous(memory_format=torch.channels_last)  # 15 tokens
    calls = []
    original = backend_triton.attention_rows
    monkeypatch.setattr(backend_triton, "attention_rows", lambda *a: calls.append(1) or original(*a))
    monkeypatch.setenv("FASTDDPM_BACKEND", "triton")
    monkeypatch.setenv("FASTDDPM_BATCH_INVARIANT", "triton")
    with torch.no_grad():
        whole = block(x)
        singles = torch.cat([block(x[i : i + 1]) for i in range(3)])
        assert calls, "the attention did not take kernels/attention_rows.py"
        monkeypatch.setenv("FASTDDPM_BATCH_INVARIANT", "0")
        monkeypatch.setenv("FASTDDPM_BACKEND", "torch")
        expected = block(x)
    assert torch.equal(singles, whole)
    # float32 rounding of two orders of the same sums: measured 3.8e-7 / 3.2e-7 of the output's scale
    assert_close(whole, expected, 1.5e-6 * float(expected.abs().max()), 0, "triton vs torch attention block")
