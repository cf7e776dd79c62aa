"""Peak memory of a whole Mask R-CNN training step on the CPU: VanillaNet-13 (lean, the
default; plain autograd; lean + with_cp), ResNet-50 and Swin-T, as their COCO configs build them
(MMDetection's own configs through its registry for ResNet-50 and Swin-T).

    python benchmarks/train_step_peak.py                  # 10 to 30 minutes on 2 shared cores
    python benchmarks/train_step_peak.py --shape 800 1344 --models ResNet-50

The step is MMEngine's ``train_step``: preprocessing, forward, the losses, backward and the
config's optimizer step, on one generated image (batch 1) with four boxes and their masks.
Each model runs in a fresh process, which takes one step first (the optimizer's state is made,
oneDNN's kernels are chosen), returns freed memory to the system (``malloc_trim``), resets its
peak resident memory (writing 5 to /proc/self/clear_refs resets VmHWM to the current VmRSS; a
system where it does not is refused), takes a second step and reads VmHWM. The figure is that
peak above the resident memory just before the step: what the step adds to the weights and the
optimizer's state, that is the maps kept for backward, the backward pass's transient maps, the
FPN's and heads' work and the gradients (MMEngine's optimizer wrapper frees them after each
step, so each step allocates them again). It is resident memory: pages the allocator got from
the system, not bytes of tensors (``torch.cuda.max_memory_allocated`` in
benchmarks/gpu_backbones.py counts those on a card). With glibc's allocator as it comes, the
figure includes what the allocator holds on to within the step (it reuses freed blocks of the
sizes it saw, and maps larger ones alone only above a threshold it raises as it goes); with
MALLOC_MMAP_THRESHOLD_=65536 in the environment every allocation of 64 KiB or more is mapped
alone and unmapped when freed, and resident memory follows the live tensors' bytes (the report
records the MALLOC_ settings it ran with). Time does not matter here and is not measured (the
processes run one at a time; on shared cores they only take longer).
Writes benchmarks/results/train_step_peak.{json,md}; --one NAME measures one model in the
running process and prints its figures as JSON (what each fresh process runs).
"""
import argparse
import ctypes
import gc
import json
import os
import os.path as osp
import subprocess
import sys

import mmdet
import toolkit_path  # noqa: F401  (tools/ on the path, for vanillanet_toolkit)
import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.structures.mask import BitmapMasks
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope
from mmengine.structures import InstanceData

import mmdet_vanillanet  # noqa: F401
from vanillanet_toolkit.machine import machine_info
from vanillanet_toolkit.paths import CONFIGS, REPO_ROOT

MMDET_CONFIGS = osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs')
VANILLANET_13 = osp.join(CONFIGS, 'mask_rcnn_vanillanet13_coco.py')
MODELS_TIMED = {  # name: (config, changes to its backbone)
    'VanillaNet-13 lean (default)': (VANILLANET_13, {}),
    'VanillaNet-13 plain autograd': (VANILLANET_13, dict(lean_training=False)),
    'VanillaNet-13 lean + with_cp': (VANILLANET_13, dict(with_cp=True)),
    'ResNet-50': (osp.join(MMDET_CONFIGS, 'mask_rcnn', 'mask-rcnn_r50_fpn_1x_coco.py'), {}),
    'Swin-T': (osp.join(MMDET_CONFIGS, 'swin', 'mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'), {}),
}
GIB = 2 ** 30


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--shape', type=int, nargs=2, default=[512, 832], metavar=('H', 'W'),
                        help='the image (a multiple of 32: no padding)')
    parser.add_argument('--models', nargs='+', default=list(MODELS_TIMED),
                        choices=list(MODELS_TIMED), metavar='NAME',
                        help='of: ' + ', '.join(MODELS_TIMED))
    parser.add_argument('--out-dir', default=osp.join(REPO_ROOT, 'benchmarks', 'results'))
    parser.add_argument('--one', choices=list(MODELS_TIMED), metavar='NAME',
                        help='measure NAME in this process and print its figures as JSON')
    return parser


def memory_status() -> dict:
    """VmRSS and VmHWM (peak resident memory) of this process, in bytes."""
    with open('/proc/self/status') as f:
        fields = dict(line.split(':', 1) for line in f)
    return {key: int(fields[key].split()[0]) * 1024 for key in ('VmRSS', 'VmHWM')}


def settled_rss() -> int:
    """Resident memory with freed memory returned to the system (glibc keeps freed blocks for
    reuse; a step reusing them would show no growth), the peak reset to it; refused where the
    system does not reset it."""
    gc.collect()
    ctypes.CDLL('libc.so.6').malloc_trim(0)
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
    status = memory_status()
    if status['VmHWM'] > status['VmRSS'] + 2 ** 20:
        sys.exit('error: writing 5 to /proc/self/clear_refs did not reset the peak resident '
                 'memory (VmHWM) here, so the peak of one step cannot be read; run on Linux 4.0 '
                 'or later')
    return status['VmRSS']


