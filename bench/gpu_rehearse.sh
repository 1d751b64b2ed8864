#!/usr/bin/env bash
# A rehearsal, on a CPU machine, of the GPU image's versions: with the python on PATH (a Python 3.12 venv
# holding torch==2.11.0 and triton 3.6, pytest, pytest-benchmark; see bench/gpu_check.sh's header), build
# fastddpm._C in place (CUDA kernels for sm_90 where nvcc is found; FASTDDPM_CUDA=0: CPU kernels only) and
# run the CPU test suite. Tests that need diffusers skip (the image lacks it); the SIMT tests build
# their host library against this torch.
#   PATH=/tmp/venv312/bin:$PATH bash bench/gpu_rehearse.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY'
import sys

import torch
import triton

print("rehearsal: python", sys.version.split()[0], "torch", torch.__version__, "triton", triton.__version__)
assert sys.version_info[:2] == (3, 12), "bench/gpu_rehearse.sh wants the GPU image's Python 3.12"
assert torch.__version__.startswith("2.11."), "bench/gpu_rehearse.sh wants the GPU image's torch 2.11"
PY
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
start=$SECONDS
python setup.py -q build_ext --inplace  # fastddpm/_C.cpython-312-*.so, next to other interpreters' builds
echo "rehearsal: extension built in $((SECONDS - start)) s"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python -m pytest -q -p no:cacheprovider tests "$@"
