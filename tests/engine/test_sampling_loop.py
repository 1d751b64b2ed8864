"""The engine: the loop's step does no host sync (so one CUDA graph replays it), the auto batch size
arithmetic, and the graphed loop against the eager one (on a GPU)."""

import contextlib
import copy

import pytest
import torch

import fastddpm
from tests.tolerances import assert_close


@contextlib.contextmanager
def host_syncs_forbidden():
    """Make every tensor-to-host conversion raise, as a device sync would stall a GPU loop."""
    names = ["item", "tolist", "__bool__", "__int__", "__float__", "__index__"]
    saved = {name: getattr(torch.Tensor, name) for name in names}

    def forbid(name):
        def raising(self, *args, **kwargs):
            raise AssertionError(f"host sync: Tensor.{name} called inside the sampling loop")

        return raising

    try:
        for name in names:
            setattr(torch.Tensor, name, forbid(name))
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


@pytest.mark.parametrize("noise", ["philox", "torch"])
def test_loop_step_does_no_host_sync(small_fastddpm_unet, noise, monkeypatch):
    monkeypatch.setenv("FASTDDPM_BACKEND", "torch")
    pipe = fastddpm.Pipeline(small_fastddpm_unet)
    pipe(batch_size=2, num_inference_steps=3, sampler="ddpm", seed=1, noise=noise, progress=False)
    ((loop, replay, _),) = pipe.engine._loops.values()
    assert replay is None  # eager on CPU
    loop.start(torch.randn(loop.shape), sample_offset=7)
    with host_syncs_forbidden():
        for _ in range(3):
            loop.step()
    assert loop.step_index.tolist() == [3]


def test_auto_batch_size_arithmetic_and_cpu_refusal(small_fastddpm_unet):
    from fastddpm.engine.auto_batch import batch_that_fits

    gib = 2**30
    # 1 GiB fixed + 0.1 GiB per sample at the peak, 10 GiB free: (0.85 * 10 - 1) / 0.1 = 75 samples fit
    assert batch_that_fits(10 * gib, int(1.1 * gib), int(1.2 * gib), 0) == 75
    with pytest.raises(RuntimeError, match="not even one sample"):
        batch_that_fits(gib, int(2 * gib), int(3 * gib), 0)
    pipe = fastddpm.Pipeline(small_fastddpm_unet)
    with pytest.raises(ValueError, match="batch_size='auto' needs the pipeline on a CUDA device"):
        pipe(batch_size="auto", progress=False)


@pytest.mark.gpu
def test_cuda_graph_loop_matches_eager_and_auto_batch_runs(small_fastddpm_unet):
    pipe = fastddpm.Pipeline(copy.deepcopy(small_fastddpm_unet)).to("cuda")
    common = dict(
        batch_size=4, num_inference_steps=10, seed=3, noise="philox", output_type="pt", progress=False
    )
    graphed_output = pipe(use_cuda_graph=True, **common)
    assert graphed_output.cuda_graph == "replayed"  # not a silent fallback to eager
    graphed = graphed_output.images
    eager = pipe(use_cuda_graph=False, **common).images
    assert_close(graphed, eager, 1e-5, 0, "graph vs eager")
    again = pipe(use_cuda_graph=True, **{**common, "seed": 3}).images  # replays the cached graph
    assert torch.equal(again, graphed)
    assert (
        pipe(batch_size="auto", num_inference_steps=1, progress=False, output_type="pt").images.shape[0] >= 64
    )
