"""The fast samplers on ADM checkpoints against diffusers' standard loop with diffusers' own scheduler class.

The reference loop is written out here: the scheduler config derived from their process (trained_betas =
their float64 betas, num_train_timesteps = diffusion_steps, epsilon prediction), x_T * init_noise_sigma,
scale_model_input, the independent reference net (tests/adm_reference.py) at t * 1000 / diffusion_steps
when rescale_timesteps, its first 3 (epsilon) channels, step. Tiny nets and few steps keep it fast.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch

import fastddpm
from fastddpm import pipeline as pipeline_module
from fastddpm.schedulers import samplers
from tests.adm_checkpoint import reference_model, save_checkpoint

# module-level skip where diffusers is absent (the GPU image), not a collection error
diffusers = pytest.importorskip("diffusers")

# The reference runs diffusers' scheduler arithmetic in float64 (x in float64, the net and the noise in
# float32): these nets' sigma_max is 8e4, and in float32 Heun's second slope (x - x0) / sigma_next cancels
# to 2e-3 of the sample (float32 diffusers vs fastddpm's table form, which folds it to the model output
# exactly: 1.9e-3 for improved_cifar10 heun). Against the float64 loop, max |ours - diffusers' loop| /
# max |diffusers' loop| over the raw final samples, measured with the CPU default channels_last network:
# 4.6e-7 .. 1.6e-6 on the 4-level nets (NCHW: 2.3e-7 .. 7.8e-7), 9.1e-6 .. 2.1e-5 on the deeper
# improved_lsun-shaped x0 net (NCHW: 4.7e-6 .. 7.0e-6; its convolutions differ more from the reference's,
# as in test_adm_sampling.py). Wrong timestep scaling gives 2e-2 .. 3.4e-2, the variance half instead of
# epsilon 0.5.
# On one torch thread (tests/conftest.py); with two, oneDNN's other reduction order grows Heun's error on
# guided_64_cond to 1.2e-4 in its 3 steps.
TOLERANCE = {"improved_cifar10": 5e-6, "guided_64_cond": 5e-6, "x0_prediction": 5e-5}
# SA-Solver against its float64 loop: measured 1.1e-6 (improved_cifar10), 8.0e-6 (guided_64_cond, Karras
# sigmas, where the table's float32-rounded weights cancel; diffusers' float32 loop is 1.0e-5 off it there).
SA_SOLVER_TOLERANCE = 2e-5


def diffusers_loop(model, flags, name, karras, steps, batch, size, labels, generator):
    from diffusers.utils.torch_utils import randn_tensor

    from tests import adm_reference

    class_name, overrides = samplers.SAMPLERS[name]
    betas = adm_reference.named_beta_schedule(flags["noise_schedule"], flags["diffusion_steps"])
    config = {
        "num_train_timesteps": flags["diffusion_steps"],
        "trained_betas": betas.tolist(),
        "prediction_type": "sample" if flags["predict_xstart"] else "epsilon",
        **overrides,
        **({"use_karras_sigmas": True} if karras else {}),
    }
    scheduler = getattr(diffusers, class_name).from_config(config)
    scheduler.set_timesteps(steps)
    if name == "sa-solver":
        # its weights come from the 0-d sigma tensors (exp((1 + tau^2) lambda) into cancelling Lagrange
        # weights): with float32 sigmas, diffusers' own loop is 1.0e-5 off this float64 one on
        # guided_64_cond with Karras sigmas (see SA_SOLVER_TOLERANCE)
        scheduler.sigmas = scheduler.sigmas.double()
    if labels is None and flags["class_cond"]:
        labels = torch.randint(0, 1000, (batch,), generator=generator)  # drawn before x_T, as their scripts
    x = randn_tensor((batch, 3, size, size), generator=generator, dtype=torch.float32)
    x = x.double() * scheduler.init_noise_sigma  # the sampler's arithmetic in float64 (see TOLERANCE)
    if class_name == "DPMSolverSDEScheduler":
        # its Brownian tree in float32 as fastddpm's (step would build it in x's float64, other numbers);
        # seeded from the global RNG, where step would seed it
        from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler

        sigmas = scheduler.sigmas
        scheduler.noise_sampler = BrownianTreeNoiseSampler(
            x.float(), sigmas[sigmas > 0].min().item(), sigmas.max().item(), scheduler.noise_sampler_seed
        )
    scale = 1000.0 / flags["diffusion_steps"] if flags["rescale_timesteps"] else 1.0
    kwargs = {"y": labels} if flags["class_cond"] else {}
    # diffusers' singlestep DPM-Solver draws its SDE noise in the converted output's dtype, float64 here,
    # where a float32 run draws float32 normals (other numbers from the same generator): keep those
    from diffusers.schedulers import scheduling_dpmsolver_singlestep as singlestep

    def float32_draw(shape, **kw):
        return randn_tensor(shape, **{**kw, "dtype": torch.float32}).to(kw["dtype"])

    with torch.no_grad(), mock.patch.object(singlestep, "randn_tensor", float32_draw):
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(x, t)
            t_model = (t.float() * scale).reshape(1).expand(batch)
            eps = model(model_input.float(), t_model, **kwargs)[:, :3]  # float32: noise drawn as float32
            step_kwargs = (
                {"generator": generator} if "generator" in scheduler.step.__code__.co_varnames else {}
            )
            x = scheduler.step(eps, t, x, **step_kwargs).prev_sample.double()
    return x.float()


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    """improved_cifar10: learn_sigma, rescale_timesteps, 4000 cosine steps; guided_64_cond: class labels,
    1000 cosine steps, no rescaling; x0_prediction: predict_xstart, fixed variances, 1000 linear steps."""
    loaded = {}
    for key, family, extra in [
        ("improved_cifar10", "improved_cifar10", ""),
        ("guided_64_cond", "guided_64_cond", ""),
        ("x0_prediction", "improved_lsun", "--learn_sigma False --predict_xstart True"),
    ]:
        model, given, flags, size = reference_model(family, extra_flags=extra)
        path = save_checkpoint(model, tmp_path_factory.mktemp(key) / "model.pt")
        loaded[key] = (fastddpm.load(path, sample_size=size, **given), model, flags, size)
    return loaded


CASES = [
    ("improved_cifar10", "dpm++2m", False, 6, None),
    ("improved_cifar10", "unipc", False, 6, None),
    ("improved_cifar10", "euler", False, 6, None),
    ("improved_cifar10", "euler", True, 5, None),  # Karras sigmas: float timesteps
    ("improved_cifar10", "heun", False, 3, None),
    ("improved_cifar10", "dpm++2m-sde", False, 5, None),
    ("improved_cifar10", "euler-a", False, 5, None),
    ("guided_64_cond", "dpm++2m", True, 5, [3, 777]),
    ("guided_64_cond", "unipc", False, 5, None),  # labels drawn from the generator before x_T
    ("guided_64_cond", "heun", False, 3, [10, 0]),
    ("guided_64_cond", "pndm", False, 5, [1, 2]),
    ("guided_64_cond", "deis", False, 5, [5, 6]),
    ("guided_64_cond", "dpm++3m", False, 5, [7, 8]),
    ("improved_cifar10", "lms", False, 6, None),
    ("guided_64_cond", "dpm++2s", False, 5, [4, 9]),
    ("guided_64_cond", "dpm++3s", True, 5, None),  # 6 Karras steps repeat timestep 999: diffusers fails
    ("improved_cifar10", "dpm++2s-sde", False, 5, None),
    ("x0_prediction", "lms", False, 4, None),
    ("x0_prediction", "dpm++3s", False, 4, None),
    ("improved_cifar10", "sa-solver", False, 5, None),  # stochastic: a draw at every step
    ("guided_64_cond", "sa-solver", True, 5, [4, 11]),
    ("improved_cifar10", "dpm-sde", False, 3, None),
    ("guided_64_cond", "dpm-sde", True, 3, [4, 9]),
    ("x0_prediction", "euler", False, 4, None),
    ("x0_prediction", "dpm++2m", True, 4, None),
]


@pytest.mark.parametrize("family, name, karras, steps, labels", CASES)
def test_fast_samplers_match_diffusers_loop_on_adm(pipes, family, name, karras, steps, labels, monkeypatch):
    pipe, model, flags, size = pipes[family]
    # Random nets' epsilon is far from the noise, so their few-step samples lie far outside [-1, 1] and
    # the images would all clamp to 0 or 1 (equal whatever the loop did): compare the raw final samples.
    monkeypatch.setattr(pipeline_module, "to_output", lambda x, output_type: x)
    torch.manual_seed(5)  # dpm-sde's Brownian tree takes its seed from the global RNG, on both sides
    samples = pipe(
        batch_size=2, sampler=name, num_inference_steps=steps, karras=karras, class_labels=labels,
        generator=torch.Generator().manual_seed(4), output_type="pt", progress=False,
    ).images  # fmt: skip
    label_tensor = None if labels is None else torch.tensor(labels)
    torch.manual_seed(5)
    expected = diffusers_loop(
        model, flags, name, karras, steps, 2, size, label_tensor, torch.Generator().manual_seed(4)
    )
    assert expected.abs().max().item() > 1.5  # far from the clamp: the comparison can fail
    error = ((samples - expected).abs().max() / expected.abs().max()).item()
    print(f"MEASURED {family} {name} karras={karras}: {error:.2e} of {expected.abs().max().item():.3g}")
    assert error < (SA_SOLVER_TOLERANCE if name == "sa-solver" else TOLERANCE[family])


def test_fast_sampler_names_are_no_longer_refused_and_unknown_ones_error(pipes):
    pipe = pipes["improved_cifar10"][0]
    run = dict(batch_size=1, num_inference_steps=2, output_type="pt", progress=False)
    images = pipe(sampler="dpm++2m", noise="philox", seed=1, **run).images
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()
    with pytest.raises(ValueError, match=r"^sampler 'dpm\+\+9m' is not one of ddpm, ddim, pndm") as error:
        pipe(sampler="dpm++9m", **run)
    assert "\n" not in str(error.value) and "do not run" not in str(error.value)
    with pytest.raises(
        ValueError, match="timestep_respacing applies to ADM checkpoints' ddpm and ddim samplers only"
    ):
        pipe(sampler="unipc", timestep_respacing="3", **run)
    with pytest.raises(ValueError, match="'ddim' has no Karras sigmas"):
        pipe(sampler="ddim", karras=True, **run)


def test_philox_labels_and_noise_do_not_depend_on_the_batch(pipes):
    pipe = pipes["guided_64_cond"][0]
    run = dict(sampler="dpm++2m-sde", num_inference_steps=3, noise="philox", seed=3, output_type="pt")
    both = pipe(batch_size=2, progress=False, **run).images
    second = pipe(batch_size=1, sample_offset=1, progress=False, **run).images
    assert (both[1:] - second).abs().max().item() < 1e-5


def test_x0_models_refuse_samplers_without_sample_prediction_in_one_line(pipes):
    pipe = pipes["x0_prediction"][0]
    with pytest.raises(ValueError, match="prediction_type='sample' is not epsilon or v_prediction"):
        pipe(batch_size=1, sampler="pndm", num_inference_steps=2, progress=False)
