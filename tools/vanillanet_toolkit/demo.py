"""The demo's steps (tools/demo.py, ``make demo``): the toy dataset, a training run, the test of
its last checkpoint unfused and fused (with painted predictions), and the summary, each through
the same Runners as tools/train.py and tools/test.py."""
import os
import os.path as osp
import time
from typing import List, NamedTuple, Optional, Tuple

from mmdet_runsafe.toy_data import make_toy_coco

from .paths import CONFIGS
from .runs import build_test_runner, build_train_runner

CONFIG = osp.join(CONFIGS, 'mask_rcnn_vanillanet_toy.py')
# Fused and unfused AP agree to this (they compute the same to 1e-4 of the outputs' magnitude).
AP_TOLERANCE = 1e-3


class DemoResult(NamedTuple):
    checkpoint: str
    train_minutes: float
    unfused: Tuple[float, float]  # box and mask AP
    fused: Tuple[float, float]
    painted: Optional[str]  # the folder of painted predictions

    @property
    def fused_matches(self) -> bool:
        return all(abs(f - u) <= AP_TOLERANCE for f, u in zip(self.fused, self.unfused))


def toy_data_options(data: str) -> dict:
    """--cfg-options that point the toy config at the dataset in ``data``, generated there
    first when the folder does not exist."""
    if not osp.isdir(data):
        make_toy_coco(data)
        print(f'generated the toy dataset in {data}')
    root = data.rstrip('/') + '/'
    annotations = f'{root}annotations/instances_val.json'
    return {**{f'{split}_dataloader.dataset.data_root': root
               for split in ('train', 'val', 'test')},
            'val_evaluator.ann_file': annotations, 'test_evaluator.ann_file': annotations}


def evaluate_checkpoint(checkpoint: str, work_dir: str, options: dict,
                        fused: bool) -> Tuple[float, float]:
    """Box and mask AP of the checkpoint on the toy val split (fused: painted predictions)."""
    extra = dict(deploy=True, show_dir='predictions') if fused else {}
    metrics = build_test_runner(CONFIG, checkpoint, work_dir=work_dir, cfg_options=options,
                                **extra).test()
    return metrics['coco/bbox_mAP'], metrics['coco/segm_mAP']


def run_demo(work_dir: str, data: str, cfg_options: Optional[dict] = None) -> DemoResult:
    """Train the toy Mask R-CNN in ``work_dir`` on the toy set in ``data`` (``cfg_options``
    on top), then test its last checkpoint unfused and fused."""
    options = {**toy_data_options(data), **(cfg_options or {})}
    start = time.perf_counter()
    runner = build_train_runner(CONFIG, work_dir=work_dir, cfg_options=options)
    runner.train()
    minutes = (time.perf_counter() - start) / 60
    checkpoint = osp.join(work_dir, f'epoch_{runner.max_epochs}.pth')
    unfused, fused = (evaluate_checkpoint(checkpoint, osp.join(work_dir, f'test_{name}'),
                                          options, name == 'fused')
                      for name in ('unfused', 'fused'))
    painted = [osp.join(folder, d) for folder, dirs, _ in
               os.walk(osp.join(work_dir, 'test_fused')) for d in dirs if d == 'predictions']
    return DemoResult(checkpoint, minutes, unfused, fused, painted[0] if painted else None)


def summary(result: DemoResult) -> List[str]:
    (box, mask), (fbox, fmask) = result.unfused, result.fused
    lines = ['', 'VanillaNet Mask R-CNN on the toy COCO val split',
             f'{"":<22}{"box AP":>8}{"mask AP":>9}',
             f'{"unfused":<22}{box:>8.3f}{mask:>9.3f}',
             f'{"fused (deploy)":<22}{fbox:>8.3f}{fmask:>9.3f}',
             f'{"difference":<22}{fbox - box:>8.3f}{fmask - mask:>9.3f}',
             f'training: {result.train_minutes:.1f} min, checkpoint {result.checkpoint}']
    if result.painted:
        lines.append(f'painted predictions: {result.painted}')
    return lines
