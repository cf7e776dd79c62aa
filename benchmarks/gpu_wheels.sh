#!/usr/bin/env bash
# The pure-Python wheels that benchmarks/gpu_backbones.py needs on a CUDA machine that has
# torch, Triton and torchvision but no OpenMMLab packages and no network: mmcv without its
# compiled ops (the backbone needs none), mmengine, mmdet and what they import that such a
# machine lacks. Run here, after `make install`; it fills .whl/ (ignored by git). There:
#
#   pip install --no-index --no-deps --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site:. python3 benchmarks/gpu_backbones.py
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir .whl
MMCV_WITH_OPS=0 .venv/bin/pip wheel -q --no-deps --no-build-isolation -w .whl \
    "$(grep -E '^mmcv\b' requirements/runtime.txt)"
.venv/bin/pip download -q --no-deps --only-binary=:all: -d .whl \
    "$(grep -E '^mmengine\b' requirements/runtime.txt)" \
    "$(grep -E '^mmdet\b' requirements/runtime.txt)" \
    addict yapf platformdirs termcolor terminaltables
ls .whl
