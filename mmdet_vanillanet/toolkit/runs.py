"""The Runners tools/train.py and tools/test.py build, and the demo runs: MMDetection's tools'
flags applied to the config, and the config checked before anything runs (the dataset, the work
dir and its run lock, the checkpoint's layout), so that bad input is one line before a Runner is
built. The config decides how the run trains (a config without our runtime hooks runs, with a
warning); these add command-line behaviour only (see the tools' docstrings)."""
import argparse
import os
import os.path as osp
from typing import Optional, Union

import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from ..deploy.build import load_config
from ..deploy.onnx_inference import OnnxDetector
from ..errors import InputError, deploy_layout_error
from ..input_paths import check_input_file
from ..models.checkpoint.backbone_weights import checkpoint_layout, require_training_layout
from ..output_paths import check_new_output_file
from ..run_lock import lock_work_dir
from ..serialization import ONNX, file_kind, safe_load
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
    refuse_links(cfg, training=True)
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


def check_show_dir(work_dir: str, show_dir: str):
    """MMDetection's visualization hook paints each test image into
    ``WORK_DIR/<the run's timestamp>/SHOW_DIR`` under the image's own file name: a new folder
    for a relative SHOW_DIR, but an absolute one (or one that climbs out with ..) is taken as
    it is, where the pictures would replace any file of those names (the dataset's own images,
    when it is their folder). Such a folder must be new or empty."""
    fresh = osp.join(osp.abspath(work_dir), '00000000_000000')  # a run's timestamp folder
    target = osp.normpath(osp.join(fresh, show_dir))
    if target == fresh or target.startswith(fresh + os.sep) or not osp.lexists(target):
        return
    if osp.islink(target) or not osp.isdir(target) or os.listdir(target):
        raise InputError(f'--show-dir {show_dir}: the pictures are written under the test '
                         f'images\' file names into {target}, which is not a new or empty folder '
                         f'(they would replace its files; the dataset\'s images, if it is their '
                         f'folder): give a new or empty folder, or a relative path (a new folder '
                         f'in the run\'s log folder)')


def build_test_runner(config: Union[str, Config], checkpoint: str,
                      work_dir: Optional[str] = None, cfg_options: Optional[dict] = None,
                      out: Optional[str] = None, deploy: bool = False, show: bool = False,
                      show_dir: Optional[str] = None, wait_time: float = 2,
                      launcher: str = 'none', onnx_checkpoint: Optional[str] = None,
                      threads: Optional[int] = None) -> Runner:
    """tools/test.py's Runner, its arguments as the tool's flags of the same names. An ONNX
    ``checkpoint`` (an exported raw file, fp32 or INT8) is tested through ``OnnxDetector``,
    with ``onnx_checkpoint`` (``--checkpoint``: the checkpoint it was exported from, which a
    two-stage detector's RoI heads need) and onnxruntime's ``threads``; everything else (the
    dataloader, the evaluator, ``out``, ``show_dir``, the work dir) is as for a checkpoint."""
    cfg = load_config(config, cfg_options)
    warn_missing_runtime_hooks(cfg, training=False)
    set_work_dir(cfg, work_dir, config if isinstance(config, str) else 'onnx_test')
    if out is not None:
        if not out.endswith(('.pkl', '.pickle')):
            raise InputError(f'--out {out}: the dump file must be a .pkl file')
        check_new_output_file(out, '--out', inputs=(config if isinstance(config, str) else None,
                                                    checkpoint, onnx_checkpoint))
    if '://' not in checkpoint:
        check_input_file(checkpoint, 'checkpoint')
    onnx_file = checkpoint if is_onnx_file(checkpoint) else None
    check_onnx_request(onnx_file, onnx_checkpoint, deploy, launcher)
    check_dataset_paths(cfg, ('test_dataloader', ), invalid_boxes='drop')
    require_writable(cfg.work_dir)
    refuse_links(cfg, training=False)
    if onnx_file is None:
        configure_deploy(cfg, checkpoint, deploy)
        cfg.load_from = checkpoint
    # MMDetection's engine and evaluation packages take a second to import: only --show and --out
    # need them here (the Runner imports them itself, once the checks above have passed).
    if show_dir:
        check_show_dir(cfg.work_dir, show_dir)
    if show or show_dir:
        from mmdet.engine.hooks.utils import trigger_visualization_hook
        shown = argparse.Namespace(show=show, show_dir=show_dir, wait_time=wait_time)
        cfg = trigger_visualization_hook(cfg, shown)
    setup_launcher(cfg, launcher)
    runner = runner_from_cfg(cfg)
    if onnx_file is not None:
        runner.model = OnnxTestModel(OnnxDetector(cfg, onnx_file, onnx_checkpoint,
                                                  threads=threads))
    if out is not None:
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=out))
    return runner


def is_onnx_file(path: str) -> bool:
    """A local file that begins as an ONNX model does (see ``serialization.file_kind``)."""
    return '://' not in path and file_kind(path) == ONNX


def check_onnx_request(onnx_file: Optional[str], onnx_checkpoint: Optional[str], deploy: bool,
                       launcher: str):
    """The test's checkpoint is read first (a missing or non-regular one named); --checkpoint
    goes with an ONNX file only, which is the deployed network already and runs in one
    process."""
    if onnx_file is None:
        if onnx_checkpoint is not None:
            raise InputError(f'--checkpoint {onnx_checkpoint}: it names the checkpoint an ONNX '
                             f'file was exported from, for tools/test.py CONFIG FILE.onnx '
                             f'--checkpoint CKPT; to test a checkpoint, give it in place of '
                             f'FILE.onnx')
        return
    if deploy:
        raise InputError(f'--deploy: {onnx_file} is an exported (fused) network already; drop '
                         f'--deploy')
    if launcher != 'none':
        raise InputError(f'--launcher {launcher}: an ONNX file is tested in one process')
    if onnx_checkpoint is not None and '://' not in onnx_checkpoint:
        check_input_file(onnx_checkpoint, '--checkpoint')


class OnnxTestModel(nn.Module):
    """What the test Runner runs for an exported file: ``OnnxDetector``'s detections in
    MMEngine's test loop, so that the evaluator, --out and --show-dir take them as a
    detector's."""

    def __init__(self, detector: OnnxDetector):
        super().__init__()
        self.detector = detector

    def test_step(self, data: dict) -> list:
        return self.detector.predict(data)


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
