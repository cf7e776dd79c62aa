"""Test (and evaluate) a detector: MMDetection's tools/test.py, with the same flags, plus
--deploy, which tests the fused (deployed) network:
- a training-mode checkpoint is loaded as usual and the backbone is fused before testing;
- a deploy-layout checkpoint (tools/convert_checkpoint.py) is loaded into a deploy backbone.
A deploy-layout checkpoint without --deploy is an error rather than a silent partial load, as
is any checkpoint that does not fit (the config's CheckpointFitHook).
"""
import argparse
import os.path as osp

from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mmdet_vanillanet.deploy.detector import load_config
from mmdet_vanillanet.errors import InputError, deploy_layout_error
from mmdet_vanillanet.models.pretrained import checkpoint_layout
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
from mmdet_vanillanet.toolkit.work_dir import require_writable


def parse_args():
    parser = argparse.ArgumentParser(description='MMDet test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir',
                        help='the directory to save the file containing evaluation metrics')
    parser.add_argument('--out', type=str,
                        help='dump predictions to a pickle file for offline evaluation')
    parser.add_argument('--deploy', action='store_true',
                        help='test the deployed network: fuse the VanillaNet backbone')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir',
                        help='directory where painted images will be saved (under '
                        'work_dir/timestamp/)')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    add_runner_args(parser)
    return parse(parser)


def configure_deploy(cfg, checkpoint: str, deploy: bool):
    """Fuse before testing, or build the deploy backbone for a deploy-layout checkpoint."""
    layout = checkpoint_layout(checkpoint)
    if layout == 'deploy' and not deploy:
        raise deploy_layout_error(checkpoint, 'be tested as a training-mode network',
                                  'add --deploy to test it as the fused network it is')
    if not deploy:
        return
    if layout == 'deploy':
        cfg.model.backbone.deploy = True
    else:
        cfg.custom_hooks = [*cfg.get('custom_hooks', []), dict(type='VanillaNetDeployHook')]


def build_runner(args):
    cfg = load_config(args.config, args.cfg_options)
    require_runtime_hooks(cfg)
    set_work_dir(cfg, args.work_dir, args.config)
    if args.out is not None:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise InputError(f'--out {args.out}: the dump file must be a .pkl file')
        if osp.exists(args.out):
            raise FileExistsError(f'--out {args.out} exists; remove it or choose another name')
    if not osp.isfile(args.checkpoint) and '://' not in args.checkpoint:
        raise FileNotFoundError(f'checkpoint not found: {args.checkpoint}')
    check_dataset_paths(cfg, ('test_dataloader', ), invalid_boxes='drop')
    require_writable(cfg.work_dir)
    configure_deploy(cfg, args.checkpoint, args.deploy)
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        from mmdet.engine.hooks.utils import trigger_visualization_hook
        cfg = trigger_visualization_hook(cfg, args)
    setup_launcher(cfg, args.launcher)

    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    if args.out is not None:
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    return runner


def main():
    args = parse_args()
    force_weights_only_loading()
    with one_line_errors():
        return build_runner(args).test()


if __name__ == '__main__':
    main()
