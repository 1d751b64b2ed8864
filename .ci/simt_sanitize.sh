#!/usr/bin/env bash
# Runs the SIMT-emulated CUDA kernel tests (pytest -m simt) under one sanitizer: address or thread.
#   bash .ci/simt_sanitize.sh address|thread [pytest args...]
# The library is built with -fsanitize=<name> (tests/csrc/simt_ops.py, cached in build/fastddpm_simt_<name>-*/);
# python itself is not, so the sanitizer's runtime is preloaded into the real interpreter (not a pyenv shim:
# a bash script crashes under a preloaded TSan runtime). Any report fails the run: halt_on_error /
# exitcode make the process exit non-zero, which pytest cannot swallow.
set -euo pipefail
cd "$(dirname "$0")/.."
sanitizer="${1:?usage: .ci/simt_sanitize.sh address|thread [pytest args...]}"
shift
case "$sanitizer" in
    address) runtime=libasan.so ;;
    thread) runtime=libtsan.so ;;
    *) echo "simt_sanitize.sh: sanitizer '$sanitizer' is not one of address, thread" >&2; exit 2 ;;
esac
python_bin="$(python -c 'import sys; print(sys.executable)')"
export PATH="$(dirname "$python_bin"):$PATH"  # ninja of the same environment
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export FASTDDPM_SIMT_SANITIZE="$sanitizer"
# python's own allocations are never freed at exit: leak reports would be noise.
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export TSAN_OPTIONS="halt_on_error=1:exitcode=66${TSAN_OPTIONS:+:$TSAN_OPTIONS}"
# --capture=sys: pytest captures python's output only, so a report the sanitizer writes to file descriptor 2
# just before it ends the process reaches the log instead of a capture file.
LD_PRELOAD="$(gcc -print-file-name="$runtime")" "$python_bin" -m pytest -q -p no:cacheprovider --capture=sys \
    -m simt tests/csrc "$@"
