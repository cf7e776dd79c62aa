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
# --no-cache-dir: pip's cache holds the wheel `make install` built with the ops (83 MB).
MMCV_WITH_OPS=0 .venv/bin/pip wheel -q --no-cache-dir --no-deps --no-build-isolation -w .whl \
    "$(grep -E '^mmcv\b' requirements/runtime.txt)"
# Built without ops it is pure Python, but tagged for this interpreter: tag it for any Python 3.
.venv/bin/python -m wheel tags --remove --python-tag py3 --abi-tag none --platform-tag any \
    .whl/mmcv-*.whl
if unzip -l .whl/mmcv-*.whl | grep -q '\.so$'; then
    echo "error: the mmcv wheel holds compiled ops; it must be built with MMCV_WITH_OPS=0" >&2
    exit 1
fi
.venv/bin/pip download -q --no-deps --only-binary=:all: -d .whl \
    "$(grep -E '^mmengine\b' requirements/runtime.txt)" \
    "$(grep -E '^mmdet\b' requirements/runtime.txt)" \
    addict yapf platformdirs termcolor terminaltables
ls .whl
