"""Train a detector: MMDetection's tools/train.py, with the same flags. The config decides
how the run trains (its hooks, configs/_base_/vanillanet_runtime.py, give exact resume and the
NaN stop under MMDetection's own tool too); this tool adds only command-line behaviour:
- distributed training on CPU-only machines (gloo), which MMEngine's launcher cannot set up;
- bad input (a missing or malformed dataset, a bad backbone argument, a checkpoint that does
  not fit, an unwritable work_dir) stops the run with a one-line error before anything is
  trained; --invalid-boxes chooses whether boxes of non-positive size or outside their image
  are refused (default) or dropped (as MMDetection's dataset does), with a count;
- --overwrite: without it, a work_dir holding an earlier run's checkpoints is left alone;
- --resume finds the run's checkpoints wherever the config's checkpoint hook writes them,
  passes over a truncated last one for the one before it, and is an error when none is
  readable;
- every checkpoint is read with weights_only=True.
The Runner is built by tools/vanillanet_toolkit/runs.py (build_train_runner).
"""
if __name__ == '__main__':  # first: Ctrl-C and SIGTERM during the imports below (seconds)
    from mmdet_runsafe.start import start_tool  # end the tool in one line
    start_tool()
import argparse

from mmdet_runsafe.cli import (
    TRAINING_INTERRUPTED,
    TRAINING_REMEDY,
    add_runner_args,
    force_weights_only_loading,
    interruptible,
    one_line_errors,
    parse,
)
from mmdet_runsafe.hooks import NonFiniteError
from vanillanet_toolkit.runs import build_train_runner


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description='Train a detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true', default=False,
                        help='enable automatic-mixed-precision training (GPU only)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='enable automatically scaling LR.')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='If specify checkpoint path, resume from it, while if not '
                        'specify, try to auto resume from the latest checkpoint '
                        'in the work directory.')
    parser.add_argument('--overwrite', action='store_true',
                        help='start afresh in a work_dir that holds checkpoints of an earlier '
                        'run, replacing them')
    parser.add_argument('--invalid-boxes', choices=['refuse', 'drop'], default='refuse',
                        help='boxes of non-positive size or outside their image: refuse the '
                        'dataset (default), or drop them with a count, as MMDetection does')
    add_runner_args(parser)
    return parser


def main():
    args = parse(build_parser())
    force_weights_only_loading()
    with interruptible(TRAINING_INTERRUPTED), one_line_errors(NonFiniteError,
                                                               remedy=TRAINING_REMEDY):
        runner = build_train_runner(
            args.config, work_dir=args.work_dir, cfg_options=args.cfg_options, amp=args.amp,
            auto_scale_lr=args.auto_scale_lr, resume=args.resume, overwrite=args.overwrite,
            invalid_boxes=args.invalid_boxes, launcher=args.launcher)
        runner.train()
    return runner


if __name__ == '__main__':
    main()
