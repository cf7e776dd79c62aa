"""The Runners tools/train.py and tools/test.py build, and the demo runs: MMDetection's tools'
flags applied to the config, and the config checked before anything runs (the dataset, the work
dir and its run lock, the checkpoint's layout), so that bad input is one line before a Runner is
built. The config decides how the run trains (a config without our runtime hooks runs, with a
warning); these add command-line behaviour only (see the tools' docstrings)."""
import argparse
import os
import os.path as osp
from typing import Optional

from mmengine.config import Config
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from ..deploy.build import load_config
from ..errors import InputError, deploy_layout_error
from ..models.checkpoint.backbone_weights import checkpoint_layout, require_training_layout
from ..output_paths import check_output_file
from ..run_lock import lock_work_dir
from ..serialization import safe_load
from .cli import set_work_dir, warn_missing_runtime_hooks
from .datasets import check_dataset_paths
from .launch import setup_launcher
from .work_dir import guard_work_dir, refuse_links, require_writable, resume_checkpoint


def build_train_runner(config: str, work_dir: Optional[str] = None,
                       cfg_options: Optional[dict] = None, amp: bool = False,
                       auto_scale_lr: bool = False, resume: Optional[str] = None,
                       overwrite: bool = False, invalid_boxes: str = 'refuse',
                       launcher: str = 'none') -> Runner:
    """tools/train.py's Runner: ``resume`` is a checkpoint path or 'auto' (the run's newest
    readable checkpoint), the rest as the tool's flags of the same names."""
    cfg = load_config(config, cfg_options)
    warn_missing_runtime_hooks(cfg, training=True)
    set_work_dir(cfg, work_dir, config)
    if amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    if auto_scale_lr:
        if 'enable' not in cfg.get('auto_scale_lr', {}) or \
                'base_batch_size' not in cfg.auto_scale_lr:
            raise RuntimeError('Can not find "auto_scale_lr" or "auto_scale_lr.enable" or '
                               '"auto_scale_lr.base_batch_size" in your configuration file.')
        cfg.auto_scale_lr.enable = True
    require_writable(cfg.work_dir)
    if first_process(launcher):  # before --resume reads, or anything writes, the work_dir
        lock_work_dir(cfg.work_dir)
    refuse_links(cfg.work_dir, training=True)
    configure_resume(cfg, resume)
    check_dataset_paths(cfg, ('train_dataloader', 'val_dataloader'),
                        invalid_boxes=invalid_boxes)
    guard_work_dir(cfg, resume, overwrite)
    if cfg.get('load_from'):
        require_training_layout(cfg.load_from, 'start a training run',
                                'use the training-mode checkpoint it was converted from')
    setup_launcher(cfg, launcher)
    return runner_from_cfg(cfg)


# Where each launcher says which process of the run this is, before MMEngine sets it up.
RANK_VARIABLES = dict(pytorch='RANK', slurm='SLURM_PROCID', mpi='OMPI_COMM_WORLD_RANK')


def first_process(launcher: str) -> bool:
    """Whether this is the run's first process (rank 0), which holds its work_dir's lock."""
    return launcher not in RANK_VARIABLES or os.environ.get(RANK_VARIABLES[launcher], '0') == '0'


def configure_resume(cfg: Config, resume: Optional[str]):
    """--resume: 'auto' continues from the run's newest readable checkpoint (a new run, from
    load_from if any, when there is none yet); a path, from that file, read first so that a
    truncated or unsafe one is named here."""
    if resume == 'auto':
        found = resume_checkpoint(cfg)
        cfg.resume = found is not None
        cfg.load_from = found or cfg.get('load_from')
    elif resume is not None:
        safe_load(resume, mmap=True)
        cfg.resume = True
        cfg.load_from = resume


def build_test_runner(config: str, checkpoint: str, work_dir: Optional[str] = None,
                      cfg_options: Optional[dict] = None, out: Optional[str] = None,
                      deploy: bool = False, show: bool = False, show_dir: Optional[str] = None,
                      wait_time: float = 2, launcher: str = 'none') -> Runner:
    """tools/test.py's Runner, its arguments as the tool's flags of the same names."""
    cfg = load_config(config, cfg_options)
    warn_missing_runtime_hooks(cfg, training=False)
    set_work_dir(cfg, work_dir, config)
    if out is not None:
        if not out.endswith(('.pkl', '.pickle')):
            raise InputError(f'--out {out}: the dump file must be a .pkl file')
        if osp.exists(out):
            raise FileExistsError(f'--out {out} exists; remove it or choose another name')
        check_output_file(out, '--out')
    if not osp.isfile(checkpoint) and '://' not in checkpoint:
        raise FileNotFoundError(f'checkpoint not found: {checkpoint}')
    check_dataset_paths(cfg, ('test_dataloader', ), invalid_boxes='drop')
    require_writable(cfg.work_dir)
    refuse_links(cfg.work_dir, training=False)
    configure_deploy(cfg, checkpoint, deploy)
    cfg.load_from = checkpoint
    # MMDetection's engine and evaluation packages take a second to import: only --show and --out
    # need them here (the Runner imports them itself, once the checks above have passed).
    if show or show_dir:
        from mmdet.engine.hooks.utils import trigger_visualization_hook
        shown = argparse.Namespace(show=show, show_dir=show_dir, wait_time=wait_time)
        cfg = trigger_visualization_hook(cfg, shown)
    setup_launcher(cfg, launcher)
    runner = runner_from_cfg(cfg)
    if out is not None:
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=out))
    return runner


def configure_deploy(cfg: Config, checkpoint: str, deploy: bool):
    """--deploy: fuse before testing, or build the deploy backbone for a deploy-layout
    checkpoint; a deploy-layout checkpoint without it, and with a config whose backbone is not
    ``deploy=True``, is an error, not a partial load."""
    layout = checkpoint_layout(checkpoint)
    if layout == 'deploy' and cfg.model.backbone.get('deploy', False):
        return  # a deploy config for a converted file, as MMDetection's own test.py takes it
    if layout == 'deploy' and not deploy:
        raise deploy_layout_error(checkpoint, 'be tested as a training-mode network',
                                  'add --deploy to test it as the fused network it is')
    if not deploy:
        return
    if layout == 'deploy':
        cfg.model.backbone.deploy = True
    else:
        cfg.custom_hooks = [*cfg.get('custom_hooks', []), dict(type='VanillaNetDeployHook')]


def runner_from_cfg(cfg: Config) -> Runner:
    """The config's Runner, or its own runner_type, as MMDetection's tools build it."""
    return Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
