"""UNet2D against diffusers' UNet2DModel on the same random weights (float32, CPU)."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch

from fastddpm.models import conv
from fastddpm.models.unet import UNet2D
from fastddpm.models.unet_config import DIFFUSERS_DEFAULTS
from fastddpm.ops import backend_ext, cpu_emulation
from tests.cpu_capability import skip_torch_bf16_attention_under_forced_capability
from tests.model_factory import (
    cifar10_config,
    one_cpu_thread,  # noqa: F401  (a fixture: pytest finds it here)
    random_unet,
    small_256_family_config,
    small_cifar10_config,
)

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("one_cpu_thread")


# max |diff| / max(1, output scale) against diffusers in float32, measured over every comparison of this file
# and tests/checkpoints/ (2-core AMD EPYC, AVX2): at most 2.9e-6 where no Winograd convolution runs (NCHW,
# FASTDDPM_CPU_CONV=direct), 6.0e-6 with the default choice on channels-last input (Winograd F(4,3) on the
# 32 px levels), 1.1e-5 with F(4,3) forced on every level. A GroupNorm epsilon ten times too large moves the
# output by about 1e-4 of its scale: these bounds catch it, the former 1e-4 did not.
UNET_RELATIVE_ERROR = 1e-5
WINOGRAD4_EVERYWHERE_RELATIVE_ERROR = 2.5e-5


def assert_matches(
    actual: torch.Tensor, expected: torch.Tensor, what: str, bound: float = UNET_RELATIVE_ERROR
) -> None:
    """max |diff| <= bound * max(1, output scale)."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite output"
    scale = max(1.0, expected.abs().max().item())
    diff = (actual - expected).abs().max().item()
    assert diff <= bound * scale, f"{what}: max |diff| {diff:.3g} > {bound:g} * {scale:.3g}"


def pair(config: dict, seed: int = 0) -> tuple[torch.nn.Module, UNet2D]:
    model = random_unet(config, seed)
    unet = UNet2D(model.config).eval()
    unet.load_state_dict(model.state_dict(), strict=True)
    return model, unet


def spatial(config: dict) -> tuple[int, int]:
    size = config.get("sample_size") or 32
    return tuple(size) if isinstance(size, (list, tuple)) else (size, size)


def compare(
    config: dict,
    batch: int = 3,
    timestep=None,
    seed: int = 0,
    channels_last: bool = False,
    bound: float = UNET_RELATIVE_ERROR,
    **call,
) -> None:
    model, unet = pair(config, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, config.get("in_channels", 3), *spatial(config), generator=generator)
    if timestep is None:
        timestep = torch.randint(0, 1000, (batch,), generator=generator)
    with torch.no_grad():
        expected = model(x, timestep, **call).sample
        if channels_last:  # fastddpm's CPU fast path: NHWC, oneDNN or Winograd convolutions (conv.py)
            unet = unet.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        actual = unet(x, timestep, **call)
    assert_matches(actual, expected, f"config {config}, t={timestep}", bound)


def test_defaults_are_unet2dmodels():
    signature = inspect.signature(diffusers.UNet2DModel.__init__)
    theirs = {name: p.default for name, p in signature.parameters.items() if name != "self"}
    assert theirs == DIFFUSERS_DEFAULTS


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_small_cifar10_structure(backend, monkeypatch):
    monkeypatch.setenv("FASTDDPM_BACKEND", backend)
    compare(small_cifar10_config())


def test_small_256_family_structure():
    compare(small_256_family_config(), batch=1)


