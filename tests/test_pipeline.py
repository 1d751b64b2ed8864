"""The sampling pipeline against diffusers' DDPMPipeline / DDIMPipeline, Philox determinism, and the loop's
promise of no host syncs."""

import numpy as np
import pytest
import torch

import fastddpm
from fastddpm.ops import backend_ext
from fastddpm.pipeline import PipelineOutput
from tests import model_factory
from tests.tolerances import assert_close

diffusers = pytest.importorskip("diffusers")  # the parity baseline; the GPU image lacks it

# float32 images (in [0, 1]) against diffusers' pipelines, same generator: measured at most 3.2e-6 over
# this file's cases (DDIM 20 steps, eta 0); 2e-5 leaves a factor of 6. A GroupNorm epsilon ten times too
# large moves the images by more than that.
PIPELINE_TOL = 2e-5


def diffusers_pipeline(unet, sampler, **scheduler_overrides):
    config = model_factory.ddpm_scheduler_config(num_train_timesteps=200, **scheduler_overrides)
    if sampler == "ddpm":
        return diffusers.DDPMPipeline(unet, diffusers.DDPMScheduler.from_config(config))
    return diffusers.DDIMPipeline(unet, diffusers.DDIMScheduler.from_config(config))


@pytest.mark.parametrize(
    "sampler,steps,eta,scheduler_overrides",
    [
        ("ddpm", 20, 0.0, {"variance_type": "fixed_large"}),
        ("ddpm", 20, 0.0, {"variance_type": "fixed_small", "clip_sample": False}),
        ("ddim", 20, 0.0, {}),
        ("ddim", 20, 1.0, {"timestep_spacing": "trailing"}),
    ],
)
def test_pipeline_matches_diffusers_with_the_same_generator(
    small_unet, sampler, steps, eta, scheduler_overrides
):
    theirs = diffusers_pipeline(small_unet, sampler, **scheduler_overrides)
    ours = fastddpm.Pipeline.from_diffusers(theirs)
    kwargs = {"eta": eta} if sampler == "ddim" else {}
    expected = theirs(
        batch_size=3, generator=torch.manual_seed(11), num_inference_steps=steps, output_type="np", **kwargs
    )
    got = ours(
        batch_size=3,
        generator=torch.manual_seed(11),
        num_inference_steps=steps,
        sampler=sampler,
        output_type="np",
        progress=False,
        **kwargs,
    )
    assert isinstance(got, PipelineOutput)
    assert got.cuda_graph == "off"  # CPU: no graph requested
    assert_close(
        torch.from_numpy(got.images), torch.from_numpy(expected.images), PIPELINE_TOL, 0, f"{sampler} np"
    )


def test_learned_range_variance_pipeline_matches_diffusers():
    config = model_factory.small_cifar10_config(
        sample_size=8, out_channels=6, block_out_channels=[16, 16, 16, 16], norm_num_groups=4
    )
    unet = model_factory.random_unet(config, seed=5)
    theirs = diffusers_pipeline(unet, "ddpm", variance_type="learned_range")
    ours = fastddpm.Pipeline.from_diffusers(theirs)
    expected = theirs(
        batch_size=2, generator=torch.manual_seed(2), num_inference_steps=10, output_type="pt"
    ).images
    got = ours(
        batch_size=2, generator=torch.manual_seed(2), num_inference_steps=10, output_type="pt", progress=False
    ).images
    assert_close(got, expected, PIPELINE_TOL, 0, "learned_range")


def test_output_types_match_diffusers_conventions(small_unet):
    ours = fastddpm.Pipeline.from_diffusers(diffusers_pipeline(small_unet, "ddim"))
    run = lambda kind: (
        ours(
            batch_size=2, num_inference_steps=3, sampler="ddim", seed=4, output_type=kind, progress=False
        ).images
    )  # noqa: E731
    pt, array, pil = run("pt"), run("np"), run("pil")
    assert pt.shape == (2, 3, 16, 8) and array.shape == (2, 16, 8, 3) and array.dtype == np.float32
    assert 0 <= float(pt.min()) and float(pt.max()) <= 1
    assert np.array_equal(array, pt.permute(0, 2, 3, 1).numpy())  # the same run drawn again, transposed
    assert len(pil) == 2 and pil[0].size == (8, 16) and pil[0].mode == "RGB"
    # the pipeline's PIL conversion is this expression (fastddpm/pipeline.py), on the same floats
    assert np.array_equal(np.asarray(pil[1]), (array[1] * 255).round().astype(np.uint8))


def test_philox_images_do_not_depend_on_batch_size(small_unet):
    pipe = fastddpm.Pipeline.from_diffusers(small_unet)
    common = dict(
        num_inference_steps=4, sampler="ddpm", seed=123, noise="philox", output_type="pt", progress=False
    )
    whole = pipe(batch_size=5, **common).images
    parts = torch.cat(
        [pipe(batch_size=2, **common).images, pipe(batch_size=3, sample_offset=2, **common).images]
    )
    if backend_ext.cpu_kernels_usable():
        # Bit-identical (fastddpm.models.batch_invariant; tests/test_batch_invariance.py has the wider cases).
        assert torch.equal(parts, whole), f"batch 2 + 3 vs 5: {float((parts - whole).abs().max()):.3g} apart"
    else:  # no extension for this CPU: oneDNN / MKL choose by batch (measured 2.6e-6)
        assert_close(parts, whole, 1e-5, 0, "batch 2 + 3 vs 5")
    other_seed = pipe(batch_size=2, **{**common, "seed": 124}).images
    assert (other_seed - whole[:2]).abs().max() > 0.05


