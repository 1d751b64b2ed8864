"""Skips that depend on the CPU's vector capability as torch reports it."""

import os

import pytest
import torch

# torch.compile's C++ backend vectorises for the CPU it detects, but under ATEN_CPU_CAPABILITY=default its
# generated code does not compile in torch 2.14 ("'at::vec' has not been declared"): a torch limitation that
# no real CPU meets (an AVX2-only CPU reports AVX2), which the suite's reruns under that setting would hit.
needs_inductor_vector_capability = pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() == "DEFAULT",
    reason="inductor's C++ for the DEFAULT vector capability does not compile in torch 2.14 "
    "('at::vec' has not been declared); ATEN_CPU_CAPABILITY=default forces it",
)


def skip_torch_bf16_attention_under_forced_capability(error: RuntimeError) -> None:
    """Skip where torch's own bfloat16 attention fails: on an AMX CPU under a forced lower
    ATEN_CPU_CAPABILITY (avx2), torch 2.14's CPU flash attention still takes its AMX path and then refuses
    to pack for it ("pack_vnni2 is only supported when avx512 is supported"). A real AVX2 CPU takes
    another path (the suite passes on an AMD EPYC); anything else is re-raised."""
    if "pack_vnni2 is only supported" in str(error) and os.environ.get("ATEN_CPU_CAPABILITY"):
        pytest.skip(
            f"torch's bf16 attention under ATEN_CPU_CAPABILITY={os.environ['ATEN_CPU_CAPABILITY']}: {error}"
        )
    raise error