VARIANTS = {
    "multi_head": dict(attention_head_dim=16),
    "scale_shift": dict(resnet_time_scale_shift="scale_shift"),
    "scale_shift_mid_attention_norm": dict(resnet_time_scale_shift="scale_shift", attn_norm_num_groups=4),
    "sin_first_shift_1": dict(flip_sin_to_cos=False, freq_shift=1),
    "cos_first_shift_0": dict(flip_sin_to_cos=True, freq_shift=0),
    "center_input": dict(center_input_sample=True),
    "padding_1": dict(downsample_padding=1),
    "learned_variance_channels": dict(out_channels=6),
    "no_mid_attention": dict(add_attention=False),
    "no_mid_block": dict(mid_block_type=None),
    "mid_scale_factor": dict(mid_block_scale_factor=1.4142135623730951),
    "time_embedding_dim": dict(time_embedding_dim=40),
    "one_layer_two_levels": dict(
        layers_per_block=1,
        block_out_channels=[24, 40],
        down_block_types=["AttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "AttnUpBlock2D"],
        norm_num_groups=4,
        sample_size=[12, 20],
        in_channels=1,
        out_channels=2,
    ),
    "unetres_prefix": dict(
        down_block_types=["UNetResDownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"]
    ),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant(name):
    base = dict(block_out_channels=[16, 32, 32], norm_num_groups=8, sample_size=[8, 16], layers_per_block=1)
    base["down_block_types"] = ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"]
    base["up_block_types"] = ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]
    config = small_cifar10_config(**{**base, **VARIANTS[name]})
    if name == "unetres_prefix":
        config["block_out_channels"] = [16, 32, 32, 32]
        config["up_block_types"] = ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]
    compare(config)


def test_class_embedding():
    config = small_cifar10_config(num_class_embeds=5, block_out_channels=[16, 16, 32, 32], sample_size=16)
    compare(config, class_labels=torch.tensor([4, 0, 2]))
    unet = UNet2D(config)
    with pytest.raises(ValueError, match="class_labels"):
        unet(torch.randn(1, 3, 16, 16), 3)
    with pytest.raises(ValueError, match="class"):
        UNet2D(small_cifar10_config())(torch.randn(1, 3, 32, 32), 3, class_labels=torch.tensor([1]))


SMALL = dict(block_out_channels=[16, 16, 32, 32], sample_size=16)
# Two levels, one layer, attention in both directions and in the mid block: the cheapest full structure.
TWO_LEVELS = dict(
    block_out_channels=[16, 32],
    layers_per_block=1,
    down_block_types=["DownBlock2D", "AttnDownBlock2D"],
    up_block_types=["AttnUpBlock2D", "UpBlock2D"],
    sample_size=8,
    attention_head_dim=8,
)


@pytest.mark.parametrize(
    "timestep",
    [
        0,
        999,
        417,
        torch.tensor(250),
        torch.tensor([7]),
        torch.tensor([3, 600, 999]),
        torch.tensor([1.5, 20.25, 999.0]),
    ],
    ids=["int0", "int999", "int", "0d", "shape1", "batch", "float_batch"],
)
def test_timestep_forms(timestep):
    compare(small_cifar10_config(**SMALL), timestep=timestep)


def test_channels_last_input_gives_channels_last_output():
    model, unet = pair(small_cifar10_config(**SMALL, attention_head_dim=8))
    x = torch.randn(3, 3, 16, 16).to(memory_format=torch.channels_last)
    with torch.no_grad():
        actual = unet(x, torch.tensor([1, 2, 3]))
        expected = model(x.contiguous(), torch.tensor([1, 2, 3])).sample
    assert_matches(actual, expected, "channels_last")
    assert actual.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("algorithm", ["auto", "winograd4", "winograd2", "direct"])
@pytest.mark.parametrize(
    "config", [cifar10_config, small_256_family_config], ids=["cifar10-32", "256px-family-small"]
)
def test_channels_last_cpu_convolutions_match_diffusers(algorithm, config, monkeypatch):
    # Every FASTDDPM_CPU_CONV choice keeps the float32 criterion on the real cifar10-32 config; Winograd
    # F(4,3) is the one with the largest error (conv.py), so it is the one this test guards.
    monkeypatch.setenv("FASTDDPM_CPU_CONV", algorithm)
    bound = WINOGRAD4_EVERYWHERE_RELATIVE_ERROR if algorithm == "winograd4" else UNET_RELATIVE_ERROR
    compare(config(), batch=2, timestep=torch.tensor([640, 3]), channels_last=True, bound=bound)