def test_default_steps_are_training_steps_for_ddpm_and_50_for_ddim(small_unet, monkeypatch):
    pipe = fastddpm.Pipeline.from_diffusers(diffusers_pipeline(small_unet, "ddpm"))
    seen = []
    original = fastddpm.DDPMScheduler.set_timesteps

    def spy(self, num_inference_steps=None, device=None, timesteps=None):
        seen.append(num_inference_steps)
        return original(self, num_inference_steps, device, timesteps)

    monkeypatch.setattr(fastddpm.DDPMScheduler, "set_timesteps", spy)
    monkeypatch.setattr(fastddpm.DDIMScheduler, "set_timesteps", spy)
    pipe.unet.forward = lambda x, t: torch.zeros_like(x)  # the count is what matters here
    pipe(batch_size=1, progress=False)
    pipe(batch_size=1, sampler="ddim", progress=False)
    assert seen == [200, 50]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"sampler": "lcm"}, "sampler"),
        ({"num_inference_steps": 201}, "num_inference_steps"),
        ({"noise": "sobol"}, "noise"),
        ({"output_type": "jpg"}, "output_type"),
        ({"seed": -1}, "seed"),
        ({"eta": -0.5}, "eta"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(small_unet, kwargs, message):
    pipe = fastddpm.Pipeline.from_diffusers(diffusers_pipeline(small_unet, "ddpm"))
    with pytest.raises(ValueError, match=message):
        pipe(progress=False, **kwargs)


def test_to_casts_the_network_but_keeps_the_sampler_state_float32(small_unet):
    config = model_factory.small_cifar10_config(
        sample_size=8, block_out_channels=[16, 16, 16, 16], norm_num_groups=4
    )
    pipe = fastddpm.Pipeline.from_diffusers(model_factory.random_unet(config, seed=1))
    run = dict(batch_size=2, num_inference_steps=2, sampler="ddim", seed=0, output_type="pt", progress=False)
    float32_images = pipe(**run).images
    pipe.to(dtype="bf16")
    assert pipe.dtype == torch.bfloat16
    images = pipe(**run).images
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
    # Same noise, network in bf16: the images move by the network's bf16 error, amplified where x0 is
    # predicted from eps at small abar (1 / sqrt(abar) is 156 at t = 999): measured max 2.0e-2 to 2.8e-2 over
    # seeds 0-3 (fp16: 1.1e-2 to 1.9e-2), against a pixel spread of 0.46. A network whose output went wrong
    # in bf16 would move the images by a good part of that spread.
    assert_close(images, float32_images, 5e-2, 0, "bf16 vs float32 images")
    with pytest.raises(ValueError, match="dtype"):
        pipe.to(dtype="int8")


def copy_unet(unet):
    import copy

    return copy.deepcopy(unet)


def test_load_from_a_saved_folder_samples_what_the_in_memory_pipeline_samples(small_unet, tmp_path):
    theirs = diffusers_pipeline(small_unet, "ddpm", variance_type="fixed_large")
    theirs.save_pretrained(tmp_path / "saved")
    loaded = fastddpm.load(tmp_path / "saved")
    in_memory = fastddpm.Pipeline.from_diffusers(theirs)
    assert loaded.scheduler.config.variance_type == "fixed_large"
    common = dict(
        batch_size=2, num_inference_steps=5, seed=9, noise="philox", output_type="pt", progress=False
    )
    assert_close(
        loaded(**common).images, in_memory(**common).images, 0, 0, "loaded vs in memory"
    )  # same arithmetic
    loaded.save_pretrained(tmp_path / "resaved")
    again = fastddpm.load(tmp_path / "resaved")
    assert_close(again(**common).images, in_memory(**common).images, 0, 0, "resaved")


def test_channels_last_gives_the_same_images(small_unet):
    pipe = fastddpm.Pipeline.from_diffusers(copy_unet(small_unet))
    common = dict(
        batch_size=3, num_inference_steps=4, seed=2, noise="philox", output_type="pt", progress=False
    )
    nchw = pipe(channels_last=False, **common).images
    nhwc = pipe(channels_last=True, **common).images
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    # The same computation on both sides where the extension serves: the batch-invariant layers take NCHW
    # input through the NHWC kernels (fastddpm.models.batch_invariant). Elsewhere oneDNN chooses by layout.
    if backend_ext.cpu_kernels_usable():
        assert torch.equal(nhwc, nchw)
    else:
        assert_close(nhwc, nchw, 1e-5, 0, "channels_last vs contiguous")


def test_the_step_table_is_built_once_for_repeated_calls(small_unet, monkeypatch):
    pipe = fastddpm.Pipeline.from_diffusers(small_unet)
    built = []
    original = fastddpm.DDPMScheduler.step_table
    monkeypatch.setattr(
        fastddpm.DDPMScheduler, "step_table", lambda self, *a, **k: built.append(1) or original(self, *a, **k)
    )
    common = dict(num_inference_steps=3, seed=1, noise="philox", output_type="pt", progress=False)
    pipe(batch_size=2, **common)
    pipe(batch_size=3, sample_offset=2, **common)  # the CLI's next batch: same schedule
    assert len(built) == 1
    pipe(batch_size=2, **{**common, "num_inference_steps": 4})
    assert len(built) == 2
