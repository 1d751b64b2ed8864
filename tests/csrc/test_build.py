"""The built extension: its ops are registered, it holds CUDA kernels when built with CUDA, and fastddpm
works without it."""

import os
import subprocess
import sys

import pytest
import torch

from fastddpm.ops import backend_ext

built = pytest.mark.skipif(
    not backend_ext.is_built(), reason="fastddpm._C is not built (pip install -e . or .ci/build_ext.sh)"
)
# The CPU kernels serve only where torch reports their instruction set (not under ATEN_CPU_CAPABILITY=default).
serving_on_cpu = pytest.mark.skipif(
    not backend_ext.cpu_kernels_usable(), reason="fastddpm._C's CPU kernels do not serve on this CPU"
)


@built
@pytest.mark.parametrize("op", backend_ext.OPS + backend_ext.CPU_ONLY_OPS)
def test_every_op_has_a_cpu_kernel(op):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastddpm::{op}", "CPU")


@built
def test_cuda_build_has_a_cuda_kernel_for_every_op():
    import fastddpm._C as extension

    if not extension.compiled_with_cuda:
        pytest.skip(
            "fastddpm._C was built CPU-only (FASTDDPM_CUDA=0, or no nvcc / no CUDA torch at build time)"
        )
    assert backend_ext.ops_with_cuda_kernels() == list(backend_ext.OPS)
    assert backend_ext.cuda_kernels_built()


@built
def test_the_ci_build_has_cuda_kernels():
    # .ci/run sets FASTDDPM_CUDA=1 and builds with nvcc: there the CUDA kernels must be in the library.
    if os.environ.get("FASTDDPM_CUDA") != "1":
        pytest.skip("FASTDDPM_CUDA=1 is not set: this is not the CI build")
    assert backend_ext.cuda_kernels_built(), "FASTDDPM_CUDA=1 but fastddpm._C has no CUDA kernels"


@built
def test_cpu_kernels_are_built_for_an_instruction_set_this_machine_has():
    import fastddpm._C as extension

    here = torch.backends.cpu.get_cpu_capability()
    reasons = backend_ext.why_not_group_norm(torch.randn(1, 4, 3, 3), 2, None, None, 1e-5)
    if os.environ.get("ATEN_CPU_CAPABILITY"):
        # torch told to use less than the machine has (CI's lower-ISA run): the kernels must step aside.
        if (
            backend_ext._CPU_CAPABILITY_RANK[extension.cpu_capability]
            > backend_ext._CPU_CAPABILITY_RANK[here]
        ):
            assert any("which this CPU lacks" in r for r in reasons), reasons
            return
    assert backend_ext._CPU_CAPABILITY_RANK[extension.cpu_capability] <= backend_ext._CPU_CAPABILITY_RANK.get(
        here, 0
    )
    assert reasons == []


def test_fastddpm_imports_and_explains_without_the_extension():
    # sys.modules[name] = None makes `import fastddpm._C` fail as if the library were never built.
    code = (
        "import sys; sys.modules['fastddpm._C'] = None\n"
        "import torch, fastddpm, fastddpm.ops as ops\n"
        "from fastddpm.ops import backend_ext\n"
        "x = torch.randn(1, 4, 3, 3)\n"
        "why = backend_ext.why_not_group_norm(x, 2, None, None, 1e-5)\n"
        "assert why and 'not built' in why[0], why\n"
        "assert backend_ext.ops_with_cuda_kernels() == [] and not backend_ext.is_built()\n"
        "assert ops.backend_for('group_norm', x, 2, None, None, 1e-5) != 'ext'\n"
        "print('ok')\n"
    )
    env = dict(os.environ, FASTDDPM_BACKEND="auto")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr


@built
def test_fake_kernels_load_after_a_direct_import_of_the_library():
    # torch's advice on a missing fake kernel is to import the module named by set_python_module.
    code = (
        "import torch, fastddpm._C, fastddpm.ops.backend_ext\n"
        "from torch._subclasses.fake_tensor import FakeTensorMode\n"
        "with FakeTensorMode():\n"
        "    x = torch.empty(2, 4, 3, 3).to(memory_format=torch.channels_last)\n"
        "    y = torch.ops.fastddpm.group_norm(x, 2, None, None, 1e-5, None, None, None, True)\n"
        "    assert y.is_contiguous(memory_format=torch.channels_last)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr


@built
@serving_on_cpu
def test_pipeline_on_the_ext_backend_matches_the_torch_backend(monkeypatch):
    """A tiny random cifar10-32-shaped U-Net sampled end to end: FASTDDPM_BACKEND=ext against =torch on CPU."""
    import fastddpm
    from tests import model_factory
    from tests.tolerances import assert_close

    unet = model_factory.random_unet(model_factory.small_cifar10_config(sample_size=[16, 8]), seed=3)
    pipe = fastddpm.Pipeline.from_diffusers(unet)
    run = dict(batch_size=3, num_inference_steps=3, sampler="ddpm", seed=5, noise="philox", output_type="pt")
    monkeypatch.setenv("FASTDDPM_BACKEND", "torch")
    expected = pipe(**run, progress=False).images

    # The ext backend has no q_sample / sampler_step: ops sends those the auto way by itself.
    calls = {"group_norm": 0, "attention": 0}
    for op in calls:
        monkeypatch.setattr(backend_ext, op, _counting(op, getattr(backend_ext, op), calls))
    monkeypatch.setenv("FASTDDPM_BACKEND", "ext")
    got = pipe(**run, progress=False).images
    assert calls["group_norm"] > 0 and calls["attention"] > 0, calls
    assert_close(got, expected, 2e-5, 0, "pipeline images, ext vs torch backend")  # measured 5.7e-6


def _counting(name, function, calls):
    def counted(*args, **kwargs):
        calls[name] += 1
        return function(*args, **kwargs)

    return counted
