#!/usr/bin/env bash
# One prepared command for a lent GPU machine (H200 image: Python 3.12, torch 2.11.0+cu130, triton 3.6,
# pytest, pytest-benchmark; no diffusers, no network). It always returns what it learned: every stage has
# its own time limit and is stopped with SIGINT (pytest then still writes its summary and partial
# results), no stage stops the next (no -x), and the whole run stays under 8 minutes: the stage limits add
# up to 425 s with the build, plus 5 s of grace after each SIGINT. The stages run in the order a first GPU
# run needs their evidence, each in its own process (a poisoned CUDA context costs one stage): build,
# kernels (each op against reference.py), the graphed loop, the pipeline against the torch backend, the
# batch-invariant Triton path, the sanitizers, two benchmarks, then, in whatever time is left,
# guided-diffusion's guided and upsampling steps. At most 8 files land in $OUT; summary.txt has one line
# per stage with its limit: "passed", "failed N", "timed out after S s" or "skipped (why)".
#
# Before a GPU run, on a CPU machine: bash bench/gpu_prepare.sh (wheels the image lacks, into .whl/).
# Then, with the device tool: run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540),
# and commit bench/results/ from $OUT.
#
# GPU_CHECK_DRY=1 runs every stage on a CPU machine with the GPU parts skipped (no sm_90 build, no
# compute-sanitizer, benchmarks collected instead of timed): .ci/run does, to test this script's plumbing.
#
# Rehearsal of the image's versions on a CPU machine (Python 3.12 venv, torch 2.11.0, triton 3.6):
#   ~/.pyenv/versions/3.12.1/bin/python -m venv /tmp/venv312 && /tmp/venv312/bin/pip install torch==2.11.0 \
#       "triton==3.6.*" pytest pytest-benchmark hypothesis "numpy<2.4" safetensors pillow tqdm setuptools wheel ninja
#   (numpy < 2.4: Triton 3.6's interpreter, which runs the Triton kernels on the CPU, calls int() on
#   1-element arrays, which numpy 2.4 refuses)
#   PATH=/tmp/venv312/bin:$PATH bash bench/gpu_rehearse.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
DRY="${GPU_CHECK_DRY:-0}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
summary="$OUT/summary.txt"
: >"$summary"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0 FASTDDPM_CUDA=1
export MAX_JOBS="${MAX_JOBS:-16}"
# CUDA_HOME is left to setup.py, which finds a toolkit folder with both bin/nvcc and lib64 (the folder above
# the first nvcc on PATH may hold only a wrapper script).

note() { echo "$*" | tee -a "$summary"; }
stages_not_passed=0

# run_stage NAME LIMIT_S LOG COMMAND...: COMMAND under `timeout -s INT`, output appended to LOG, one
# summary line. pytest's exit codes: 0 passed, 1 failed (the count comes from its last line), 5 nothing
# collected; timeout's: 124 timed out.
run_stage() {
    local name="$1" limit="$2" log="$3"
    shift 3
    local start=$SECONDS rc
    echo "=== $name (limit ${limit} s) $(date +%T)" >>"$log"
    timeout -s INT -k 5 "$limit" "$@" >>"$log" 2>&1
    rc=$?
    local took=$((SECONDS - start)) outcome
    case $rc in
        0) outcome="passed" ;;
        124 | 137) outcome="timed out after ${limit} s" ;;
        5) outcome="passed (nothing selected)" ;;
        *)
            local failed
            failed=$(tail -n 5 "$log" | grep -oE '[0-9]+ (failed|error)' | awk '{n += $1} END {print n + 0}')
            outcome="failed ${failed:-?} (rc=$rc)"
            ;;
    esac
    [[ "$outcome" == passed* ]] || stages_not_passed=$((stages_not_passed + 1))
    note "stage $name (limit ${limit} s): $outcome in ${took} s; $(tail -n 1 "$log" | cut -c1-160)"
}

