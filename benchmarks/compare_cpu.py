"""The comparison that matters, in one process so that ratios are fair: Mask R-CNN with
VanillaNet-13 (unfused and fused), VanillaNet-9 and -5 (fused), ResNet-50 and Swin-T
(MMDetection's own configs) at one input size, the whole detector and the backbone alone, and
each fused VanillaNet backbone exported to ONNX and run in onnxruntime with the same threads;
then the VanillaNet-13 backbone at detection resolution (unfused, fused, and fused in
onnxruntime) against the machine's matmul rate.

    python benchmarks/compare_cpu.py                       # about 10 minutes on 2 cores
    python benchmarks/compare_cpu.py --shape 800 1216 --iters 5

Writes benchmarks/results/cpu_compare.{json,md,png}. Random weights: speed does not depend on
them. On 2-core machines the default size is below COCO's 800x1333 to finish in minutes.
"""
import argparse
import json
import os.path as osp

import mmdet
import onnxruntime  # the onnxruntime rows: a test requirement and the package's deploy extra
import toolkit_path  # noqa: F401  (tools/ on the path, for vanillanet_toolkit)
from mmdet.utils import register_all_modules

import mmdet_vanillanet  # noqa: F401
from mmdet_runsafe.config import load_config
from mmdet_vanillanet.models.detector import fuse_detector
from vanillanet_toolkit.benchmark import build_timed_detector
from vanillanet_toolkit.complexity import pseudo_batch
from vanillanet_toolkit.machine import machine_info, matmul_gflops
from vanillanet_toolkit.paths import CONFIGS, REPO_ROOT
from vanillanet_toolkit.timing import Settings, measure, measure_onnxruntime

MMDET_CONFIGS = osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs')
MODELS = [  # name, config, fused?
    ('VanillaNet-13', osp.join(CONFIGS, 'mask_rcnn_vanillanet13_coco.py'), False),
    ('VanillaNet-13', osp.join(CONFIGS, 'mask_rcnn_vanillanet13_coco.py'), True),
    ('VanillaNet-9', osp.join(CONFIGS, 'mask_rcnn_vanillanet9_coco.py'), True),
    ('VanillaNet-5', osp.join(CONFIGS, 'mask_rcnn_vanillanet5_coco.py'), True),
    ('ResNet-50', osp.join(MMDET_CONFIGS, 'mask_rcnn', 'mask-rcnn_r50_fpn_1x_coco.py'), False),
    ('Swin-T', osp.join(MMDET_CONFIGS, 'swin', 'mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'), False),
]
# The VanillaNet-13 backbone at detection resolution: PyTorch unfused and fused, and the fused
# backbone exported to ONNX and run in onnxruntime.
EFFICIENCY_MODES = ('unfused', 'fused', 'onnxruntime')


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--shape', type=int, nargs=2, default=[512, 832], metavar=('H', 'W'))
    parser.add_argument('--detection-shape', type=int, nargs=2, default=[800, 1216],
                        metavar=('H', 'W'), help='size of the efficiency measurement')
    parser.add_argument('--iters', type=int, default=3)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--out-dir', default=osp.join(REPO_ROOT, 'benchmarks', 'results'))
    return parser.parse_args()


def detector(config, fused):
    model = build_timed_detector(load_config(config))
    return fuse_detector(model) if fused else model


