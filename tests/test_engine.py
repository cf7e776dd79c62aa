"""The engine parts (deep-training schedule, layer decay, weights_only checkpoints) and the
MMDetection 2.x key layout of the released detectors."""
import math
import os.path as osp

import pytest
import torch
from mmdet.registry import HOOKS, MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.optim import build_optim_wrapper

from helpers import CONFIGS
from mmdet_vanillanet.errors import InputError
from mmdet_vanillanet.serialization import safe_load

register_all_modules()


def test_linear_schedule_reaches_one_and_stays():
    hook = HOOKS.build(dict(type='VanillaNetDeepTrainingHook', start=0.0, duration=4))
    assert [hook.value_at(e) for e in range(7)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_schedule_and_a_start_above_zero():
    hook = HOOKS.build(dict(type='VanillaNetDeepTrainingHook', start=0.2, duration=10,
                            schedule='cosine', by_epoch=False))
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
        HOOKS.build(dict(type='VanillaNetDeepTrainingHook', **cfg))


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
    cfg = Config.fromfile(osp.join(CONFIGS, 'mask_rcnn_vanillanet13_coco.py'))
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    assert set(model.state_dict()) == _mmdet2_mask_rcnn_keys()


def _toy_detector():
    cfg = Config.fromfile(osp.join(CONFIGS, 'mask_rcnn_vanillanet_toy.py'))
    return MODELS.build(cfg.model)


@pytest.mark.parametrize('paramwise, message', [
    (dict(decay_rate=0.6, num_layers=6, custom_keys={}), r"keys \['custom_keys'\]"),
    (dict(num_layers=2), 'num_layers must be an integer >= 3'),
    (dict(num_layers='6'), 'num_layers must be an integer'),
])
def test_layer_decay_refuses_what_it_would_ignore(paramwise, message):
    """The toy backbone has 5 stages: layer groups 1..3."""
    with pytest.raises(InputError, match=message):
        build_optim_wrapper(_toy_detector(), dict(
            type='OptimWrapper', constructor='VanillaNetLayerDecayOptimizerConstructor',
            paramwise_cfg=paramwise, optimizer=dict(type='AdamW', lr=1e-4)))


def test_checkpoints_load_with_weights_only_and_keep_their_statistics(tmp_path):
    """What WeightsOnlyCheckpointHook writes loads with torch.load(weights_only=True), without
    allow-listing getattr, and the buffers still compute their statistics."""
    hub = MessageHub.get_instance('test_weights_only')
    for value in (1.0, 3.0):
        hub.update_scalar('train/loss', value)
    checkpoint = {'message_hub': hub.state_dict()}
    HOOKS.build(dict(type='WeightsOnlyCheckpointHook')).before_save_checkpoint(None, checkpoint)
    torch.save(checkpoint, tmp_path / 'ckpt.pth')
    loaded = safe_load(str(tmp_path / 'ckpt.pth'))
    buffer = loaded['message_hub']['log_scalars']['train/loss']
    assert buffer.mean() == 2.0 and buffer.statistics('max') == 3.0
    assert type(hub.get_scalar('train/loss')) is HistoryBuffer  # the live one is untouched