note "gpu_check $(date -u +%FT%TZ) dry=$DRY"
if [[ "$DRY" == "1" ]]; then
    note "machine: dry run on $(uname -n), no GPU used"
else
    note "machine: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)"
fi
"$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)" 2>&1 | tee -a "$summary"

# Wheels the image lacks (bench/gpu_prepare.sh), installed offline next to the checkout. The summary says
# what happened: a missing .whl/ or a failed install explains the import errors of later stages.
if ! ls .whl/*.whl >/dev/null 2>&1; then
    note "wheels: .whl/ is missing or empty (run bench/gpu_prepare.sh first and carry .whl): tests needing diffusers or hypothesis will skip or fail to import"
elif ! "$PY" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
    note "wheels from .whl/: not installed (built for Python 3.12, this is $("$PY" -V 2>&1))"
else
    site="$(mktemp -d)/site"
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl >>"$OUT/build.log" 2>&1; then
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
        note "wheels from .whl/: $(ls .whl/*.whl | wc -l) installed into $site"
    else
        note "wheels from .whl/: pip install FAILED (see build.log); none installed"
    fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [[ "$DRY" == "1" ]]; then
    # The sm_90 build is the GPU part: check the library that is there instead of compiling it again.
    run_stage build 60 "$OUT/build.log" "$PY" -c "import fastddpm.ops.backend_ext as e; assert e.is_built(), 'fastddpm._C is not built'; print('fastddpm._C loads; CUDA kernels:', e.ops_with_cuda_kernels())"
else
    run_stage build 140 "$OUT/build.log" "$PY" setup.py build_ext --inplace
fi
"$PY" -c "import fastddpm.ops.backend_ext as e; print('ext CUDA kernels:', e.ops_with_cuda_kernels())" 2>&1 | tee -a "$summary"

# Every @pytest.mark.gpu test, in four stages; without a GPU (dry) they all skip, which still checks
# collection. The limits come from bench/triton_compile_cost.py (each stage's Triton kernels counted under a
# fake-CUDA recorder and compiled cold for sm_90, one after another, as the tests compile them;
# bench/results/triton-compile-sm90-*.json). On a 2-core AMD EPYC: kernels 161 specialisations in 34 s,
# the graphed loop 54 in 8 s, the pipeline tests 69 in 12 s, the batch-invariant Triton convolution's
# test 15 in 42 s (its float32 variants take 6-7.5 s each). On a 2-core Intel Xeon, after the attention
# kernel's 8 GPU variants joined the kernels stage: kernels 171 in 41 s (the attention's 11 s of it),
# the graphed loop 54 in 7 s, pipeline and batch-invariant together 120 in 43 s. Pipeline counts are lower
# bounds: 5 of its 6 tests read values back, which ends their recording early.
gpu_tests=("$PY" -m pytest -m gpu -q -p no:cacheprovider -rfE)
run_stage kernels 65 "$OUT/gpu_tests.log" "${gpu_tests[@]}" tests/kernels tests/ops tests/csrc
run_stage graphed-loop 25 "$OUT/gpu_tests.log" "${gpu_tests[@]}" tests/engine
run_stage pipeline 30 "$OUT/gpu_tests.log" "${gpu_tests[@]}" tests --ignore=tests/kernels --ignore=tests/ops \
    --ignore=tests/csrc --ignore=tests/engine --ignore=tests/models/test_batch_invariant_triton.py
run_stage batch-invariant 55 "$OUT/gpu_tests.log" "${gpu_tests[@]}" tests/models/test_batch_invariant_triton.py

if [[ "$DRY" == "1" ]] || ! command -v compute-sanitizer >/dev/null; then
    note "stage compute-sanitizer: skipped ($([[ "$DRY" == "1" ]] && echo "dry run" || echo "not installed"))"
else
    # No caching allocator under memcheck: an overrun inside one of torch's cached blocks is invisible.
    run_stage memcheck 20 "$OUT/sanitizer.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
        compute-sanitizer --tool memcheck --error-exitcode 9 "$PY" bench/sanitizer_case.py
    run_stage racecheck 20 "$OUT/sanitizer.log" compute-sanitizer --tool racecheck --error-exitcode 9 \
        "$PY" bench/sanitizer_case.py --quick
fi

# Benchmarks: timed on the GPU; collected (not run) in the dry run. No max-autotune compile here: it takes
# minutes per shape (FASTDDPM_BENCH_COMPILE_BATCHES="" turns the compiled variants off).
timing=(--benchmark-enable)
[[ "$DRY" == "1" ]] && timing=(--collect-only)
# The kernels the performance table quotes (sampler_step, q_sample), not the whole suite.
run_stage kernel-bench 30 "$OUT/bench.log" "$PY" -m pytest -q -p no:cacheprovider -rfE \
    bench/test_bench_kernels.py -k "sampler_step or q_sample" "${timing[@]}" \
    --benchmark-json "$OUT/kernels.json"
run_stage e2e-bench 40 "$OUT/bench.log" env FASTDDPM_BENCH_COMPILE_BATCHES="" \
    FASTDDPM_BENCH_INTERLEAVED_ROUNDS=0 FASTDDPM_BENCH_ROUNDS=2 "$PY" -m pytest -q -s -p no:cacheprovider -rfE \
    bench/test_bench_e2e.py "${timing[@]}" -k "not compile"
# (ADM's full-width forward, bench/adm_forward_bench.py --device cuda, is left out: 40 s for a number the
# first run does not need; run it by hand when time is left.)
latest=$(ls -t bench/results/*"$(date +%F)"*.json 2>/dev/null | head -n 1)
if [[ "$DRY" != "1" && -n "$latest" ]]; then
    cp "$latest" "$OUT/"  # the end-to-end results file that bench/e2e_results.py wrote
fi

# guided-diffusion's cascade, side by side with the reference: one classifier-guided step at 64 px
# (diffusion forward + classifier forward and backward) and one upsampling step at 256 px, published
# widths, float32, batch 1. They get only what the stages above left of the 8 minutes (those usually
# end well inside their limits), and start only with 30 s or more: each first builds ~300-360 M random
# parameters on the host (5.3 s for the 64 px model and classifier on a 2-core Intel Xeon), then copies
# them to the GPU and times 1 + 3 steps per side. One JSON file for both, to stay within $OUT's 8 files.
# The dry run checks that both scripts import.
cascade_deadline=465
cascade_limit=$((cascade_deadline - 5 - SECONDS))
if [[ "$DRY" == "1" ]]; then
    run_stage cascade-bench 60 "$OUT/bench.log" bash -c \
        "'$PY' bench/guided_step_bench.py --help && '$PY' bench/upsampling_step_bench.py --help"
elif ((cascade_limit < 30)); then
    note "stage cascade-bench: skipped (${cascade_limit} s left of the 8 minutes, 30 s needed)"
else
    cascade_dir=$(mktemp -d)
    run_stage cascade-bench "$cascade_limit" "$OUT/bench.log" bash -c \
        "'$PY' bench/guided_step_bench.py --size 64 --device cuda --repeats 3 --out '$cascade_dir/guided.json' && \
         '$PY' bench/upsampling_step_bench.py --size 256 --device cuda --repeats 3 --out '$cascade_dir/upsampling.json'"
    "$PY" -c 'import json, os, sys; json.dump({name: json.load(open(f"{sys.argv[1]}/{name}.json")) for name in ("guided", "upsampling") if os.path.exists(f"{sys.argv[1]}/{name}.json")}, open(sys.argv[2], "w"), indent=1)' \
        "$cascade_dir" "$OUT/cascade-steps.json"
fi
note "gpu_check done in ${SECONDS} s: $stages_not_passed stage(s) not passed; files in \$OUT: $(ls "$OUT" | wc -l)"
[[ $stages_not_passed -eq 0 ]]
