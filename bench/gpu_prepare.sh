#!/usr/bin/env bash
# Run on a CPU machine with PyPI access before a GPU run: puts in .whl/ exactly the wheels that
# bench/gpu_check.sh needs and the GPU image lacks, built for Python 3.12 on x86-64 Linux.
#
# Needed: fastddpm's runtime dependencies (pyproject.toml), diffusers==0.42.1 (the parity and end-to-end
# baselines) and hypothesis (test modules import it), each with its dependencies, resolved by pip for Python
# 3.12 (--dry-run --report: metadata only). Carried: those whose name is not in the image's package list
# (bench/gpu_image_packages.txt, read on the machine), pinned to the resolved versions. Nothing the image has
# is carried: a carried copy would shadow the image's through PYTHONPATH (its numpy 2.5 for one; the
# numpy < 2.4 that Triton 3.6's interpreter wants matters on CPU rehearsals only, not on the GPU). The
# fastddpm wheel itself is not needed: the device gets the working tree and gpu_check.sh builds the
# extension there. The wheels are downloaded into a scratch folder and moved into .whl/ only when every one
# arrived, so a failure leaves the previous .whl/ as it was.
#   PYTHON312=~/.pyenv/versions/3.12.1/bin/python bash bench/gpu_prepare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY312="${PYTHON312:-$HOME/.pyenv/versions/3.12.1/bin/python}"
"$PY312" -c 'import sys; assert sys.version_info[:2] == (3, 12), sys.version' \
    || { echo "gpu_prepare.sh: PYTHON312=$PY312 is not a Python 3.12" >&2; exit 2; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$PY312" -m pip install -q --dry-run --ignore-installed --report "$work/needed.json" \
    numpy safetensors pillow tqdm hypothesis diffusers==0.42.1 >/dev/null
"$PY312" - "$work/needed.json" bench/gpu_image_packages.txt >"$work/missing.txt" <<'PY'
import json
import re
import sys

def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()

with open(sys.argv[2]) as listing:
    image = {canonical(line.strip()) for line in listing if line.strip() and not line.startswith("#")}
with open(sys.argv[1]) as report:
    needed = {canonical(item["metadata"]["name"]): item["metadata"]["version"] for item in json.load(report)["install"]}
for name, version in sorted(needed.items()):
    if name not in image:
        print(f"{name}=={version}")
PY
mkdir -p "$work/wheels"
# Every manylinux tag a Python 3.12 x86-64 wheel may carry (a wheel tagged only _2_27 or _2_34 is found too).
platforms=()
for glibc in 2_17 2_24 2_27 2_28 2_31 2_34 2_35; do platforms+=(--platform "manylinux_${glibc}_x86_64"); done
"$PY312" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" --platform manylinux2014_x86_64 --platform any -d "$work/wheels" -r "$work/missing.txt"
rm -rf .whl && mv "$work/wheels" .whl
grep -qxF "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >>"$(git rev-parse --git-path info/exclude)"
echo "gpu_prepare.sh: $(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1), in .whl/ (not in the image: $(tr '\n' ' ' <"$work/missing.txt"))"
