#!/usr/bin/env bash
# Builds fastddpm._C in place with its CUDA kernels for sm_90, so that a CUDA compile error fails CI.
# nvcc 13.0 from /usr/local/cuda against the installed torch (2.14.1+cu130); this machine has no GPU, so
# the kernels are compiled here, not run. ninja keeps the objects in build/, so a rebuild after a change
# recompiles only the changed files.
set -euo pipefail
cd "$(dirname "$0")/.."

export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export PATH="$CUDA_HOME/bin:$PATH"
export FASTDDPM_CUDA=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"

start=$(date +%s)
python setup.py build_ext --inplace
python - <<'PY'
import fastddpm.backend_ext as ext

missing = [op for op in ext.OPS if op not in ext.ops_with_cuda_kernels()]
assert not missing, f"fastddpm._C was built without CUDA kernels for {missing}"
print(f"fastddpm._C: CUDA kernels for {', '.join(ext.ops_with_cuda_kernels())}")
PY
echo "build_ext.sh: built fastddpm._C with CUDA (sm_${TORCH_CUDA_ARCH_LIST//./}) in $(( $(date +%s) - start )) s"