@pytest.mark.slow
def test_full_cifar10_config_batch_1():
    compare(cifar10_config(), batch=1, timestep=torch.tensor([640]))


def test_from_diffusers_shares_parameters_and_follows_updates():
    model = random_unet(small_cifar10_config(**SMALL))
    unet = UNet2D.from_diffusers(model)
    theirs = dict(model.named_parameters())
    for name, p in unet.named_parameters():
        assert p is theirs[name], name
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([10])
    with torch.no_grad():
        assert_matches(unet(x, t), model(x, t).sample, "shared")
        # An in-place change must reach the cached fused QKV and time-projection weights.
        model.down_blocks[1].attentions[0].to_k.weight.mul_(-2)
        model.down_blocks[0].resnets[0].time_emb_proj.bias.add_(1)
        assert_matches(unet(x, t), model(x, t).sample, "after in-place update")


def test_load_state_dict_refreshes_fused_weights():
    model_a, unet = pair(small_cifar10_config(**SMALL), seed=0)
    model_b = random_unet(small_cifar10_config(**SMALL), seed=5)
    x, t = torch.randn(2, 3, 16, 16), 500
    with torch.no_grad():
        unet(x, t)
        unet.load_state_dict(model_b.state_dict())
        assert_matches(unet(x, t), model_b(x, t).sample, "after load_state_dict")


def test_fused_weights_follow_dtype_round_trips_and_data_swaps():
    model, unet = pair(small_cifar10_config(**TWO_LEVELS))
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([30, 700])
    with torch.no_grad():
        unet(x, t)  # fills the caches
        unet.half().float()  # the weights change (float16 rounding); a stale cache would not see it
        model.half().float()
        assert_matches(unet(x, t), model(x, t).sample, "after half().float()")
        for mine, theirs in (
            (unet.down_blocks[1].attentions[0].to_v, model.down_blocks[1].attentions[0].to_v),
        ):
            fresh = torch.randn(mine.weight.shape) * 0.3
            mine.weight.data = fresh.clone()
            theirs.weight.data = fresh.clone()
        assert_matches(unet(x, t), model(x, t).sample, "after a .data swap")


def test_autograd_matches_diffusers_gradients(monkeypatch):
    monkeypatch.setenv("FASTDDPM_BACKEND", "torch")
    model, unet = pair(small_cifar10_config(**TWO_LEVELS))
    unet.train()
    model.train()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 900])
    target = torch.randn(2, 3, 8, 8)
    ((unet(x, t) - target) ** 2).mean().backward()
    ((model(x, t).sample - target) ** 2).mean().backward()
    theirs = dict(model.named_parameters())
    for name, p in unet.named_parameters():
        assert p.grad is not None, f"no gradient reached {name}"
        expected = theirs[name].grad
        scale = max(1e-3, expected.abs().max().item())
        # measured at most 3.0e-6 of the gradient's scale
        assert (p.grad - expected).abs().max().item() <= 1.5e-5 * scale, name


def test_dtype_device_and_float32_frequencies():
    unet = UNet2D(small_cifar10_config(**SMALL))
    assert unet.dtype == torch.float32 and unet.device == torch.device("cpu")
    unet = unet.to(torch.float64)
    assert unet.dtype == torch.float64
    assert unet.timestep_frequencies.dtype == torch.float32
    assert unet(torch.randn(1, 3, 16, 16, dtype=torch.float64), 5).dtype == torch.float64
    assert "timestep_frequencies" not in unet.state_dict()


