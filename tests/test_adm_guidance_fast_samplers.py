"""Classifier guidance on the fast samplers: the score correction eps - sqrt(1 - abar_t) * gradient (x0 +
(1 - abar_t) / sqrt(abar_t) * gradient for x0-predicting nets) before the sampler's update, against
diffusers' standard loop with diffusers' own scheduler over the independent reference net and classifier,
the correction written out here (abar at a fractional Karras timestep from the log-sigma interpolation
diffusers maps sigmas to timesteps with). Also: the guided loop step does no host sync, for ADM's own loops
and the table-driven samplers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fastddpm
from fastddpm import pipeline as pipeline_module
from fastddpm.schedulers import samplers
from tests.adm_checkpoint import reference_model, save_checkpoint
from tests.adm_classifiers import OTHER_POOLS, reference_classifier, save_classifier
from tests.engine.test_sampling_loop import host_syncs_forbidden

diffusers = pytest.importorskip("diffusers")

# max |ours - diffusers' loop| / max |diffusers' loop| over the raw final samples (the loop in float64, the
# nets in float32, as tests/test_adm_fast_samplers.py): measured 4.1e-6 .. 4.9e-6 (5 steps, batch 2).
TOLERANCE = 2e-5
SCALE = 300.0
MOVES_AT_LEAST = 0.1  # relative change of the raw samples that guidance makes (measured 0.92 .. 1.18)


@pytest.fixture(scope="module")
def guided(tmp_path_factory):
    """guided_64_cond at 16 px with an adaptive-pool classifier of its size (the pool takes any size), and
    the same net predicting x0 (predict_xstart) for the other correction."""
    folder = tmp_path_factory.mktemp("guided")
    classifier, classifier_given = reference_classifier(OTHER_POOLS["adaptive"], seed=2)
    classifier_path = save_classifier(classifier, folder / "classifier.pt")
    loaded = {}
    for key, extra in [("eps", ""), ("x0", "--learn_sigma False --predict_xstart True")]:
        model, given, flags, size = reference_model("guided_64_cond", extra_flags=extra)
        path = save_checkpoint(model, folder / f"{key}.pt")
        flags_given = {**given, **{k: v for k, v in classifier_given.items() if k != "image_size"}}
        pipe = fastddpm.load(path, classifier=classifier_path, sample_size=size, **flags_given)
        loaded[key] = (pipe, model, flags, size)
    return loaded, classifier


def guided_diffusers_loop(model, classifier, flags, name, karras, steps, size, labels, generator):
    from diffusers.utils.torch_utils import randn_tensor

    from tests import adm_reference
    from tests.adm_classifier_reference import cond_fn_for

    class_name, overrides = samplers.SAMPLERS[name]
    betas = adm_reference.named_beta_schedule(flags["noise_schedule"], flags["diffusion_steps"])
    x0_net = flags["predict_xstart"]
    config = {
        "num_train_timesteps": flags["diffusion_steps"],
        "trained_betas": betas.tolist(),
        "prediction_type": "sample" if x0_net else "epsilon",
        **overrides,
        **({"use_karras_sigmas": True} if karras else {}),
    }
    scheduler = getattr(diffusers, class_name).from_config(config)
    scheduler.set_timesteps(steps)
    abar = np.cumprod(1.0 - betas)
    log_sigmas = 0.5 * np.log((1 - abar) / abar)
    cond_fn = cond_fn_for(classifier, SCALE)
    x = randn_tensor((len(labels), 3, size, size), generator=generator, dtype=torch.float32)
    x = x.double() * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(x, t).float()
            t_model = t.float().reshape(1).expand(len(labels))
            output = model(model_input, t_model, labels)[:, :3]
            sigma = math.exp(np.interp(float(t), np.arange(len(abar)), log_sigmas))
            grad = cond_fn(model_input, t_model, labels)
            if x0_net:  # eps' = eps - sqrt(1 - abar) g  <=>  x0' = x0 + (1 - abar) / sqrt(abar) g
                output = output + (sigma**2 / math.sqrt(1 + sigma**2)) * grad
            else:
                output = output - (sigma / math.sqrt(1 + sigma**2)) * grad
            kwargs = {"generator": generator} if "generator" in scheduler.step.__code__.co_varnames else {}
            x = scheduler.step(output, t, x, **kwargs).prev_sample.double()
    return x.float()


@pytest.mark.parametrize(
    "net, name, karras",
    [("eps", "dpm++2m", False), ("eps", "unipc", False), ("eps", "euler", True), ("eps", "euler-a", False),
     ("x0", "dpm++2m", False)],
)  # fmt: skip
def test_fast_samplers_guided_by_the_score_correction(guided, net, name, karras, monkeypatch):
    loaded, classifier = guided
    pipe, model, flags, size = loaded[net]
    monkeypatch.setattr(pipeline_module, "to_output", lambda x, output_type: x)  # raw samples, as there
    labels = torch.tensor([3, 777])
    run = dict(batch_size=2, sampler=name, num_inference_steps=5, karras=karras, class_labels=labels,
               output_type="pt", progress=False)  # fmt: skip
    samples = pipe(generator=torch.Generator().manual_seed(4), classifier_scale=SCALE, **run).images
    unguided = pipe(generator=torch.Generator().manual_seed(4), classifier_scale=0, **run).images
    expected = guided_diffusers_loop(
        model, classifier, flags, name, karras, 5, size, labels, torch.Generator().manual_seed(4)
    )
    peak = expected.abs().max()
    error = ((samples - expected).abs().max() / peak).item()
    moved = ((samples - unguided).abs().max() / peak).item()
    print(f"MEASURED {net} {name} karras={karras}: {error:.2e}, moved {moved:.3g}")
    assert error < TOLERANCE
    assert moved > MOVES_AT_LEAST


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm++2m", "euler"])
def test_guided_loop_step_does_no_host_sync(guided, name, monkeypatch):
    monkeypatch.setenv("FASTDDPM_BACKEND", "torch")
    pipe = guided[0]["eps"][0]
    pipe.engine.forget()
    pipe(batch_size=2, num_inference_steps=3, sampler=name, seed=1, noise="philox", progress=False)
    ((loop, replay, _),) = pipe.engine._loops.values()
    assert loop.network.guidance is not None and replay is None  # guided, eager on CPU
    loop.start(torch.randn(loop.shape), sample_offset=7)
    with host_syncs_forbidden():
        for _ in range(3):
            loop.step()
    assert loop.step_index.tolist() == [3]


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm++2m"])
def test_the_capture_protocol_runs_guided_plans(guided, name):
    """Warm-up, restore, capture and replay (CUDA calls stood in on the CPU) over guided plans: the replayed
    loop computes the eager images."""
    from fastddpm.engine import cuda_graph
    from tests.engine.test_cuda_graph import CpuGraphCalls

    pipe = guided[0]["eps"][0]
    pipe.engine.graph_calls = CpuGraphCalls()
    try:
        run = dict(batch_size=2, sampler=name, num_inference_steps=2, seed=1, noise="philox", output_type="pt",
                   classifier_scale=SCALE, progress=False)  # fmt: skip
        graphed = pipe(use_cuda_graph=True, **run)
        eager = pipe(use_cuda_graph=False, **run)
    finally:
        pipe.engine.graph_calls = cuda_graph.CUDA_GRAPHS
    assert graphed.cuda_graph == "replayed"
    assert torch.equal(graphed.images, eager.images)
