"""Inference speed of a detector, or of its backbone: latency (median, p90) and FPS at batch 1.

    python tools/benchmark.py configs/mask_rcnn_vanillanet13_coco.py --compare --check
    python tools/benchmark.py CONFIG CKPT --backbone-only --deploy --shape 800 1216 --out r.json

Times the whole ``test_step`` (preprocessing, forward, post-processing) as MMDetection users
read FPS, or with --backbone-only the backbone (--with-neck: and the neck) on the preprocessed
tensor; data loading is excluded. Variants (--compare, --backend onnxruntime) are timed in
alternating rounds and compared round by round: "fused is 1.77x faster than unfused" only where
the median of the per-round ratios is above 1 with 95 % confidence, else "not conclusive".
Without a checkpoint the weights are random (with non-trivial BN statistics, so --check is
meaningful); speed does not depend on them. Without --dataset the
input is one generated image of --shape, padded to 32 as the test pipeline would. The work is
tools/vanillanet_toolkit/benchmark.py.
"""
if __name__ == '__main__':  # first: Ctrl-C and SIGTERM during the imports below (seconds)
    from mmdet_runsafe.start import start_tool  # end the tool in one line
    start_tool()
import argparse

import torch
from mmdet.utils import register_all_modules

from mmdet_runsafe.cli import CfgOptions, force_weights_only_loading, interruptible, one_line_errors
from vanillanet_toolkit.benchmark import print_table, run_benchmark, write_report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('checkpoint', nargs='?', help='weights (default: random)')
    parser.add_argument('--shape', type=int, nargs=2, default=[800, 1333], metavar=('H', 'W'),
                        help='generated input size (default 800 1333, padded to 32)')
    parser.add_argument('--dataset', action='store_true',
                        help="time on the config's test set instead of a generated image")
    parser.add_argument('--backbone-only', action='store_true')
    parser.add_argument('--with-neck', action='store_true', help='with --backbone-only: + neck')
    parser.add_argument('--deploy', action='store_true', help='time the fused network')
    parser.add_argument('--compare', action='store_true',
                        help='time unfused and fused in one run, and their ratio')
    parser.add_argument('--check', action='store_true',
                        help='first confirm that fused and unfused outputs agree')
    parser.add_argument('--iters', type=int, default=10,
                        help='timed rounds: each times every variant on one image, in turn '
                        '(a verdict needs 6 or more)')
    parser.add_argument('--warmup', type=int, default=2,
                        help='untimed calls of each variant first (1 or more with --compile)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--threads', type=int, help='torch CPU threads')
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--precision', choices=['fp32', 'fp16', 'bf16'], default='fp32',
                        help='autocast precision')
    parser.add_argument('--compile', action='store_true', help='torch.compile the backbone')
    parser.add_argument('--act-impl', choices=['auto', 'triton', 'torch'],
                        help="the backbone's act_impl (default: the config's, else 'auto'): "
                        'how the fused network computes its activations')
    parser.add_argument('--backend', choices=['pytorch', 'onnxruntime'], default='pytorch',
                        help='onnxruntime: also time the fused part exported to ONNX in '
                        'onnxruntime (with --backbone-only), beside the PyTorch rows')
    parser.add_argument('--int8', action='store_true',
                        help='with --backend onnxruntime: also time the INT8 file '
                        '(tools/quantize_onnx.py\'s default recipe, calibrated on the timed '
                        'input) beside the fp32 one')
    parser.add_argument('--no-progress', action='store_true')
    parser.add_argument('--verbose', action='store_true',
                        help="show the FLOPs counter's warnings (operators it does not count, "
                        'modules its trace did not call)')
    parser.add_argument('--out', help='write every figure and setting to this JSON file')
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptions)
    return parser


def main():
    args = build_parser().parse_args()
    force_weights_only_loading()
    register_all_modules()
    with interruptible(), one_line_errors():
        report = run_benchmark(args)
        print_table(report)
        if args.out:
            write_report(report, args.out)
            print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
