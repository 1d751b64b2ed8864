// The extension's host file: declares the ops of the `fastddpm` library and registers one kernel per op and
// device. The fake (meta) implementations that torch.compile and CUDA graph capture need live in Python,
// fastddpm/ops/backend_ext.py, which set_python_module names so torch knows where to find them.
//
// The Python module itself is empty on purpose (no pybind11): the ops are reached as torch.ops.fastddpm.*,
// and leaving out torch/extension.h saves most of this file's compile time.

#include <Python.h>
#include <torch/library.h>

#include "fastddpm_ops.h"

TORCH_LIBRARY(fastddpm, m) {
  m.set_python_module("fastddpm.ops.backend_ext");
  m.def(
      "group_norm(Tensor x, int num_groups, Tensor? weight, Tensor? bias, float eps, Tensor? add, "
      "Tensor? scale, Tensor? shift, bool silu) -> Tensor");
  m.def("attention(Tensor q, Tensor k, Tensor v, float scale) -> Tensor");
  // CPU only: on CUDA, cuDNN's own convolutions (Winograd among them) are what nn.Conv2d already uses.
  m.def(
      "winograd_conv3x3(Tensor x, Tensor weight, Tensor? bias, Tensor? residual, int tile, int out_channels) "
      "-> Tensor");
  // CPU only: batch-invariant matrix products (csrc/matmul_rows.h) for the linear layers and 1x1 convolutions.
  m.def("pack_matmul_weight(Tensor weight) -> Tensor");
  m.def(
      "matmul_rows(Tensor x, Tensor packed, int n, Tensor? bias, Tensor? residual, bool input_silu, "
      "float divisor) -> Tensor");
  // CPU only: philox_normal's Box-Muller with one code path for every element (csrc/box_muller_cpu.cpp).
  m.def("box_muller(Tensor r0, Tensor r1) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastddpm, CPU, m) {
  m.impl("group_norm", &fastddpm::group_norm_cpu);
  m.impl("attention", &fastddpm::attention_cpu);
  m.impl("winograd_conv3x3", &fastddpm::winograd_conv3x3_cpu);
  m.impl("pack_matmul_weight", &fastddpm::pack_matmul_weight_cpu);
  m.impl("matmul_rows", &fastddpm::matmul_rows_cpu);
  m.impl("box_muller", &fastddpm::box_muller_cpu);
}

#ifdef FASTDDPM_WITH_CUDA
TORCH_LIBRARY_IMPL(fastddpm, CUDA, m) {
  m.impl("group_norm", &fastddpm::group_norm_cuda);
  m.impl("attention", &fastddpm::attention_cuda);
}
#endif

#if defined(CPU_CAPABILITY_AVX512)
#define FASTDDPM_CPU_CAPABILITY "AVX512"
#elif defined(CPU_CAPABILITY_AVX2)
#define FASTDDPM_CPU_CAPABILITY "AVX2"
#else
#define FASTDDPM_CPU_CAPABILITY "DEFAULT"
#endif

extern "C" {
// `import fastddpm._C` runs the static registrations above; the module carries only build facts.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "fastddpm's C++/CUDA ops, registered as torch.ops.fastddpm.*",  // doc
      -1,  // no per-module state
      nullptr,  // no methods: everything goes through torch.ops
  };
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) {
    return nullptr;
  }
  // The vector instruction set the CPU kernels were compiled for: backend_ext refuses the CPU kernels on a
  // machine that lacks it instead of dying of an illegal instruction.
  PyModule_AddStringConstant(module, "cpu_capability", FASTDDPM_CPU_CAPABILITY);
  // Columns per packed panel of pack_matmul_weight (two vectors of the compiled ISA): the fake kernels'
  // shapes under torch.compile come from it.
  PyModule_AddIntConstant(module, "matmul_panel_width", static_cast<long>(fastddpm::matmul_panel_width()));
#ifdef FASTDDPM_WITH_CUDA
  PyModule_AddIntConstant(module, "compiled_with_cuda", 1);
#else
  PyModule_AddIntConstant(module, "compiled_with_cuda", 0);
#endif
  return module;
}
}
