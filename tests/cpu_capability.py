"""Skips that depend on the CPU's vector capability as torch reports it."""

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