def training_batch(shape) -> dict:
    """One generated image of ``shape`` with four boxes of different sizes, and their masks."""
    h, w = shape
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                                         scale_factor=(1.0, 1.0)))
    boxes = torch.tensor([[0.05, 0.1, 0.3, 0.5], [0.4, 0.2, 0.9, 0.9], [0.6, 0.05, 0.7, 0.15],
                          [0.1, 0.6, 0.35, 0.95]]) * torch.tensor([w, h, w, h])
    masks = torch.zeros(len(boxes), h, w, dtype=torch.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
        mask[y1:y2, x1:x2] = 1
    sample.gt_instances = InstanceData(bboxes=boxes, labels=torch.tensor([0, 2, 7, 15]),
                                       masks=BitmapMasks(masks.numpy(), h, w))
    return dict(inputs=[image], data_samples=[sample])


def measure_one(name: str, shape) -> dict:
    """In this process: the peak of ``name``'s second training step above its warm state."""
    config, changes = MODELS_TIMED[name]
    cfg = Config.fromfile(config)
    cfg.model.backbone.update(changes, init_cfg=None)  # no download: memory needs no weights
    data = training_batch(shape)
    with DefaultScope.overwrite_default_scope('mmdet'):
        torch.manual_seed(0)
        model = MODELS.build(cfg.model)
        model.init_weights()
        model.train()
        optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
        model.train_step(data, optim_wrapper)  # warm-up
        warm = settled_rss()
        losses = model.train_step(data, optim_wrapper)
        peak = memory_status()['VmHWM']
    trained = [p for p in model.parameters() if p.requires_grad]
    return dict(model=name, config=osp.relpath(config, REPO_ROOT) if config.startswith(CONFIGS)
                else 'mmdet::' + osp.relpath(config, MMDET_CONFIGS), backbone_changes=changes,
                optimizer=type(optim_wrapper.optimizer).__name__, shape=list(shape),
                peak_above_warm_gib=(peak - warm) / GIB, warm_rss_gib=warm / GIB,
                gradients_gib=sum(p.numel() * p.element_size() for p in trained) / GIB,
                loss=sum(v.item() for k, v in losses.items() if 'loss' in k))


def table(report) -> str:
    h, w = report['shape']
    lines = [f'| Mask R-CNN training step, {h}x{w}, batch 1 | peak above the warm state, GiB '
             '| of which gradients, GiB | warm state (weights, optimizer state, libraries), '
             'GiB | optimizer |', '|---|---|---|---|---|']
    for r in report['rows']:
        lines.append(f'| {r["model"]} | {r["peak_above_warm_gib"]:.2f} | '
                     f'{r["gradients_gib"]:.2f} | {r["warm_rss_gib"]:.2f} | {r["optimizer"]} |')
    return '\n'.join(lines)


def markdown(report) -> str:
    m = report['machine']
    allocator = ', '.join(f'{k}={v}' for k, v in report['allocator_env'].items())
    return (f'Written by `python benchmarks/train_step_peak.py` on {m.get("cpu")} '
            f'({m["threads"]} threads), torch {m["torch"]}: each model in a fresh process, the '
            'peak resident memory of its second training step (MMEngine\'s train_step: '
            'forward, losses, backward, the config\'s optimizer step) above the resident '
            'memory just before it. The gradients are part of the peak: MMEngine\'s optimizer '
            'wrapper frees them after each step. Allocator: '
            + (allocator or "glibc's as it comes") + '.\n\n' + table(report) + '\n')


def allocator_env() -> dict:
    """The environment's settings of glibc's allocator (the measuring processes inherit them)."""
    return {k: v for k, v in os.environ.items() if k.startswith('MALLOC_')}


def main():
    args = build_parser().parse_args()
    register_all_modules()
    if args.one:  # the child: one model, its figures as JSON on the last line
        print(json.dumps(measure_one(args.one, args.shape)))
        return
    rows = []
    for name in args.models:
        print(f'{name} ...', flush=True)
        child = subprocess.run([sys.executable, __file__, '--one', name, '--shape',
                                *map(str, args.shape)], stdout=subprocess.PIPE, text=True)
        if child.returncode != 0:
            sys.exit(f'error: {name}: the measuring process failed (exit {child.returncode})')
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(f'{name}: {rows[-1]["peak_above_warm_gib"]:.2f} GiB above the warm state',
              flush=True)
    report = dict(machine=machine_info(), allocator_env=allocator_env(), shape=args.shape,
                  rows=rows)
    stem = osp.join(args.out_dir, 'train_step_peak')
    with open(f'{stem}.json', 'w') as f:
        json.dump(report, f, indent=2)
    with open(f'{stem}.md', 'w') as f:
        f.write(markdown(report))
    print(markdown(report))


if __name__ == '__main__':
    main()
