"""What OnnxDetector's check of a quantized two-stage file against a checkpoint reads, for the
checkpoint the file came from and for others (a neighbouring one of the same run): the RPN
outputs' difference relative to their magnitude (what the fp32 check compares, to 1e-3) and the
file's neck and RPN weights against the checkpoint's, in quantization steps (what the INT8 check
compares, to one step).

    python benchmarks/int8_checkpoint_check.py work_dirs/toy_demo/run/epoch_40.pth \
        work_dirs/toy_demo/run/epoch_30.pth --data data/toy_coco

The file is exported from the first checkpoint and quantized with every node in int8 and with
the default recipe (RPN head float), calibrated on 64 train images (seed 0); the input is
OnnxDetector's (normal noise, side twice the file's minimum).
"""
import argparse
import json
import os.path as osp

import toolkit_path  # noqa: F401  (tools/ on the path, for vanillanet_toolkit)
import torch
from mmdet.utils import register_all_modules

import mmdet_vanillanet  # noqa: F401
from mmdet_runsafe.cli import interruptible, one_line_errors
from mmdet_runsafe.output_paths import check_new_output_file, write_text
from mmdet_vanillanet.deploy.build import build_detector
from mmdet_vanillanet.deploy.equivalence import max_rel_diff
from mmdet_vanillanet.deploy.onnx_export import group_outputs, onnxruntime_session
from mmdet_vanillanet.deploy.quantize import Recipe, quantize_file
from mmdet_vanillanet.deploy.quantized_file import weight_differences
from vanillanet_toolkit.onnx_eval import toy_raw_file
from vanillanet_toolkit.paths import CONFIGS, REPO_ROOT

DEFAULT_OUT = osp.join(REPO_ROOT, 'benchmarks', 'results', 'int8_checkpoint_check_toy.json')


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoints', nargs='+', help='the file\'s checkpoint, then others')
    parser.add_argument('--config', default=osp.join(CONFIGS, 'mask_rcnn_vanillanet_toy.py'))
    parser.add_argument('--data', default='data/toy_coco', help='the toy dataset folder')
    parser.add_argument('--work-dir', default='work_dirs/int8_checkpoint_check',
                        help='the files are written into a new folder of the run\'s own there '
                        '(run_XXXXXXXX)')
    parser.add_argument('--out', default=DEFAULT_OUT,
                        help='the report (default: the committed one, replaced)')
    return parser.parse_args()


@torch.no_grad()
def readings(path, model, side):
    """(RPN outputs' max relative difference, largest weight difference in quantization
    steps, of float weights relative) of ``path`` against ``model``."""
    session = onnxruntime_session(path)
    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    names = [o.name for o in session.get_outputs()]
    groups = group_outputs(names, [torch.from_numpy(v) for v in
                                   session.run(None, {'input': x.numpy()})])
    expected = [t for group in model.rpn_head(tuple(groups[0])) for t in group]
    diff = max_rel_diff(expected, [t for group in groups[1:] for t in group])
    rows = weight_differences(path, model.state_dict(), ('neck.', 'rpn_head.'))
    steps = max((d for _, d, quantized in rows if quantized), default=None)
    relative = max((d for _, d, quantized in rows if not quantized), default=None)
    return dict(rpn_rel_diff=diff, weight_steps=steps, float_weight_rel=relative)


def main():
    args = parse_args()
    register_all_modules()
    with interruptible(), one_line_errors():  # an untrusted or unfit checkpoint, bad data: one line
        replace = check_new_output_file(args.out, '--out', default=DEFAULT_OUT)
        cfg, fp32 = toy_raw_file(args.config, args.data, args.checkpoints[0], args.work_dir)
        files = {'fp32': fp32}
        for name, recipe in (('int8 all', Recipe(keep_float=())), ('int8 default', Recipe())):
            files[name] = osp.join(osp.dirname(fp32), f'raw_{name.replace(" ", "_")}.onnx')
            quantize_file(cfg, fp32, files[name], recipe, 'train', 64, 0)
        rows = []
        for checkpoint in args.checkpoints:
            model = build_detector(cfg, checkpoint)
            side = 2 * model.backbone.min_input_size
            for name, path in files.items():
                row = dict(file=name, checkpoint=checkpoint,
                           the_files=checkpoint == args.checkpoints[0],
                           **readings(path, model, side))
                print(json.dumps(row), flush=True)
                rows.append(row)
        write_text(args.out, json.dumps(dict(config=args.config, data=args.data, rows=rows),
                                        indent=2), replace)
        print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
