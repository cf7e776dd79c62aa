"""The INT8 accuracy table of docs/deployment.md: a trained toy Mask R-CNN's raw part (fp32),
quantized in several variants (calibration method, 7-bit weights, node groups kept float, the
TensorRT target), each decoded by OnnxDetector and scored by CocoMetric on the toy val split
against the fp32 file, with the convs onnxruntime really runs in float.

    python tools/demo.py --work-dir work_dirs/toy_demo/run       # the trained model (epoch_40)
    python benchmarks/int8_accuracy.py work_dirs/toy_demo/run/epoch_40.pth --data data/toy_coco \
        --seeds 0 1 2 --threads 2 --out benchmarks/results/int8_accuracy_toy.json

Calibration: --num-images images of --split (default train: the val split is what is scored),
drawn with each of --seeds, through the config's test pipeline and data preprocessor.
"""
import argparse
import json
import os.path as osp
import statistics
import time

import toolkit_path  # noqa: F401  (tools/ on the path, for vanillanet_toolkit)
from mmdet.utils import register_all_modules

import mmdet_vanillanet  # noqa: F401
from mmdet_runsafe.cli import interruptible, one_line_errors
from mmdet_runsafe.output_paths import check_new_output_file, write_text
from mmdet_vanillanet.deploy.quantize import Recipe, quantize_file
from vanillanet_toolkit.onnx_eval import onnx_coco_ap, onnxruntime_ops, toy_raw_file
from vanillanet_toolkit.paths import CONFIGS, REPO_ROOT

NONE = ()  # every node quantized
VARIANTS = {  # name: the recipe; tools/quantize_onnx.py's default is the RPN-head-float one
    'minmax': Recipe(reduce_range=False, keep_float=NONE),
    'minmax per-tensor': Recipe(per_channel=False, reduce_range=False, keep_float=NONE),
    'percentile': Recipe(method='percentile', reduce_range=False, keep_float=NONE),
    'entropy': Recipe(method='entropy', reduce_range=False, keep_float=NONE),
    'minmax 7-bit': Recipe(keep_float=NONE),
    'percentile 7-bit': Recipe(method='percentile', keep_float=NONE),
    'entropy 7-bit': Recipe(method='entropy', keep_float=NONE),
    '7-bit, stem float': Recipe(keep_float=('stem', )),
    '7-bit, last stage float': Recipe(keep_float=('last_stage', )),
    '7-bit, RPN head float (default)': Recipe(keep_float=('head', )),
    '7-bit, stem + RPN head float': Recipe(keep_float=('stem', 'head')),
    'tensorrt (s8 symmetric)': Recipe(target='tensorrt', keep_float=NONE),
    'tensorrt, RPN head float': Recipe(target='tensorrt', keep_float=('head', )),
}

DEFAULT_OUT = osp.join(REPO_ROOT, 'benchmarks', 'results', 'int8_accuracy_toy.json')


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoint', help='the trained toy model (tools/demo.py)')
    parser.add_argument('--config', default=osp.join(CONFIGS, 'mask_rcnn_vanillanet_toy.py'))
    parser.add_argument('--data', default='data/toy_coco', help='the toy dataset folder')
    parser.add_argument('--split', default='train', help='calibration images from this split')
    parser.add_argument('--num-images', type=int, default=64)
    parser.add_argument('--seeds', type=int, nargs='+', default=[0])
    parser.add_argument('--variants', nargs='+', choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--work-dir', default='work_dirs/int8_accuracy',
                        help='the fp32 and int8 files are written into a new folder of the '
                        'run\'s own there (run_XXXXXXXX)')
    parser.add_argument('--out', default=DEFAULT_OUT,
                        help='the report (default: the committed one, replaced)')
    return parser.parse_args()


def score(cfg, args, name, recipe, fp32, reference):
    """The variant's AP over the seeds, against the fp32 file's."""
    runs = []
    for seed in args.seeds:
        path = osp.join(osp.dirname(fp32), f'int8_seed{seed}.onnx')  # the run's own folder
        start = time.perf_counter()
        record = quantize_file(cfg, fp32, path, recipe, args.split, args.num_images, seed)
        seconds = time.perf_counter() - start
        ap = onnx_coco_ap(cfg, path, args.checkpoint, args.threads)
        runs.append(dict(seed=seed, **ap, d_box=ap['box'] - reference['box'],
                         d_mask=ap['mask'] - reference['mask'], quantize_s=seconds))
    ops = onnxruntime_ops(path)
    row = dict(variant=name, recipe=record, runs=runs,
               float_convs_asked=sum(n.endswith('/Conv') for n in record['float_nodes']),
               onnxruntime_float_convs=ops.get('Conv', 0),
               onnxruntime_int8_convs=ops.get('QLinearConv', 0))
    for key in ('d_box', 'd_mask'):
        values = [r[key] for r in runs]
        row[key] = dict(mean=statistics.fmean(values), worst=min(values), best=max(values))
    print(f'{name:<32} box {row["d_box"]["mean"]:+.4f} (worst {row["d_box"]["worst"]:+.3f})  '
          f'mask {row["d_mask"]["mean"]:+.4f} (worst {row["d_mask"]["worst"]:+.3f})  float '
          f'convs {row["onnxruntime_float_convs"]}', flush=True)
    return row


def main():
    args = parse_args()
    register_all_modules()
    with interruptible(), one_line_errors():  # an untrusted or unfit checkpoint, bad data: one line
        replace = check_new_output_file(args.out, '--out', default=DEFAULT_OUT)
        cfg, fp32 = toy_raw_file(args.config, args.data, args.checkpoint, args.work_dir)
        reference = onnx_coco_ap(cfg, fp32, args.checkpoint, args.threads)
        print(f'fp32: box {reference["box"]:.3f} mask {reference["mask"]:.3f}', flush=True)
        rows = [score(cfg, args, name, VARIANTS[name], fp32, reference) for name in args.variants]
        report = dict(config=args.config, checkpoint=args.checkpoint, data=args.data,
                      split=args.split, num_images=args.num_images, seeds=args.seeds,
                      threads=args.threads, fp32=reference, variants=rows)
        write_text(args.out, json.dumps(report, indent=2), replace)
        print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
