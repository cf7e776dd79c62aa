"""Export a fused VanillaNet detector's backbone, neck or raw outputs to ONNX, and check the file
with onnxruntime against PyTorch.

    python tools/export_onnx.py CONFIG [CKPT] OUT.onnx [--part backbone|neck|raw] [--dynamo]
    python tools/export_onnx.py configs/retinanet_vanillanet13_coco.py ckpt.pth r.onnx --part raw

The backbone is fused first (a checkpoint from the middle of deep training, act_learn < 1, is
refused: fusing it would change what it computes). Inputs are the data preprocessor's output
(normalised RGB, NCHW float32), with dynamic batch, height and width unless --static H W. The
file's metadata holds the arch, act_num and the minimum input side, which the graph itself does
not check. Without a checkpoint the weights are random: the last line says so, and so does the
file's metadata (weights), which OnnxDetector warns of. The file is written as a new file beside
OUT and renamed into place once onnxruntime loads it and it matches PyTorch to 1e-4 of the
output's magnitude: a failed or interrupted export leaves no file, and an existing OUT (--force)
as it was. OUT is never the checkpoint or the config, nor a symbolic link.
"""
if __name__ == '__main__':  # first: Ctrl-C and SIGTERM during the imports below (seconds)
    from mmdet_runsafe.start import start_tool  # end the tool in one line
    start_tool()
import argparse

from mmdet.utils import register_all_modules

from mmdet_runsafe.cli import CfgOptions, force_weights_only_loading, interruptible, one_line_errors
from mmdet_runsafe.errors import InputError
from mmdet_runsafe.units import readable
from mmdet_vanillanet.deploy.onnx_export import OPSET, PARTS, ExportMismatchError, export_onnx


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('files', nargs='+', metavar='[CKPT] OUT.onnx',
                        help='an optional checkpoint, then the file to write')
    parser.add_argument('--part', default='backbone', choices=PARTS,
                        help='what to export (default: backbone)')
    parser.add_argument('--static', type=int, nargs=2, metavar=('H', 'W'),
                        help='fixed input size (batch 1) instead of dynamic batch/height/width')
    parser.add_argument('--shape', type=int, nargs=2, default=[320, 480], metavar=('H', 'W'),
                        help='the size traced and checked (default 320 480)')
    parser.add_argument('--opset', type=int, default=OPSET)
    parser.add_argument('--dynamo', action='store_true',
                        help='use the torch.export-based exporter instead of the legacy one')
    parser.add_argument('--force', action='store_true', help='overwrite OUT.onnx')
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptions)
    # The files are nargs='+' (an optional positional before a required one, nargs='?', is
    # taken empty when a flag follows the config), which argparse's usage writes as repeatable:
    # it says what the tool takes.
    parser.usage = parser.format_usage().removeprefix('usage: ').replace(
        ' [[CKPT] OUT.onnx ...]', '')
    return parser


def main():
    args = build_parser().parse_args()
    force_weights_only_loading()
    register_all_modules()
    # export_onnx's shape is the size of --static, where given, else of --shape.
    with interruptible(), one_line_errors(ExportMismatchError,
                                          flags={'shape': '--static' if args.static
                                                 else '--shape'}):
        if len(args.files) > 2:
            raise InputError(f'expected [CKPT] OUT.onnx after the config, got {args.files}')
        checkpoint, out = (None, *args.files) if len(args.files) == 1 else args.files
        result = export_onnx(args.config, checkpoint, out, args.part,
                             shape=args.static or args.shape, static=bool(args.static),
                             opset=args.opset, dynamo=args.dynamo, force=args.force,
                             cfg_options=args.cfg_options)
    print(f'wrote {out} ({args.part}, {"static" if args.static else "dynamic"} shapes, opset '
          f'{args.opset}, {"dynamo" if args.dynamo else "legacy"} exporter): '
          f'{readable(result.parameters)} parameters')
    shapes = ', '.join('x'.join(map(str, s)) for s in result.checked_shapes)
    print(f'onnxruntime vs PyTorch on {shapes}: max relative difference '
          f'{result.max_rel_diff:.1e}')
    if checkpoint is None:
        print(f'warning: no checkpoint was given: {out} holds random weights, not a trained '
              f'model\'s (its metadata says so); pass CKPT before OUT.onnx to export one')


if __name__ == '__main__':
    main()
