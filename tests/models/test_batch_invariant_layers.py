"""The U-Net's layers in the batch-invariant CPU mode (fastddpm.models.batch_invariant, the default): every
convolution kind, float32 and 16-bit, within its error of a float64 convolution, and a sample alone giving
the same bits as inside a batch (torch.equal), with 1 or 2 threads."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastddpm.models import conv
from fastddpm.ops import backend_ext
from tests.tolerances import assert_close

pytestmark = pytest.mark.skipif(
    not backend_ext.cpu_kernels_usable(), reason="fastddpm._C's CPU kernels are not built for this CPU"
)
# max |y - y_float64| / max |y_float64| measured here: Winograd F(4x4) ~5e-6, F(2x2) and the row-wise
# product on image patches ~3e-7 (fastddpm/models/conv.py); 16-bit: the output's rounding.
RELATIVE_ERROR = {
    "winograd4": 2e-5,
    "winograd2": 2e-6,
    "rows": 2e-6,
    torch.bfloat16: 8e-3,
    torch.float16: 1e-3,
}


def layer(c, o, **kwargs):
    torch.manual_seed(c * 100 + o)
    reference = nn.Conv2d(c, o, **kwargs)
    ours = conv.Conv2d(c, o, **kwargs)
    ours.load_state_dict(reference.state_dict())
    return ours


@pytest.mark.parametrize(
    "c, o, kwargs, size, path",
    [
        (16, 24, dict(kernel_size=3, padding=1), 16, "winograd4"),  # F(4x4) from 16 px
        (16, 24, dict(kernel_size=3, padding=1), 8, "winograd2"),  # F(2x2) below
        (3, 20, dict(kernel_size=3, padding=1), 9, "winograd2"),  # conv_in: Winograd whatever the channels
        (20, 20, dict(kernel_size=3, stride=2, padding=1), 9, "rows"),  # ADM's downsampling
        (20, 20, dict(kernel_size=3, stride=2, padding=0), 10, "rows"),  # diffusers' (after its pad)
        (20, 36, dict(kernel_size=1), 7, "rows"),  # ResNet shortcut
        (20, 5, dict(kernel_size=3, padding=1, bias=False), 6, "winograd2"),  # no bias, few outputs
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_every_convolution_is_batch_invariant_and_accurate(c, o, kwargs, size, path, dtype):
    module = layer(c, o, **kwargs).to(dtype)
    gen = torch.Generator().manual_seed(size)
    x = torch.randn(5, c, size, size, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = F.conv2d(x.double(), module.weight.double(), None if module.bias is None else module.bias.double(),
                            stride=module.stride, padding=module.padding)  # fmt: skip
        residual = torch.randn(expected.shape, generator=gen).to(dtype)
        out = module(x, residual)
        torch.set_num_threads(2)  # tests/conftest.py restores the count
        singles = torch.cat([module(x[i : i + 1], residual[i : i + 1]) for i in range(5)])
    assert out.dtype == dtype and out.shape == expected.shape
    # Which kernel served: oneDNN happens to be batch-invariant on some CPUs (an AMD EPYC with AVX2, for
    # these shapes) and not on others (an Intel Xeon with AVX-512), so equality alone cannot tell here.
    assert module in (conv._packed if path == "rows" else conv._transformed), f"{path} did not serve"
    expected = expected + residual.double()
    bound = RELATIVE_ERROR[path] if dtype == torch.float32 else RELATIVE_ERROR[dtype]
    assert_close(out.double(), expected, bound * float(expected.abs().max()), 0, f"{path} {dtype}")
    assert torch.equal(singles, out), "a sample alone differs from the same sample in its batch"


def test_direct_means_no_winograd_in_the_batch_invariant_mode(monkeypatch):
    monkeypatch.setenv("FASTDDPM_CPU_CONV", "direct")
    module = layer(16, 16, kernel_size=3, padding=1)
    x = torch.randn(2, 16, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = module(x)
        expected = F.conv2d(x.double(), module.weight.double(), module.bias.double(), padding=1)
    assert module not in conv._transformed and module in conv._packed
    assert_close(out.double(), expected, RELATIVE_ERROR["rows"] * float(expected.abs().max()), 0, "direct")


def test_nchw_input_and_autograd_take_the_usual_paths():
    module = layer(8, 8, kernel_size=1)
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():  # NCHW is copied to NHWC first: the same matmul_rows on the same values
        assert torch.equal(module(x), module(x.contiguous(memory_format=torch.channels_last)))
    x.requires_grad_(True)
    module(x).sum().backward()  # grad enabled: nn.Conv2d, which has a backward
    assert x.grad is not None