def test_config_is_normalised_and_private_keys_ignored():
    config = {"_class_name": "UNet2DModel", "_diffusers_version": "0.1.1", "_name_or_path": "x", **SMALL}
    unet = UNet2D.from_config(small_cifar10_config(**config))
    assert unet.config["block_out_channels"] == (16, 16, 32, 32)
    assert unet.config["resnet_time_scale_shift"] == "default"
    assert "_class_name" not in unet.config


@pytest.mark.parametrize(
    "field, value",
    [
        ("down_block_types", ["CrossAttnDownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"]),
        ("up_block_types", ["UpBlock2D", "UpBlock2D", "SkipUpBlock2D", "UpBlock2D"]),
        ("mid_block_type", "UNetMidBlock2DCrossAttn"),
        ("time_embedding_type", "fourier"),
        ("resnet_time_scale_shift", "ada_group"),
        ("class_embed_type", "timestep"),
        ("act_fn", "gelu"),
        ("downsample_type", "resnet"),
        ("upsample_type", "resnet"),
        ("downsample_padding", 2),
        ("norm_num_groups", 7),
        ("attention_head_dim", 48),
        ("layers_per_block", 0),
        ("block_out_channels", [32, 64]),
        ("some_future_field", 1),
    ],
)
def test_unsupported_field_raises_naming_it(field, value):
    with pytest.raises(ValueError, match=field.split("_")[0]):
        UNet2D(small_cifar10_config(**{field: value}))


@pytest.mark.slow
def test_compile_traces_the_whole_unet_as_one_graph():
    """torch.compile friendliness: dynamo traces the forward with fullgraph=True (eager backend: no codegen).

    Through the default backend choice, warmed up by one eager call (ops imports its backends on first use).
    """
    model, unet = pair(small_cifar10_config(**TWO_LEVELS))
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 4])
    with torch.no_grad():
        unet(x, t)
        compiled = torch.compile(unet, backend="eager", fullgraph=True, dynamic=False)
        assert_matches(compiled(x, t), model(x, t).sample, "compiled")


# max |y - y_diffusers_fp32| / max |y_diffusers_fp32| measured for the SMALL config: bf16 ~1e-2, fp16 ~1.4e-3,
# alike for the float32-inside path and the native 16-bit kernels. The bounds leave a factor of 3-4.
SIXTEEN_BIT_ERROR = {torch.bfloat16: 3e-2, torch.float16: 5e-3}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("emulated", [True, False], ids=["float32-inside", "native-16-bit"])
def test_16_bit_unet_on_cpu_stays_within_16_bit_error(dtype, emulated, monkeypatch):
    # On a CPU without bf16/fp16 instructions the U-Net computes its convolutions and attention blocks in
    # float32 (fastddpm.cpu_emulation); either way the result is as close to float32 as 16 bits allow.
    monkeypatch.setattr(cpu_emulation, "emulates", lambda d: emulated and d == dtype)
    # The batch-invariant mode (tests/test_batch_invariance.py) takes float32-inside kernels either way.
    monkeypatch.setenv("FASTDDPM_BATCH_INVARIANT", "0")
    model, unet = pair(small_cifar10_config(**SMALL, attention_head_dim=8))
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([1, 500, 999])
    with torch.no_grad():
        expected = model(x, t).sample
        low = copy.deepcopy(unet).to(dtype).to(memory_format=torch.channels_last)
        try:
            actual = low(x.to(dtype).contiguous(memory_format=torch.channels_last), t)
        except RuntimeError as error:
            skip_torch_bf16_attention_under_forced_capability(error)
    assert actual.dtype == dtype
    if backend_ext.cpu_kernels_usable():  # else (ATEN_CPU_CAPABILITY=default) the Winograd path steps aside
        assert any(m in conv._transformed for m in low.modules()) == emulated  # which path ran
    error = float((actual.float() - expected).abs().max() / expected.abs().max())
    assert error < SIXTEEN_BIT_ERROR[dtype], f"{dtype}: relative error {error:.3g}"
