"""The main job on the bundled toy dataset, end to end, through the same Runners as the tools:

    generate data -> train (tools/train.py's Runner) -> test (box and mask AP) -> test --deploy
    (fused) -> painted predictions -> summary

    python tools/demo.py [--work-dir work_dirs/toy_demo/TIMESTAMP] [--data data/toy_coco]

Each run trains in a new work dir, so nothing from an earlier run is overwritten. The steps are
tools/vanillanet_toolkit/demo.py.
"""
if __name__ == '__main__':  # first: Ctrl-C and SIGTERM during the imports below (seconds)
    from mmdet_runsafe.start import start_tool  # end the tool in one line
    start_tool()
import argparse
import os.path as osp
import time

from mmdet_runsafe.cli import (
    TRAINING_REMEDY,
    CfgOptions,
    force_weights_only_loading,
    one_line_errors,
)
from mmdet_runsafe.hooks import NonFiniteError
from vanillanet_toolkit.demo import run_demo, summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--work-dir', default=osp.join(
        'work_dirs', 'toy_demo', time.strftime('%Y%m%d_%H%M%S')))
    parser.add_argument('--data', default='data/toy_coco', help='toy dataset folder')
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptions,
                        help='passed on to the training and the tests (key=value)')
    return parser


def main():
    args = build_parser().parse_args()
    force_weights_only_loading()
    with one_line_errors(NonFiniteError, remedy=TRAINING_REMEDY):
        result = run_demo(args.work_dir, args.data, args.cfg_options)
    print('\n'.join(summary(result)))
    if not result.fused_matches:
        raise SystemExit('fused AP differs from unfused AP by more than 0.001')


if __name__ == '__main__':
    main()
