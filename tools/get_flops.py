"""Parameters and FLOPs of a detector (MMDetection's get_flops, without a dataset).

    python tools/get_flops.py configs/mask_rcnn_vanillanet13_coco.py --deploy --shape 800 1280
"""
if __name__ == '__main__':  # first: Ctrl-C and SIGTERM during the imports below (seconds)
    from mmdet_runsafe.start import start_tool  # end the tool in one line
    start_tool()
import argparse

from mmdet.registry import MODELS
from mmdet.utils import register_all_modules

from mmdet_runsafe.cli import CfgOptions, one_line_errors
from mmdet_runsafe.config import load_config
from mmdet_runsafe.units import readable
from mmdet_vanillanet.models.detector import fuse_detector
from vanillanet_toolkit.complexity import detector_complexity


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('--shape', type=int, nargs=2, default=[800, 1280], metavar=('H', 'W'),
                        help='input height and width (padded to 32)')
    parser.add_argument('--deploy', action='store_true', help='count the fused backbone')
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptions)
    return parser


def main():
    args = build_parser().parse_args()
    register_all_modules()
    with one_line_errors():
        cfg = load_config(args.config, args.cfg_options)
        cfg.model.backbone.init_cfg = None  # random weights count the same; no download
        model = MODELS.build(cfg.model)
        if args.deploy:
            fuse_detector(model.eval())
        result = detector_complexity(model, tuple(args.shape))
    h, w = result['input_shape']
    print(f'{args.config} ({"fused" if args.deploy else "unfused"} backbone), input {h}x{w}:')
    print(f'  params {readable(result["params"])}, FLOPs {readable(result["flops"])}')


if __name__ == '__main__':
    main()
