"""fastddpm.conv.Conv2d: bit-identical to nn.Conv2d, reordered weight reused and refreshed correctly."""

import copy

import pytest
import torch
from torch import nn

from fastddpm import conv


def pair(in_channels=6, out_channels=10, **kwargs):
    reference = nn.Conv2d(in_channels, out_channels, **kwargs)
    ours = conv.Conv2d(in_channels, out_channels, **kwargs)
    ours.load_state_dict(reference.state_dict())
    return ours, reference


@pytest.mark.parametrize(
    "kwargs", [dict(kernel_size=3, padding=1), dict(kernel_size=3, stride=2, padding=0), dict(kernel_size=1)]
)
@pytest.mark.parametrize("channels_last", [True, False])
def test_matches_nn_conv2d(kwargs, channels_last):
    ours, reference = pair(**kwargs)
    x = torch.randn(3, 6, 9, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out, expected = ours(x), reference(x)
    assert torch.equal(out, expected)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_reordered_weight_is_reused_and_refreshed_after_changes():
    ours, reference = pair(kernel_size=3, padding=1)
    x = torch.randn(2, 6, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ours(x)
        first = conv._reordered[ours]
        ours(x)
        assert conv._reordered[ours] is first  # same weight, same shape: reused
        ours.weight.mul_(0.5)
        reference.weight.mul_(0.5)
        assert torch.equal(ours(x), reference(x))  # in-place change: refreshed
        x2 = torch.randn(5, 6, 4, 4).contiguous(memory_format=torch.channels_last)
        assert torch.equal(ours(x2), reference(x2))  # new shape: refreshed
    clone = copy.deepcopy(ours)  # the cache lives outside the module
    with torch.no_grad():
        assert torch.equal(clone(x), reference(x))


def test_autograd_goes_through_nn_conv2d():
    ours, reference = pair(kernel_size=3, padding=1)
    x = torch.randn(2, 6, 5, 5).contiguous(memory_format=torch.channels_last)
    ours(x).sum().backward()
    reference(x).sum().backward()
    assert ours not in conv._reordered
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad)
