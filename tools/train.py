"""Train a detector: MMDetection's tools/train.py, with the same flags, plus
- distributed training on CPU-only machines (gloo), which MMEngine's launcher cannot set up;
- bad input (a missing or malformed dataset, a bad backbone argument, a checkpoint that does
  not fit) stops the run with a one-line error before anything is trained;
- --overwrite: without it, a work_dir holding an earlier run's checkpoints is left alone;
- exact --resume: the random generators are saved with each checkpoint (RandomStateHook), and a
  truncated last checkpoint is passed over for the one before it;
- every checkpoint is read with weights_only=True; a NaN or infinite loss stops the run
  (StopOnNonFiniteLossHook) with the iteration it happened at.
"""
import argparse

from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mmdet_vanillanet.cli import add_runner_args, load_config, one_line_errors, parse
from mmdet_vanillanet.distributed import setup_launcher
from mmdet_vanillanet.engine import NonFiniteLossError
from mmdet_vanillanet.run_checks import (check_dataset_paths, check_not_deploy, guard_work_dir,
                                         resume_checkpoint)
from mmdet_vanillanet.serialization import safe_load, use_safe_loading

RELIABILITY_HOOKS = ('RandomStateHook', 'StopOnNonFiniteLossHook')


def parse_args():
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
    add_runner_args(parser)
    return parse(parser)


def build_runner(args):
    cfg = load_config(args)
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.auto_scale_lr:
        if 'enable' not in cfg.get('auto_scale_lr', {}) or \
                'base_batch_size' not in cfg.auto_scale_lr:
            raise RuntimeError('Can not find "auto_scale_lr" or "auto_scale_lr.enable" or '
                               '"auto_scale_lr.base_batch_size" in your configuration file.')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.load_from = resume_checkpoint(cfg.work_dir)
        cfg.resume = cfg.load_from is not None  # nothing (readable) to resume: start afresh
    elif args.resume is not None:
        safe_load(args.resume, mmap=True)  # a truncated or unsafe file is named here
        cfg.resume = True
        cfg.load_from = args.resume

    check_dataset_paths(cfg, ('train_dataloader', 'val_dataloader'))
    guard_work_dir(cfg.work_dir, args.resume, args.overwrite)
    check_not_deploy(cfg.get('load_from'), '--resume' if args.resume else 'load_from')
    present = {hook.get('type') for hook in cfg.get('custom_hooks', [])}
    cfg.custom_hooks = [*cfg.get('custom_hooks', []),
                        *(dict(type=t) for t in RELIABILITY_HOOKS if t not in present)]
    setup_launcher(cfg, args.launcher)
    return Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)


def main():
    args = parse_args()
    use_safe_loading()
    with one_line_errors(NonFiniteLossError):
        runner = build_runner(args)
        runner.train()
    return runner


if __name__ == '__main__':
    main()
