"""The built extension: its ops are registered, it holds CUDA kernels when built with CUDA, and fastddpm
works without it."""

import os
import subprocess
import sys

import pytest
import torch

from fastddpm import backend_ext

built = pytest.mark.skipif(
    not backend_ext.is_built(), reason="fastddpm._C is not built (pip install -e . or .ci/build_ext.sh)"
)


@built
@pytest.mark.parametrize("op", backend_ext.OPS)
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
def test_cpu_build_records_its_vector_instruction_set():
    import fastddpm._C as extension

    assert extension.cpu_capability in ("AVX2", "DEFAULT")


def test_fastddpm_imports_and_explains_without_the_extension():
    # sys.modules[name] = None makes `import fastddpm._C` fail as if the library were never built.
    code = (
        "import sys; sys.modules['fastddpm._C'] = None\n"
        "import torch, fastddpm, fastddpm.ops as ops\n"
        "from fastddpm import backend_ext\n"
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
