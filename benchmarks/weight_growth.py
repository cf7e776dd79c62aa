"""How much one training step grows the weights' L2 norm in normal training: the measurement
behind StopOnNonFiniteHook's bound (max_norm_growth, 10 by default), and behind its choice of a
healthy checkpoint after a stop (HEALTHY_GROWTH, HEALTHY_LOSS).

    python benchmarks/weight_growth.py    # about 10 minutes on 2 shared cores

- the toy config trained from scratch on a generated toy set (deep training, AdamW at the
  config's lr, warm-up included), checkpointed every epoch: the largest growth over every step,
  the largest growth of the norm from one checkpoint to the next, and the largest ratio of a
  checkpoint's mean loss to the lowest of the checkpoints before it;
- one step of each COCO config at its full lr (no warm-up: the worst case of its schedule), its
  VanillaNet at 1/16 of the widths, on two generated 320x320 images with boxes and masks.
Writes benchmarks/results/weight_growth.json.
"""
import argparse
import glob
import json
import os.path as osp
import tempfile

import toolkit_path  # noqa: F401  (tools/ on the path, for vanillanet_toolkit)
import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.structures.mask import BitmapMasks
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from mmengine.structures import InstanceData

import mmdet_vanillanet  # noqa: F401
from mmdet_runsafe.cli import one_line_errors
from mmdet_runsafe.hooks import StopOnNonFiniteHook
from mmdet_runsafe.hooks.non_finite_hook import weight_health
from mmdet_runsafe.output_paths import check_new_output_file, write_text
from mmdet_runsafe.toy_data import make_toy_coco
from mmdet_vanillanet.models import ARCH_SETTINGS
from vanillanet_toolkit.paths import CONFIGS, REPO_ROOT

NARROW = 16


def toy_run_growth(epochs: int) -> dict:
    """The largest one-step growth of a toy run, and between its checkpoints the largest growth
    and loss ratio (the hook records them)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = f'{tmp}/data/'
        make_toy_coco(root, num_train=32, num_val=4, image_size=(96, 96))
        cfg = Config.fromfile(osp.join(CONFIGS, 'mask_rcnn_vanillanet_toy.py'))
        cfg.work_dir = f'{tmp}/work'
        cfg.train_dataloader.update(num_workers=0, persistent_workers=False, batch_size=4)
        cfg.train_dataloader.dataset.data_root = root
        cfg.train_cfg.update(max_epochs=epochs, val_interval=epochs + 1)
        cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None  # training only
        cfg.test_dataloader = cfg.test_cfg = cfg.test_evaluator = None
        cfg.custom_hooks[0].duration = max(1, epochs // 2)
        cfg.default_hooks.checkpoint.interval = 1
        cfg.randomness = dict(seed=0)
        runner = Runner.from_cfg(cfg)
        runner.train()
        hook = next(h for h in runner.hooks if isinstance(h, StopOnNonFiniteHook))
        norms = [hook.start_norm] + [s['norm'] for s in hook.saved]
        losses = [s['loss'] for s in hook.saved]
        return {f'toy run, {epochs} epochs (largest over every step)': hook.largest_growth,
                f'toy run, {epochs} epochs (largest growth from one checkpoint to the next)':
                    max(b / a for a, b in zip(norms, norms[1:])),
                f'toy run, {epochs} epochs (largest mean loss over the lowest before it)':
                    max(loss / min(losses[:i]) for i, loss in enumerate(losses) if i)}


def synthetic_batch(with_mask: bool) -> dict:
    """Two 320x320 images with two boxes each (and their masks)."""
    generator = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for _ in range(2):
        inputs.append(torch.randint(0, 256, (3, 320, 320), dtype=torch.uint8,
                                    generator=generator))
        sample = DetDataSample(metainfo=dict(img_shape=(320, 320), ori_shape=(320, 320),
                                             pad_shape=(320, 320), scale_factor=(1.0, 1.0)))
        boxes = torch.tensor([[20., 30., 120., 160.], [150., 100., 300., 260.]])
        instances = InstanceData(bboxes=boxes, labels=torch.tensor([0, 5]))
        if with_mask:
            masks = torch.zeros(2, 320, 320, dtype=torch.uint8)
            for m, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
                m[y1:y2, x1:x2] = 1
            instances.masks = BitmapMasks(masks.numpy(), 320, 320)
        sample.gt_instances = instances
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def first_step_growth(config: str) -> float:
    """One step of the config's optimizer at its full lr on a narrow copy of its network."""
    cfg = Config.fromfile(config)
    backbone = cfg.model.backbone
    spec = ARCH_SETTINGS[backbone.arch]
    backbone.update(arch=dict(dims=[d // NARROW for d in spec.dims], strides=list(spec.strides),
                              ada_pool=spec.ada_pool, stem_stride=spec.stem_stride,
                              stem_padding=spec.stem_padding),
                    init_cfg=None, norm_cfg=dict(type='BN', eps=1e-6, requires_grad=True))
    cfg.model.neck.in_channels = [c // NARROW for c in cfg.model.neck.in_channels]
    with DefaultScope.overwrite_default_scope('mmdet'):
        torch.manual_seed(0)
        model = MODELS.build(cfg.model)
        model.init_weights()
        model.train()
        optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
        _, before = weight_health(model)
        model.train_step(synthetic_batch('mask_head' in str(cfg.model)), optim_wrapper)
        _, after = weight_health(model)
    return after / before


DEFAULT_OUT = osp.join(REPO_ROOT, 'benchmarks', 'results', 'weight_growth.json')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--toy-epochs', type=int, default=4,
                        help='epochs of the toy run (8 steps each)')
    parser.add_argument('--out', default=DEFAULT_OUT,
                        help='the report (default: the committed one, replaced)')
    return parser


def main():
    args = build_parser().parse_args()
    with one_line_errors():
        replace = check_new_output_file(args.out, '--out', default=DEFAULT_OUT)
    results = toy_run_growth(args.toy_epochs)
    for name, value in results.items():
        print(f'{name}: {value:.5f}', flush=True)
    for config in sorted(glob.glob(osp.join(CONFIGS, '*_coco.py'))):
        name = f'{osp.basename(config)} (first step, full lr)'
        results[name] = first_step_growth(config)
        print(f'{name}: {results[name]:.5f}', flush=True)
    write_text(args.out, json.dumps(results, indent=2), replace)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
