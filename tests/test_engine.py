"""The deep-training schedule and the MMDetection 2.x key layout of the released detectors."""
import math
import os.path as osp

import pytest
import torch
from mmdet.registry import HOOKS, MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config

import mmdet_vanillanet  # noqa: F401

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
register_all_modules()


def test_linear_schedule_reaches_one_and_stays():
    hook = HOOKS.build(dict(type='DeepTrainingHook', start=0.0, duration=4))
    assert [hook.value_at(e) for e in range(7)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_schedule_and_a_start_above_zero():
    hook = HOOKS.build(dict(type='DeepTrainingHook', start=0.2, duration=10, schedule='cosine',
                            by_epoch=False))
    assert hook.value_at(0) == pytest.approx(0.2)
    assert hook.value_at(5) == pytest.approx(0.2 + 0.8 * 0.5)
    assert hook.value_at(2) == pytest.approx(0.2 + 0.8 * 0.5 * (1 - math.cos(math.pi * 0.2)))
    assert hook.value_at(10) == hook.value_at(99) == 1.0


@pytest.mark.parametrize('cfg, message', [
    (dict(schedule='step'), "schedule must be 'linear' or 'cosine'"),
    (dict(start=1.5), 'need 0 <= start <= 1'),
    (dict(duration=0), 'duration >= 1'),
])
def test_bad_schedules_are_named(cfg, message):
    with pytest.raises(ValueError, match=message):
        HOOKS.build(dict(type='DeepTrainingHook', **cfg))


def _mmdet2_mask_rcnn_keys(num_stages=11, fpn_levels=4, mask_convs=4):
    """The state-dict keys of the authors' MMDetection 2.x Mask R-CNN with their Vanillanet:
    their backbone's names (stem1, stem2, stages.i.conv1/conv2/act, SyncBN) and mmdet 2.x's
    FPN, RPNHead, Shared2FCBBoxHead and FCNMaskHead attribute names."""
    bn = ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')
    conv = ('weight', 'bias')
    keys = [f'backbone.stem1.0.{k}' for k in conv] + [f'backbone.stem1.1.{k}' for k in bn]
    keys += [f'backbone.stem2.0.{k}' for k in conv] + [f'backbone.stem2.1.{k}' for k in bn]
    keys += ['backbone.stem2.2.weight'] + [f'backbone.stem2.2.bn.{k}' for k in bn]
    for i in range(num_stages):
        for name in ('conv1', 'conv2'):
            keys += [f'backbone.stages.{i}.{name}.0.{k}' for k in conv]
            keys += [f'backbone.stages.{i}.{name}.1.{k}' for k in bn]
        keys += [f'backbone.stages.{i}.act.weight'] + [f'backbone.stages.{i}.act.bn.{k}'
                                                       for k in bn]
    for i in range(fpn_levels):
        keys += [f'neck.{m}.{i}.conv.{k}' for m in ('lateral_convs', 'fpn_convs') for k in conv]
    keys += [f'rpn_head.{m}.{k}' for m in ('rpn_conv', 'rpn_cls', 'rpn_reg') for k in conv]
    keys += [f'roi_head.bbox_head.{m}.{k}' for m in ('fc_cls', 'fc_reg', 'shared_fcs.0',
                                                     'shared_fcs.1') for k in conv]
    keys += [f'roi_head.mask_head.convs.{i}.conv.{k}' for i in range(mask_convs) for k in conv]
    keys += [f'roi_head.mask_head.{m}.{k}' for m in ('upsample', 'conv_logits') for k in conv]
    return set(keys)


def test_released_mmdet2_detector_keys_are_exactly_ours():
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'mask_rcnn_vanillanet13_coco.py'))
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    assert set(model.state_dict()) == _mmdet2_mask_rcnn_keys()
