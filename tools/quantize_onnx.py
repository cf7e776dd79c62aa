"""Quantize an exported backbone, neck or raw ONNX file to INT8 (QDQ), calibrated on the config's
images read through its test pipeline and data preprocessor.

    python tools/quantize_onnx.py CONFIG IN.onnx OUT.onnx [--split train] [--num-images 64]
    python tools/quantize_onnx.py configs/mask_rcnn_vanillanet_toy.py raw.onnx raw_int8.onnx

IN.onnx is what tools/export_onnx.py wrote from the same config. onnxruntime's quantize_static
does the work. --target onnxruntime (default) writes the fast CPU file (uint8 activations,
7-bit per-channel weights); --target tensorrt the symmetric int8 file TensorRT's explicit
quantization takes. The recipe, the calibration (split, images, seed, annotation file) and the
data preprocessor's settings go into the file's metadata; OnnxDetector decodes a quantized raw
file as it decodes the fp32 one, and refuses a config whose preprocessing differs. OUT.onnx is
written as a new file and renamed into place when complete: a failed or interrupted run leaves
no file, and OUT.onnx is never IN.onnx. The work is mmdet_vanillanet/deploy/quantize.py.
"""
if __name__ == '__main__':  # first: Ctrl-C and SIGTERM during the imports below (seconds)
    from mmdet_runsafe.start import start_tool  # end the tool in one line
    start_tool()
import argparse

from mmdet.utils import register_all_modules

from mmdet_runsafe.cli import CfgOptions, interruptible, one_line_errors
from mmdet_vanillanet.deploy.calibration import SPLITS
from mmdet_vanillanet.deploy.quantize import FLOAT_GROUPS, METHODS, TARGETS, quantize_onnx


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('onnx_file', metavar='IN.onnx', help='written by tools/export_onnx.py')
    parser.add_argument('out', metavar='OUT.onnx')
    parser.add_argument('--split', default='train', choices=SPLITS,
                        help="the config's dataset to calibrate on (default: train, which keeps "
                        'the images a test scores out of the calibration)')
    parser.add_argument('--num-images', type=int, default=64,
                        help='calibration images, drawn at random (default 64)')
    parser.add_argument('--seed', type=int, default=0, help='the draw of the images')
    parser.add_argument('--target', default='onnxruntime', choices=TARGETS,
                        help='the runtime the file is for (default: onnxruntime)')
    parser.add_argument('--method', default='minmax', choices=METHODS,
                        help='calibration method (default: minmax)')
    parser.add_argument('--keep-float', nargs='*', choices=list(FLOAT_GROUPS),
                        help='node groups left in float (default: the RPN head of a two-stage '
                        "detector's raw file, nothing in other files; no value: none)")
    parser.add_argument('--force', action='store_true', help='overwrite OUT.onnx')
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptions)
    return parser


def main():
    args = build_parser().parse_args()
    register_all_modules()
    with interruptible(), one_line_errors():
        record = quantize_onnx(args.config, args.onnx_file, args.out, split=args.split,
                               num_images=args.num_images, seed=args.seed,
                               target=args.target, method=args.method,
                               keep_float=args.keep_float, force=args.force,
                               cfg_options=args.cfg_options)
    calibration = record['calibration']
    print(f'wrote {args.out} (INT8 QDQ for {args.target}, {args.method}, '
          f'{len(record["float_nodes"])} nodes kept float), calibrated on '
          f'{calibration["images"]} {args.split} images (seed {args.seed})')


if __name__ == '__main__':
    main()
