"""Triton kernels of fastddpm, one op per file; installed as ``fastddpm.kernels``.

Each op module has a private ``_kernel`` (``@triton.jit``) and a launcher that validates its inputs,
reshapes them and picks the grid. fastddpm/ops/backend_triton.py decides when the launchers may be called
(device, dtype, autograd) and imports the kernel modules only then, so ``import fastddpm`` needs no triton.

Set TRITON_INTERPRET=1 *before* importing this package to run the kernels on CPU tensors: triton decides
at definition time whether a kernel is compiled or interpreted (``common.INTERPRETED`` records which).

step_columns.py, the step tables' column layout, is the contract between the schedulers that write the rows
and the ops and kernels that read them; it lives here, in the lowest layer, and imports nothing. This file
imports nothing either: triton is imported by the kernel modules (common.py and one file per op).
"""
