#!/usr/bin/env bash
# Builds fastddpm._C in place with its CUDA kernels for sm_90, so that a CUDA compile error fails CI.
# nvcc 13.0 from /usr/local/cuda against the installed torch (2.14.1+cu130); this machine has no GPU, so
# the kernels are compiled here, not run. ninja keeps the objects in build/, so a rebuild after a change
# recompiles only the changed files.
#
# `pip install -e .` with FASTDDPM_CUDA=1 (as .ci/run does) already compiles the same library, keeping its
# objects in build/temp-<configuration>; when that library is newer than every source and holds the CUDA
# kernels, this script only checks it instead of linking it a second time.
# FASTDDPM_FORCE_BUILD=1 compiles regardless.
set -euo pipefail
cd "$(dirname "$0")/.."

export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export PATH="$CUDA_HOME/bin:$PATH"
export FASTDDPM_CUDA=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"

built_and_fresh() {
    python - <<'PY'
import glob
import os
import sys

import fastddpm.ops.backend_ext as ext

libraries = glob.glob("fastddpm/_C*.so")
sources = glob.glob("csrc/*") + ["setup.py"]
fresh = bool(libraries) and min(map(os.path.getmtime, libraries)) >= max(map(os.path.getmtime, sources))
sys.exit(0 if fresh and ext.cuda_kernels_built() else 1)
PY
}

start=$(date +%s)
if [[ "${FASTDDPM_FORCE_BUILD:-0}" != "1" ]] && built_and_fresh; then
    echo "build_ext.sh: fastddpm._C is newer than csrc/ and has its CUDA kernels: not recompiling"
else
    python setup.py build_ext --inplace
fi
python - <<'PY'
import fastddpm.ops.backend_ext as ext

missing = [op for op in ext.OPS if op not in ext.ops_with_cuda_kernels()]
assert not missing, f"fastddpm._C was built without CUDA kernels for {missing}"
print(f"fastddpm._C: CUDA kernels for {', '.join(ext.ops_with_cuda_kernels())}")
PY
echo "build_ext.sh: fastddpm._C with CUDA (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST) ready in $(( $(date +%s) - start )) s"
