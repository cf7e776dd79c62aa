#!/usr/bin/env bash
# The pure-Python wheels that benchmarks/gpu_backbones.py needs on a CUDA machine that has
# torch, Triton and torchvision but no OpenMMLab packages and no network: mmcv-lite (mmcv
# without its compiled ops, which the backbone does not need), mmengine, mmdet (their pinned
# versions) and what they import that such a machine lacks (the device image already has
# opencv-python-headless, rich, matplotlib, pyyaml and scipy). Run here; it fills .whl/
# (ignored by git, about 4 MB). There:
#
#   pip install --no-index --no-deps --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site:. python3 benchmarks/gpu_backbones.py
set -euo pipefail
cd "$(dirname "$0")/.."
pinned() { grep -E "^$1==" requirements/runtime.txt | cut -d= -f3; }
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl \
    "mmcv-lite==$(pinned mmcv)" "mmengine==$(pinned mmengine)" "mmdet==$(pinned mmdet)" \
    addict yapf platformdirs termcolor terminaltables
ls .whl
