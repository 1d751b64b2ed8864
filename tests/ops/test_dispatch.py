"""The dispatcher: FASTDDPM_BACKEND selection, quiet fallback under auto, reasons when a named backend can't serve."""

import pytest
import torch
from fastddpm.kernels.step_columns import NUM_COLUMNS

from fastddpm import ops
from fastddpm.ops import reference


@pytest.fixture(autouse=True)
def fresh_decisions():
    ops.forget_decisions()
    yield
    ops.forget_decisions()


def test_torch_backend_serves_everything_and_matches_reference(monkeypatch):
    monkeypatch.setenv("FASTDDPM_BACKEND", "torch")
    x = torch.randn(3, 6, 5, 7)
    weight, bias = torch.randn(6), torch.randn(6)
    assert ops.backend_for("group_norm", x, 3, weight, bias, 1e-5) == "torch"
    out = ops.group_norm(x, 3, weight, bias, 1e-5, silu=True)
    # the torch backend's group_norm is reference.group_norm: the same function called twice
    assert torch.equal(out, reference.group_norm(x, 3, weight, bias, 1e-5, silu=True))


def test_unknown_backend_name_raises(monkeypatch):
    monkeypatch.setenv("FASTDDPM_BACKEND", "cudnn")
    with pytest.raises(ValueError, match="FASTDDPM_BACKEND='cudnn'"):
        ops.group_norm(torch.randn(1, 2, 2, 2), 1, None, None, 1e-5)


def test_named_backend_that_cannot_serve_lists_its_reasons(monkeypatch):
    monkeypatch.setitem(ops._loaded, "ext", "ext backend unavailable: extension not built")
    monkeypatch.setenv("FASTDDPM_BACKEND", "ext")
    with pytest.raises(ops.BackendUnavailable, match="ext: ext backend unavailable: extension not built"):
        ops.attention(*(torch.randn(1, 1, 4, 8) for _ in range(3)))


def test_auto_falls_back_quietly_to_the_first_backend_that_serves(monkeypatch):
    monkeypatch.setitem(ops._loaded, "ext", "ext backend unavailable: extension not built")
    monkeypatch.setenv("FASTDDPM_BACKEND", "auto")
    q = torch.randn(2, 1, 4, 8)
    # on CPU tensors the triton backend refuses under auto (its interpreter is for tests), so torch serves
    assert ops.backend_for("attention", q, q, q, None) == "torch"
    torch.testing.assert_close(ops.attention(q, q, q), reference.attention(q, q, q))


def test_philox_noise_descriptor_is_drawn_by_the_torch_backend(monkeypatch):
    monkeypatch.setenv("FASTDDPM_BACKEND", "torch")
    x = torch.randn(2, 3, 4, 5)
    coeffs = torch.tensor([0.9, 0.4, 0.5, 0.6, 0.3, -3.0, -2.0, 1.0])
    assert coeffs.numel() == NUM_COLUMNS
    descriptor = ops.PhiloxNoise(seed=5, sample_offset=3, stream=2)
    prev, _ = ops.sampler_step(x, x, coeffs, descriptor, kind="ddpm")
    from fastddpm.ops.noise import philox_normal

    expected, _ = reference.sampler_step(x, x, coeffs, philox_normal(5, 3, 2, (3, 4, 5), 2), kind="ddpm")
    assert torch.equal(prev, expected)  # the backend draws with philox_normal and steps with the reference
    eps_given = torch.randn_like(x)
    xt, eps = ops.q_sample(x, torch.tensor([3, 7]), torch.linspace(0.99, 0.1, 10), eps_given)
    assert eps is eps_given and xt.shape == x.shape


def test_each_call_signature_is_decided_once(monkeypatch):
    monkeypatch.setenv("FASTDDPM_BACKEND", "torch")
    asked = []
    original = ops.why_not
    monkeypatch.setattr(ops, "why_not", lambda *a, **k: asked.append(a[1]) or original(*a, **k))
    x = torch.randn(2, 4, 3, 3)
    for _ in range(3):
        ops.group_norm(x, 2, None, None, 1e-5)
    assert asked == ["group_norm"]
    ops.group_norm(torch.randn(2, 4, 3, 5), 2, None, None, 1e-5)  # another shape: decided again
    ops.group_norm(x, 2, None, None, 1e-5, silu=True)  # another option: decided again
    assert asked == ["group_norm"] * 3


def test_unet_traces_into_one_graph_without_breaks():
    from fastddpm.models.unet import UNet2D
    from tests import model_factory

    config = model_factory.small_cifar10_config(
        sample_size=8, block_out_channels=[8, 8, 8, 8], norm_num_groups=4
    )
    unet = UNet2D.from_diffusers(model_factory.random_unet(config, seed=0))
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 3])
    with torch.no_grad():
        unet(x, t)  # eager first, as Pipeline(compile=True) does: every backend decision is made here
        explanation = torch._dynamo.explain(unet)(x, t)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_a_named_backend_lends_ops_it_lacks_to_the_auto_order(monkeypatch):
    class GroupNormOnly:
        @staticmethod
        def group_norm(*args, **kwargs):
            return "served by the stub"

        @staticmethod
        def why_not_group_norm(*args, **kwargs):
            return []

    monkeypatch.setitem(ops._loaded, "ext", GroupNormOnly)
    monkeypatch.setenv("FASTDDPM_BACKEND", "ext")
    x = torch.randn(2, 3, 4, 5)
    assert ops.group_norm(x, 1, None, None, 1e-5) == "served by the stub"
    coeffs = torch.tensor([0.9, 0.4, 0.5, 0.6, 0.3, -3.0, -2.0, 0.0])
    prev, _ = ops.sampler_step(x, x, coeffs, None, kind="ddim")  # not in the stub: served by torch
    assert torch.equal(prev, reference.sampler_step(x, x, coeffs, None, kind="ddim")[0])
