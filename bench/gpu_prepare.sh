#!/usr/bin/env bash
# Run on a CPU machine with PyPI access before a GPU run: puts in .whl/ exactly the wheels that
# bench/gpu_check.sh needs and the GPU image lacks, built for Python 3.12 on x86-64 Linux.
#
# Needed: fastddpm's runtime dependencies (pyproject.toml), diffusers==0.42.1 (the parity and end-to-end
# baselines) and hypothesis (test modules import it), each with its dependencies. The image has torch 2.11.0
# (and triton 3.6), pytest and pytest-benchmark, with their dependencies. pip resolves both sets for
# Python 3.12 (--dry-run --report: metadata only); the difference, pinned to the resolved versions, is
# downloaded as binary wheels. The fastddpm wheel itself is not needed: the device gets the working tree
# and gpu_check.sh builds the extension there.
#   PYTHON312=~/.pyenv/versions/3.12.1/bin/python bash bench/gpu_prepare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY312="${PYTHON312:-$HOME/.pyenv/versions/3.12.1/bin/python}"
"$PY312" -c 'import sys; assert sys.version_info[:2] == (3, 12), sys.version' \
    || { echo "gpu_prepare.sh: PYTHON312=$PY312 is not a Python 3.12" >&2; exit 2; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
resolve() {  # resolve REPORT REQUIREMENTS...: what pip would install into an empty Python 3.12
    "$PY312" -m pip install -q --dry-run --ignore-installed --report "$1" "${@:2}" >/dev/null
}
resolve "$work/image.json" torch==2.11.0 "triton==3.6.*" pytest pytest-benchmark
# numpy < 2.4: Triton 3.6's interpreter calls int() on 1-element arrays, which numpy 2.4 refuses (CPU runs
# of the Triton kernels, as in the rehearsal; measured: 9 interpreter tests fail with 2.4.6, pass with 2.3.5).
resolve "$work/needed.json" "numpy<2.4" safetensors pillow tqdm hypothesis diffusers==0.42.1
"$PY312" - "$work/image.json" "$work/needed.json" >"$work/missing.txt" <<'PY'
import json
import sys

def resolved(path):
    with open(path) as report:
        return {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
                for item in json.load(report)["install"]}

image, needed = resolved(sys.argv[1]), resolved(sys.argv[2])
for name, version in sorted(needed.items()):
    if name not in image:
        print(f"{name}=={version}")
PY
rm -rf .whl && mkdir -p .whl
"$PY312" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl -r "$work/missing.txt"
grep -qxF "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >>"$(git rev-parse --git-path info/exclude)"
echo "gpu_prepare.sh: $(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1), in .whl/:"
ls .whl