def main():
    args = parse_args()
    register_all_modules()
    settings = Settings(iters=args.iters, warmup=args.warmup, progress=False)
    batches = [pseudo_batch(tuple(args.shape))]
    rows = []
    for name, config, fused in MODELS:
        model = detector(config, fused)
        mode = 'fused' if fused else 'unfused' if 'Vanilla' in name else '-'
        row = dict(model=name, mode=mode)
        for part in ('detector', 'backbone'):
            print(f'{name} {row["mode"]} {part} ...', flush=True)
            row[part] = measure(model, batches, part, settings)
        rows.append(row)
        if fused:  # the detector's post-processing stays in PyTorch: the backbone only
            print(f'{name} fused backbone in onnxruntime ...', flush=True)
            rows.append(dict(model=name, mode='onnxruntime', backbone=measure_onnxruntime(
                model, batches, 'backbone', settings, row['backbone'])))
        del model

    print('VanillaNet-13 backbone at detection resolution ...', flush=True)
    efficiency = dict(shape=args.detection_shape, matmul_gflop_s=matmul_gflops())
    unfused = detector(MODELS[0][1], False)
    big = [pseudo_batch(tuple(args.detection_shape))]
    fused = fuse_detector(unfused, inplace=False)
    efficiency['unfused'] = measure(unfused, big, 'backbone', settings)
    efficiency['fused'] = measure(fused, big, 'backbone', settings)
    efficiency['onnxruntime'] = measure_onnxruntime(fused, big, 'backbone', settings,
                                                    efficiency['fused'])
    for mode in EFFICIENCY_MODES:
        efficiency[mode]['efficiency'] = (efficiency[mode]['achieved_gflop_s']
                                          / efficiency['matmul_gflop_s'])
    efficiency['speedup'] = efficiency['unfused']['median_ms'] / efficiency['fused']['median_ms']
    efficiency['onnxruntime_speedup'] = (efficiency['fused']['median_ms']
                                         / efficiency['onnxruntime']['median_ms'])

    report = dict(machine=machine_info(), onnxruntime=onnxruntime.__version__, shape=args.shape,
                  iters=args.iters, warmup=args.warmup, rows=rows, efficiency=efficiency)
    stem = osp.join(args.out_dir, 'cpu_compare')
    with open(stem + '.json', 'w') as f:
        json.dump(report, f, indent=2)
    with open(stem + '.md', 'w') as f:
        f.write(markdown(report))
    plot(report, stem + '.png')
    print(markdown(report))


def markdown(report) -> str:
    m, (h, w) = report['machine'], report['shape']
    lines = [f'Mask R-CNN inference, batch 1, input {h}x{w} (padded to 32), on {m.get("cpu")} '
             f'({m["threads"]} threads), torch {m["torch"]}, random weights; median of '
             f'{report["iters"]} timed images after {report["warmup"]} warm-up. Command: '
             f'`python benchmarks/compare_cpu.py`.', '',
             '| backbone | mode | detector ms | detector GFLOPs | params M | backbone ms '
             '| backbone GFLOPs | backbone GFLOP/s |', '|---|---|---|---|---|---|---|---|']
    for r in report['rows']:
        d, b = r.get('detector'), r['backbone']
        # onnxruntime rows have no detector figures: only the backbone runs there.
        detector = (f'{d["median_ms"]:.0f} | {d["gflops"]:.1f} | {d["params_m"]:.1f}' if d
                    else '- | - | -')
        lines.append(f'| {r["model"]} | {r["mode"]} | {detector} | {b["median_ms"]:.0f} '
                     f'| {b["gflops"]:.1f} | {b["achieved_gflop_s"]:.0f} |')
    e = report['efficiency']
    lines += ['', f'VanillaNet-13 backbone at {e["shape"][0]}x{e["shape"][1]}: dense fp32 '
              f'matmul {e["matmul_gflop_s"]:.0f} GFLOP/s on this machine.', '',
              '| mode | ms | GFLOPs | GFLOP/s | of matmul |', '|---|---|---|---|---|']
    for mode in EFFICIENCY_MODES:
        r = e[mode]
        lines.append(f'| {mode} | {r["median_ms"]:.0f} | {r["gflops"]:.1f} '
                     f'| {r["achieved_gflop_s"]:.0f} | {r["efficiency"]:.2f} |')
    lines += ['', f'Fused is {e["speedup"]:.2f}x faster than unfused at this size; onnxruntime '
              f'{report["onnxruntime"]} runs the fused backbone {e["onnxruntime_speedup"]:.2f}x '
              f'faster than PyTorch (the same threads).', '']
    return '\n'.join(lines)


def plot(report, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, part in zip(axes, ('detector', 'backbone')):
        for r in report['rows']:
            if part not in r:  # onnxruntime rows: backbone only
                continue
            x, y = r[part]['gflops'], r[part]['median_ms'] / 1e3
            marker = 'o' if 'Vanilla' in r['model'] else 's'
            ax.scatter(x, y, marker=marker, s=50)
            ax.annotate(f'{r["model"]} {r["mode"]}'.replace(' -', ''), (x, y), fontsize=8,
                        xytext=(4, 4), textcoords='offset points')
        ax.set_xlabel('GFLOPs (multiply-accumulates)')
        ax.set_ylabel('latency, s')
        ax.set_title(f'Mask R-CNN {part}, {report["shape"][0]}x{report["shape"][1]}, '
                     f'{report["machine"]["threads"]} CPU threads')
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == '__main__':
    main()
