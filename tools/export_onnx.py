"""Export a fused VanillaNet detector's backbone, neck or raw outputs to ONNX, and check the file
with onnxruntime against PyTorch.

    python tools/export_onnx.py CONFIG [CKPT] OUT.onnx [--part backbone|neck|raw] [--dynamo]
    python tools/export_onnx.py configs/retinanet_vanillanet13_coco.py ckpt.pth r.onnx --part raw

The backbone is fused first (a checkpoint from the middle of deep training, act_learn < 1, is
refused: fusing it would change what it computes). Inputs are the data preprocessor's output
(normalised RGB, NCHW float32), with dynamic batch, height and width unless --static H W. The
file's metadata holds the arch, act_num and the minimum input side, which the graph itself does
not check. Without a checkpoint the weights are random.
"""
import argparse
import os
import sys

import torch
from mmdet.utils import register_all_modules
from mmengine.config import DictAction

from mmdet_vanillanet.errors import InputError
from mmdet_vanillanet.models.detector import fuse_detector
from mmdet_vanillanet.toolkit.build import build_detector
from mmdet_vanillanet.toolkit.cli import force_weights_only_loading, load_config, one_line_errors

try:
    from mmdet_vanillanet.toolkit import onnx_export
except ImportError as err:  # onnx and onnxruntime are test and `deploy` extras, not runtime
    sys.exit(f'error: exporting needs onnx and onnxruntime ({err}); pip install onnx '
             f'onnxruntime')


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('files', nargs='+', metavar='[CKPT] OUT.onnx',
                        help='an optional checkpoint, then the file to write')
    parser.add_argument('--part', default='backbone', choices=onnx_export.PARTS,
                        help='what to export (default: backbone)')
    parser.add_argument('--static', type=int, nargs=2, metavar=('H', 'W'),
                        help='fixed input size (batch 1) instead of dynamic batch/height/width')
    parser.add_argument('--shape', type=int, nargs=2, default=[320, 480], metavar=('H', 'W'),
                        help='the size traced and checked (default 320 480)')
    parser.add_argument('--opset', type=int, default=onnx_export.OPSET)
    parser.add_argument('--dynamo', action='store_true',
                        help='use the torch.export-based exporter instead of the legacy one')
    parser.add_argument('--force', action='store_true', help='overwrite OUT.onnx')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args()


def main():
    args = parse_args()
    force_weights_only_loading()
    register_all_modules()
    with one_line_errors():
        if len(args.files) > 2:
            raise InputError(f'expected [CKPT] OUT.onnx after the config, got {args.files}')
        checkpoint, out = (None, *args.files) if len(args.files) == 1 else args.files
        onnx_export.check_output_path(out, args.force)
        shape = args.static or args.shape
        cfg = load_config(args.config, args.cfg_options)
        if cfg.model.backbone.get('type') != 'VanillaNet':
            raise InputError(f'{args.config}: the backbone is {cfg.model.backbone.get("type")}, '
                             f'not a VanillaNet')
        detector = fuse_detector(build_detector(cfg, checkpoint))
        module = onnx_export.ExportedPart(detector, args.part).eval()
        side = detector.backbone.min_input_size
        if min(shape) < side:
            raise InputError(f'--shape/--static {shape[0]} {shape[1]}: each side must be at '
                             f'least {side} pixels for this backbone')
        onnx_export.export(module, out, shape, static=bool(args.static), opset=args.opset,
                           dynamo=args.dynamo)
        onnx_export.write_metadata(out, module)
        h, w = shape
        shapes = [(1, 3, h, w)] if args.static else [(1, 3, h, w), (2, 3, h + 37, w + 65)]
        diff = onnx_export.check_with_onnxruntime(module, out, shapes)
    print(f'wrote {out} ({args.part}, {"static" if args.static else "dynamic"} shapes, opset '
          f'{args.opset}, {"dynamo" if args.dynamo else "legacy"} exporter): '
          f'{module.parameter_count() / 1e6:.2f}M parameters')
    print(f'onnxruntime vs PyTorch on {", ".join("x".join(map(str, s)) for s in shapes)}: '
          f'max relative difference {diff:.1e}')
    if not diff <= 1e-4:
        os.remove(out)
        sys.exit(f'error: the exported file differs from PyTorch by {diff:.1e} (above 1e-4); '
                 f'it was removed')


if __name__ == '__main__':
    with torch.no_grad():
        main()
