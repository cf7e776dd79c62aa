"""What the tests share: narrow networks built as a config would, generated weights, and the
user's commands (tools/*.py) run on a tiny toy set in subprocesses, as a user would."""
import argparse
import copy
import json
import os
import os.path as osp
import re
import resource
import signal
import subprocess
import sys

import torch
from mmdet.registry import MODELS
from mmengine.config import Config, DictAction

import mmdet_vanillanet  # noqa: F401  (registers VanillaNet, as a config's custom_imports)
from mmdet_vanillanet.deploy.equivalence import max_rel_diff, randomize  # noqa: F401  (for the tests)
from mmdet_vanillanet.models import ARCH_SETTINGS

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join(REPO_ROOT, 'configs')
ARCHS = list(ARCH_SETTINGS)
CONFIG = osp.join(CONFIGS, 'mask_rcnn_vanillanet_toy.py')


def narrow(arch: str, divisor: int = 64) -> dict:
    """The released arch with every width divided by ``divisor``: same depth, strides, pools."""
    spec = ARCH_SETTINGS[arch]
    return dict(dims=[d // divisor for d in spec.dims], strides=list(spec.strides),
                ada_pool=spec.ada_pool, stem_stride=spec.stem_stride,
                stem_padding=spec.stem_padding)


def build_backbone(**cfg):
    """Build through mmdet's registry, as a config would."""
    return MODELS.build(dict(type='VanillaNet', **cfg))


def fused_copy(model):
    fused = copy.deepcopy(model)
    fused.switch_to_deploy()
    return fused


class RunsCode:
    """Pickles as a call of open(marker, 'w'): a checkpoint holding it would create the marker
    file when unpickled without weights_only protection."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, 'w'))


# A config on MMDetection's own default hooks: none of configs/_base_/vanillanet_runtime.py's.
WITHOUT_RUNTIME_HOOKS = """_base_ = [{config!r}]
default_hooks = dict(
    _delete_=True, timer=dict(type='IterTimerHook'), logger=dict(type='LoggerHook'),
    param_scheduler=dict(type='ParamSchedulerHook'), checkpoint=dict(type='CheckpointHook'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='DetVisualizationHook'))
"""


def config_without_runtime_hooks(folder) -> str:
    """The toy config on MMDetection's own default hooks, written into ``folder``."""
    path = osp.join(folder, 'without_runtime_hooks.py')
    with open(path, 'w') as f:
        f.write(WITHOUT_RUNTIME_HOOKS.format(config=CONFIG))
    return path


def file_size_limit(limit):
    """A subprocess's preexec_fn: a disk that takes ``limit`` bytes per file (writes beyond it
    fail with EFBIG, as writes to a full disk fail with ENOSPC)."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def toy_options(data_root, epochs=2, seed=0):
    """16 images, 4 per batch, `epochs` epochs with act_learn reaching 1 after the first;
    seeded unless ``seed`` is None (the shipped configs set no seed)."""
    keys = ('batch_size=4', 'num_workers=0', 'persistent_workers=False',
            f'dataset.data_root={data_root}')
    options = [f'{split}_dataloader.{key}' for split in ('train', 'val', 'test') for key in keys]
    return options + [
        f'val_evaluator.ann_file={data_root}annotations/instances_val.json',
        f'test_evaluator.ann_file={data_root}annotations/instances_val.json',
        f'train_cfg.max_epochs={epochs}', f'train_cfg.val_interval={epochs}',
        'default_hooks.checkpoint.interval=1', 'default_hooks.logger.interval=1',
        'custom_hooks.0.duration=1', 'model.test_cfg.rcnn.score_thr=0.0'] + (
        [] if seed is None else [f'randomness.seed={seed}'])


def toy_config(data_root, work_dir, epochs=2, seed=0, options=()):
    """The toy config with ``toy_options`` (and ``options``, more --cfg-options) applied, as
    MMDetection's tools/train.py builds it, training into ``work_dir``."""
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    cfg = Config.fromfile(CONFIG)
    cfg.merge_from_dict(parser.parse_args(
        ['--cfg-options', *toy_options(data_root, epochs, seed), *options]).cfg_options)
    cfg.work_dir = str(work_dir)
    return cfg


def scale_options(scale: int) -> dict:
    """--cfg-options that train and test the toy config at ``scale`` instead of 160."""
    return {'train_dataloader.dataset.pipeline.2.scale': (scale, scale),
            'val_dataloader.dataset.pipeline.1.scale': (scale, scale),
            'test_dataloader.dataset.pipeline.1.scale': (scale, scale)}


def run(*argv, expect_ok=True, launcher=None, env=None, timeout=600, preexec_fn=None):
    """Run a command in the repo root; check its exit status and return its output."""
    env = {**{k: v for k, v in os.environ.items()
              if k not in ('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', 'TRITON_INTERPRET')},
           **(env or {})}
    cmd = launcher or [sys.executable]
    done = subprocess.run([*cmd, *argv], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=preexec_fn)
    output = done.stdout + done.stderr
    assert (done.returncode == 0) == expect_ok, output[-3000:]
    return output


def train(work_dir, data_root, *extra, epochs=2, seed=0, options=(), **kw):
    """tools/train.py on the toy set; ``options`` are more --cfg-options."""
    return run('tools/train.py', CONFIG, '--work-dir', str(work_dir), *extra,
               '--cfg-options', *toy_options(data_root, epochs, seed), *options, **kw)


def evaluate(checkpoint, data_root, work_dir, *extra, **kw):
    return run('tools/test.py', CONFIG, str(checkpoint), '--work-dir', str(work_dir), *extra,
               '--cfg-options', *toy_options(data_root), **kw)


def ap(output, metric):
    return float(re.findall(rf'coco/{metric}_mAP: ([-\d.]+)', output)[-1])


def first_logged_iter_of_last_run(work_dir):
    """The first iteration the newest run in work_dir logged (a resumed run starts after the
    checkpoint's)."""
    runs = sorted(d for d, _, files in os.walk(work_dir) if 'scalars.json' in files)
    with open(osp.join(runs[-1], 'scalars.json')) as f:
        return min(json.loads(line)['iter'] for line in f if '"iter"' in line)


def scalars(work_dir):
    """The scalars the LoggerHook recorded, one dict per logged iteration, over every run."""
    paths = sorted(osp.join(d, f) for d, _, files in os.walk(work_dir) for f in files
                   if f == 'scalars.json')
    rows = []
    for path in paths:
        with open(path) as f:
            rows += [json.loads(line) for line in f]
    return rows


def swapped(data_root, folder, split='val'):
    """The toy set's ``split`` file with the first two categories swapped (ids, names,
    annotations unchanged), as issue 17's probe wrote it, in ``folder``; returns its path."""
    with open(f'{data_root}annotations/instances_{split}.json') as f:
        coco = json.load(f)
    coco['categories'][:2] = coco['categories'][1::-1]
    path = osp.join(folder, f'{split}_swapped.json')
    with open(path, 'w') as f:
        json.dump(coco, f)
    return path


def toy_test_config(data_root):
    """The toy config, its test dataloader on the tests' toy set, in this process."""
    cfg = Config.fromfile(CONFIG)
    cfg.test_dataloader.update(batch_size=3, num_workers=0, persistent_workers=False)
    cfg.test_dataloader.dataset.data_root = data_root
    cfg.test_evaluator.ann_file = f'{data_root}annotations/instances_val.json'
    return cfg


def toy_data_config(data_root):
    """The toy config with every split on the tests' toy set, in this process."""
    cfg = toy_test_config(data_root)
    for split in ('train', 'val'):
        cfg[f'{split}_dataloader'].dataset.data_root = data_root
    return cfg


def narrow_retinanet_config():
    """RetinaNet on a narrow VanillaNet-13, testing at the toy images' scale."""
    cfg = Config.fromfile(f'{CONFIGS}/retinanet_vanillanet13_coco.py')
    cfg.model.backbone.update(arch=narrow('13'), init_cfg=None)
    cfg.model.neck.update(in_channels=[16, 32, 64], out_channels=32)
    cfg.model.bbox_head.update(in_channels=32, feat_channels=32, stacked_convs=1)
    cfg.test_dataloader.dataset.pipeline[1].scale = (320, 320)  # toy images, not COCO's
    return cfg


@torch.no_grad()
def center_roi_logits(model, batch):
    """Generated RoI heads give every box one class and near-empty masks: the mean of their
    inputs dominates the logits. Centring each class and mask logit on a batch spreads the
    labels over the classes and gives masks that cover part of their box, so that both
    comparisons of detections mean something."""
    layers = (model.roi_head.bbox_head.fc_cls, model.roi_head.mask_head.conv_logits)
    means = {}

    def record(layer, _, out):  # per output channel, over the batch's boxes (and pixels)
        means[layer] = out.transpose(0, 1).flatten(1).mean(1)

    hooks = [layer.register_forward_hook(record) for layer in layers]
    model.test_step(batch)
    for hook, layer in zip(hooks, layers):
        hook.remove()
        layer.bias -= means[layer]


def run_config(work_dir, **checkpoint_hook):
    """The parts of a run's config that locate its checkpoints."""
    return Config(dict(work_dir=str(work_dir), default_hooks=dict(checkpoint=checkpoint_hook)))


def save_toy_checkpoint(path, classes=('circle', 'square', 'triangle')):
    """An (untrained) toy detector saved as a run saves it, with its classes and its config;
    returns ``path``."""
    cfg = Config.fromfile(CONFIG)
    model = MODELS.build(cfg.model)
    torch.save({'state_dict': model.state_dict(),
                'meta': {'dataset_meta': {'classes': classes}, 'cfg': cfg.pretty_text}}, path)
    return path
