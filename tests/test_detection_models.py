"""Detectors built from the shipped configs through mmdet's registry: every config builds with
consistent widths, and Mask R-CNN and RetinaNet take a real training and inference step."""
import glob
import os.path as osp

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper

from helpers import CONFIGS, max_rel_diff, narrow, randomize
from mmdet_vanillanet.models.checkpoint.forms import count_params
from mmdet_vanillanet.models.detector import fuse_detector

CONFIG_FILES = sorted(glob.glob(osp.join(CONFIGS, '*.py')))
register_all_modules()


@pytest.mark.parametrize('config', CONFIG_FILES, ids=osp.basename)
def test_every_config_builds_with_matching_widths(config):
    cfg = Config.fromfile(config)
    with torch.device('meta'):  # real widths, no memory
        model = MODELS.build(cfg.model)
    assert list(model.neck.in_channels) == list(model.backbone.out_channels)
    assert type(model.backbone).__name__ == 'VanillaNet'
    # What lets MMDetection's own tools run the config without importing this package first.
    assert cfg.custom_imports == dict(imports=['mmdet_runsafe.hooks', 'mmdet_vanillanet'],
                                      allow_failed_imports=False)


def _narrow_detector(config, **test_cfg):
    """A shipped config at 1/64 of the backbone widths, random init, no download."""
    cfg = Config.fromfile(osp.join(CONFIGS, config))
    if test_cfg:
        cfg.model.test_cfg.rcnn.update(test_cfg)
    backbone = cfg.model.backbone
    backbone.update(arch=narrow(backbone.arch), init_cfg=None,
                    norm_cfg=dict(type='BN', eps=1e-6))
    widths = [c // 64 for c in cfg.model.neck.in_channels]
    cfg.model.neck.in_channels = widths
    model = MODELS.build(cfg.model)
    model.init_weights()
    return cfg, model


@pytest.mark.parametrize('config, with_mask', [('mask_rcnn_vanillanet13_coco.py', True),
                                               ('retinanet_vanillanet13_coco.py', False)])
def test_training_and_inference_step(config, with_mask):
    cfg, model = _narrow_detector(config)
    data = demo_mm_inputs(2, [(3, 96, 128), (3, 80, 112)], num_items=[3, 2], num_classes=80,
                          with_mask=with_mask)
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    model.train()
    before = model.backbone.stages[0].conv1[0].weight.detach().clone()
    losses = model.train_step(data, optim)
    assert all(torch.isfinite(v).all() for v in losses.values())
    assert not torch.equal(before, model.backbone.stages[0].conv1[0].weight)
    model.eval()
    with torch.no_grad():
        results = model.test_step(data)
    assert len(results) == 2 and results[0].pred_instances.bboxes.shape[-1] == 4
    if with_mask:
        assert results[0].pred_instances.masks.shape[-2:] == results[0].ori_shape


def test_fused_detector_predicts_the_same():
    _, model = _narrow_detector('mask_rcnn_vanillanet13_coco.py', score_thr=0.0)
    randomize(model.backbone)
    model.eval()
    data = demo_mm_inputs(1, [(3, 96, 128)], num_items=[2], num_classes=80, with_mask=True)
    with torch.no_grad():
        before = model.test_step(data)[0].pred_instances
        fuse_detector(model)
        after = model.test_step(data)[0].pred_instances
    assert model.backbone.deploy and len(before) > 0
    # The top detections: far down the list, near-equal scores may swap places.
    torch.testing.assert_close(after.scores[:10], before.scores[:10], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(after.bboxes[:10], before.bboxes[:10], rtol=1e-3, atol=1e-2)


def test_fusing_a_copy_leaves_the_detector_as_it_was():
    """fuse_detector(model, inplace=False): a fused copy that computes what the model does."""
    _, model = _narrow_detector('retinanet_vanillanet13_coco.py')
    randomize(model.backbone)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fused = fuse_detector(model, inplace=False)
        assert max_rel_diff(model.backbone(x), fused.backbone(x)) <= 1e-4
    assert fused is not model and fused.backbone.deploy and not model.backbone.deploy
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in after)
    assert fuse_detector(fused) is fused  # in place: the model itself, already fused


def test_layer_decay_groups_follow_the_authors_numbering():
    cfg, model = _narrow_detector('mask_rcnn_vanillanet13_coco.py')
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    base_lr, rate = 1.3e-4, 0.6
    groups = {g['group_name']: g for g in optim.optimizer.param_groups}
    by_param = {name: g for g in groups.values() for name in g['param_names']}
    # stem -> 0, stage i -> i // 2 + 1, neck and heads -> 7; lr scale 0.6 ** (8 - id - 1)
    expected = {'backbone.stem1.0.weight': 0, 'backbone.stem2.2.weight': 0,
                'backbone.stages.0.conv1.0.weight': 1, 'backbone.stages.1.act.weight': 1,
                'backbone.stages.5.conv2.0.weight': 3, 'backbone.stages.10.conv1.0.weight': 6,
                'neck.fpn_convs.0.conv.weight': 7, 'roi_head.mask_head.conv_logits.weight': 7}
    for name, layer_id in expected.items():
        group = by_param[name]
        assert group['lr'] == pytest.approx(base_lr * rate ** (8 - layer_id - 1)), name
        assert group['weight_decay'] == 0.05
    for name in ('backbone.stem1.0.bias', 'backbone.stages.3.conv1.1.weight',
                 'neck.fpn_convs.0.conv.bias'):
        assert by_param[name]['weight_decay'] == 0.0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(by_param) == trainable


def test_published_parameter_counts_are_those_of_the_fused_detectors():
    """77.1M (Mask R-CNN) and 75.4M (RetinaNet) add up with a deploy-mode VanillaNet-13."""
    for config, published in (('mask_rcnn_vanillanet13_coco.py', 77.1),
                              ('retinanet_vanillanet13_coco.py', 75.4)):
        cfg = Config.fromfile(osp.join(CONFIGS, config))
        cfg.model.backbone.deploy = True
        with torch.device('meta'):
            model = MODELS.build(cfg.model)
        params = count_params(model.state_dict()) / 1e6
        assert abs(params - published) < 0.5, (config, params)
