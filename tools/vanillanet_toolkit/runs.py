"""The Runners tools/train.py and tools/test.py build, and the demo runs: the checks any
MMDetection run gets (``mmdet_runsafe.preflight``, in the order each tool makes them), then
VanillaNet's own (a checkpoint's layout; an exported file to test), so that bad input is one line
before a Runner is built. The config decides how the run trains (a config without our runtime
hooks runs, with a warning); these add command-line behaviour only (see the tools'
docstrings)."""
import os.path as osp
from typing import Optional, Union

import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mmdet_runsafe.cli import RUNSAFE, Runtime
from mmdet_runsafe.errors import InputError
from mmdet_runsafe.input_paths import check_input_file
from mmdet_runsafe.preflight import prepare_test_run, prepare_train_run
from mmdet_runsafe.serialization import ONNX, file_kind
from mmdet_vanillanet.deploy.onnx_inference import OnnxDetector
from mmdet_vanillanet.models.checkpoint.backbone_weights import (
    checkpoint_layout,
    deploy_layout_error,
    require_training_layout,
)

# configs/_base_/vanillanet_runtime.py's hooks: runsafe_runtime.py's, and VanillaNet's own.
VANILLANET_RUNTIME = Runtime(
    hooks={**RUNSAFE.hooks,
           'CheckpointFitHook': 'a checkpoint that does not fit the model loads partially, '
                                'with warnings only'},
    test_hooks=(*RUNSAFE.test_hooks, 'CheckpointFitHook'),
    base_file='configs/_base_/vanillanet_runtime.py')


def runtime_of(cfg: Config) -> Runtime:
    """The runtime hooks our tools expect a config to declare: vanillanet_runtime.py's for a
    config that loads the plugin (its custom_imports) or has a VanillaNet backbone (which our
    tools register, imported or not), else runsafe_runtime.py's. CheckpointFitHook is the
    plugin's: a config of MMDetection's own (a ResNet one, on runsafe_runtime.py) cannot
    declare it without importing VanillaNet."""
    imports = (cfg.get('custom_imports') or {}).get('imports') or []
    imports = [imports] if isinstance(imports, str) else imports
    if any(i.split('.')[0] == 'mmdet_vanillanet' for i in imports) or vanillanet_backbone(cfg):
        return VANILLANET_RUNTIME
    return RUNSAFE


def vanillanet_backbone(cfg: Config) -> bool:
    """Whether the config's detector has a VanillaNet backbone: only then are its checkpoints
    VanillaNet's (a training or a deploy layout) and is there anything to fuse."""
    return backbone_type(cfg) == 'VanillaNet'


def backbone_type(cfg: Config) -> str:
    """The registry name of the config's backbone ('' where it has none), without a scope."""
    backbone = ((cfg.get('model') or {}).get('backbone') or {}).get('type', '')
    return getattr(backbone, '__name__', str(backbone)).rsplit('.', 1)[-1]


def build_train_runner(config: str, **flags) -> Runner:
    """tools/train.py's Runner, ``flags`` as ``mmdet_runsafe.preflight.prepare_train_run``
    takes them (the tool's flags of the same names)."""
    cfg = prepare_train_run(config, runtime_of, **flags)
    if cfg.get('load_from') and vanillanet_backbone(cfg):
        require_training_layout(cfg.load_from, 'start a training run',
                                'use the training-mode checkpoint it was converted from')
    return runner_from_cfg(cfg)


def build_test_runner(config: Union[str, Config], checkpoint: str, deploy: bool = False,
                      onnx_checkpoint: Optional[str] = None, threads: Optional[int] = None,
                      **flags) -> Runner:
    """tools/test.py's Runner, ``flags`` as ``mmdet_runsafe.preflight.prepare_test_run`` takes
    them (the tool's flags of the same names). An ONNX ``checkpoint`` (an exported raw file,
    fp32 or INT8) is tested through ``OnnxDetector``, with ``onnx_checkpoint``
    (``--checkpoint``: the checkpoint it was exported from, which a two-stage detector's RoI
    heads need) and onnxruntime's ``threads``; everything else (the dataloader, the evaluator,
    ``out``, ``show_dir``, the work dir) is as for a checkpoint."""
    onnx_file = checkpoint if is_onnx_file(checkpoint) else None
    # Before the launcher is set up (prepare_test_run's last step): --launcher with an ONNX
    # file is refused, not started.
    check_onnx_request(checkpoint, onnx_file, onnx_checkpoint, deploy,
                       flags.get('launcher', 'none'))
    cfg = prepare_test_run(config, checkpoint, runtime_of, inputs=(onnx_checkpoint, ),
                           **flags)
    if onnx_file is None:
        configure_deploy(cfg, checkpoint, deploy)
        cfg.load_from = checkpoint
    runner = runner_from_cfg(cfg)
    if onnx_file is not None:
        runner.model = OnnxTestModel(OnnxDetector(cfg, onnx_file, onnx_checkpoint,
                                                  threads=threads))
    if flags.get('out') is not None:
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=flags['out']))
    return runner


def is_onnx_file(path: str) -> bool:
    """A local regular file that begins as an ONNX model does (see
    ``serialization.file_kind``); anything else is checked as a checkpoint."""
    return '://' not in path and osp.isfile(path) and file_kind(path) == ONNX


def check_onnx_request(tested: str, onnx_file: Optional[str], onnx_checkpoint: Optional[str],
                       deploy: bool, launcher: str):
    """The test's file (``tested``) named .onnx, or given with --checkpoint, is an ONNX model
    (where it is a regular file or a URL: anything else is named as the checkpoint it then is,
    by ``prepare_test_run``); --checkpoint goes with an ONNX file only, which is the deployed
    network already and runs in one process."""
    if onnx_file is None:
        url = '://' in tested
        if (tested.endswith('.onnx') or onnx_checkpoint is not None) and \
                (url or osp.isfile(tested)):
            kind = 'a URL' if url else file_kind(tested) or 'a PyTorch checkpoint'
            with_checkpoint = f' with --checkpoint {onnx_checkpoint}' if onnx_checkpoint else ''
            raise InputError(f'{tested} is {kind}, not an ONNX model: tools/test.py CONFIG '
                             f'FILE.onnx --checkpoint CKPT tests a file exported by '
                             f'tools/export_onnx.py --part raw; give an exported file'
                             f'{with_checkpoint}, or a checkpoint without --checkpoint')
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
    ``deploy=True``, is an error, not a partial load. Another backbone has nothing to fuse."""
    if not vanillanet_backbone(cfg):
        if deploy:
            raise InputError(f'--deploy fuses a VanillaNet backbone; the config\'s backbone is '
                             f'{backbone_type(cfg) or "not set"}: test without --deploy')
        return
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
