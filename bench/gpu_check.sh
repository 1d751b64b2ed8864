#!/usr/bin/env bash
# One prepared command for a lent H200 (about 15 minutes of device time in all; this takes < 10):
# build the extension there, run the GPU tests, compute-sanitizer on a tiny case, the kernel and the
# end-to-end benchmarks; logs and results under $OUT (at most 8 files come back).
#
# Prepare here, once (diffusers is not on the device image; it travels as wheels, ignored by git):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       diffusers==0.42.1 importlib_metadata
# Then, with the device tool: run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=590)
# and commit bench/results/<gpu>-<date>.json from $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 FASTDDPM_CUDA=1
export CUDA_HOME="${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")")}"
summary="$OUT/summary.txt"
step() { echo "== $1 ($(date +%T))" | tee -a "$summary"; }
result() { echo "   rc=$1 $2" | tee -a "$summary"; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee -a "$summary"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$summary"

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi

step "build (editable install: fastddpm._C with sm_90 kernels, fastddpm.kernels)"
timeout 300 python3 -m pip install --no-build-isolation --no-deps --no-index -e . >"$OUT/build.log" 2>&1
result $? "build.log"
python3 -c "import fastddpm.ops.backend_ext as e; print('ext CUDA kernels:', e.ops_with_cuda_kernels())" 2>&1 | tee -a "$summary"

step "GPU tests (pytest -m gpu)"
timeout 150 python3 -m pytest -m gpu -q -x -p no:cacheprovider tests >"$OUT/gpu_tests.log" 2>&1
result $? "$(tail -n 1 "$OUT/gpu_tests.log")"

step "compute-sanitizer memcheck + racecheck (tiny case)"
{
  timeout 60 compute-sanitizer --tool memcheck --error-exitcode 9 python3 bench/sanitizer_case.py
  echo "memcheck rc=$?"
  timeout 60 compute-sanitizer --tool racecheck --error-exitcode 9 python3 bench/sanitizer_case.py
  echo "racecheck rc=$?"
} >"$OUT/sanitizer.log" 2>&1
grep -E "rc=|ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/sanitizer.log" | tee -a "$summary"

step "kernel benchmarks"
timeout 120 python3 -m pytest -q -p no:cacheprovider bench/test_bench_kernels.py bench/test_bench_ext.py \
  -k "not test_cpu_" --benchmark-enable --benchmark-json "$OUT/kernels.json" >"$OUT/kernels.log" 2>&1
result $? "kernels.json"

step "end-to-end benchmark vs diffusers"
FASTDDPM_BENCH_COMPILE_BATCHES="1,256" FASTDDPM_BENCH_INTERLEAVED_ROUNDS=0 timeout 240 python3 -m pytest -q -s -p no:cacheprovider \
  bench/test_bench_e2e.py --benchmark-enable >"$OUT/e2e.log" 2>&1
result $? "e2e.log"
cp bench/results/*"$(date +%F)".json "$OUT/" 2>/dev/null
step "done"
