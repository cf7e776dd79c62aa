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
"""
import argparse

from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mmdet_vanillanet.deploy.detector import load_config
from mmdet_vanillanet.engine import NonFiniteError
from mmdet_vanillanet.models.pretrained import require_training_layout
from mmdet_vanillanet.serialization import safe_load
from mmdet_vanillanet.toolkit.cli import (
    add_runner_args,
    force_weights_only_loading,
    one_line_errors,
    parse,
    require_runtime_hooks,
    set_work_dir,
)
from mmdet_vanillanet.toolkit.datasets import check_dataset_paths
from mmdet_vanillanet.toolkit.launch import setup_launcher
from mmdet_vanillanet.toolkit.work_dir import guard_work_dir, require_writable, resume_checkpoint


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
    parser.add_argument('--invalid-boxes', choices=['refuse', 'drop'], default='refuse',
                        help='boxes of non-positive size or outside their image: refuse the '
                        'dataset (default), or drop them with a count, as MMDetection does')
    add_runner_args(parser)
    return parse(parser)


def build_runner(args):
    cfg = load_config(args.config, args.cfg_options)
    require_runtime_hooks(cfg)
    set_work_dir(cfg, args.work_dir, args.config)
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
        found = resume_checkpoint(cfg)
        cfg.resume = found is not None  # no checkpoint yet: a new run, from load_from if any
        cfg.load_from = found or cfg.get('load_from')
    elif args.resume is not None:
        safe_load(args.resume, mmap=True)  # a truncated or unsafe file is named here
        cfg.resume = True
        cfg.load_from = args.resume

    check_dataset_paths(cfg, ('train_dataloader', 'val_dataloader'),
                        invalid_boxes=args.invalid_boxes)
    guard_work_dir(cfg, args.resume, args.overwrite)
    require_writable(cfg.work_dir)
    if cfg.get('load_from'):
        require_training_layout(cfg.load_from, 'start a training run',
                                'use the training-mode checkpoint it was converted from')
    setup_launcher(cfg, args.launcher)
    return Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)


def main():
    args = parse_args()
    force_weights_only_loading()
    with one_line_errors(NonFiniteError):
        runner = build_runner(args)
        runner.train()
    return runner


if __name__ == '__main__':
    main()
