"""Output strides and channels of every arch, and the argument checks."""
import pytest
import torch

from helpers import ARCHS, build_backbone, narrow
from mmdet_vanillanet.config_error import ConfigError
from mmdet_vanillanet.models import ARCH_SETTINGS, vanillanet


@pytest.mark.parametrize('arch', [a for a in ARCHS if 'ada_pool' not in a])
def test_default_outputs_are_strides_4_to_32(arch, image):
    model = build_backbone(arch=narrow(arch)).eval()
    with torch.no_grad():
        outs = model(image)
    h, w = image.shape[-2:]
    assert model.out_strides == (4, 8, 16, 32)
    assert [o.shape[1] for o in outs] == list(model.out_channels)
    assert [tuple(o.shape[-2:]) for o in outs] == [(h // s, w // s) for s in (4, 8, 16, 32)]
    # The channels follow the released widths (divided by 64 here).
    spec = ARCH_SETTINGS[arch]
    expected = [spec.dims[0] if i == 'stem' else spec.dims[i + 1] for i in model.out_indices]
    assert [c * 64 for c in model.out_channels] == expected


def test_default_out_indices_match_the_authors_detection_setting():
    assert build_backbone(arch=narrow('13')).out_indices == (0, 1, 8, 10)
    assert build_backbone(arch=narrow('5')).out_indices == ('stem', 0, 1, 2)
    assert build_backbone(arch=narrow('6')).out_indices == ('stem', 0, 1, 3)


@pytest.mark.parametrize('arch, channels', [('5', (512, 1024, 2048, 4096)),
                                            ('13', (512, 1024, 2048, 4096))])
def test_real_widths(arch, channels):
    model = build_backbone(arch=arch, act_num=4).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert model.out_channels == channels
    assert [tuple(o.shape[1:]) for o in outs] == [(c, 64 // s, 64 // s)
                                                  for c, s in zip(channels, (4, 8, 16, 32))]


def test_ada_pool_grids_are_fixed_and_sizes_below_113_are_refused():
    model = build_backbone(arch=narrow('13_x1_5_ada_pool')).eval()
    assert model.min_input_size == 113
    with torch.no_grad():
        small = model(torch.randn(1, 3, 128, 128))
        large = model(torch.randn(1, 3, 256, 200))
    assert [o.shape[-1] for o in small] == [43, 38, 19, 10]
    assert [tuple(o.shape[-2:]) for o in large[1:]] == [(38, 38), (19, 19), (10, 10)]
    with pytest.raises(ValueError, match='at least 113 pixels'):
        model(torch.randn(1, 3, 112, 300))


def test_custom_out_indices_and_channels():
    model = build_backbone(arch=narrow('13'), out_indices=(1, 8)).eval()
    outs = model(torch.randn(1, 3, 64, 64))
    assert model.out_channels == (16, 32) and [o.shape[1] for o in outs] == [16, 32]


@pytest.mark.parametrize('cfg, message', [
    (dict(arch='14'), "unknown VanillaNet arch '14'"),
    (dict(arch=dict(dims=[8, 16], strides=[2, 2])), 'one more width than strides'),
    (dict(arch=dict(dims=[8, 16], stride=[2])), "unknown keys \\['stride'\\]"),
    (dict(arch='5', act_num=-1), 'act_num must be an integer >= 0'),
    (dict(arch='5', out_indices=(0, 3)), r'\[3\] not allowed; this arch has stages 0..2'),
    (dict(arch='5', frozen_stages=4), 'frozen_stages=4 is not allowed'),
    (dict(arch='13', out_indices=(8, 1)), 'must be in network order without repeats'),
    (dict(arch='5', out_indices=(0, 'stem')), "'stem' first"),
    (dict(arch='5', out_indices=(1, 1)), 'without repeats'),
])
def test_bad_arguments_are_named(cfg, message):
    with pytest.raises(ValueError, match=message):
        build_backbone(**cfg)


def test_input_smaller_than_total_stride_is_refused():
    model = build_backbone(arch=narrow('9')).eval()
    assert model.min_input_size == 32
    model(torch.randn(1, 3, 32, 45))
    with pytest.raises(ValueError, match='input 31x45 is too small for VanillaNet-custom'):
        model(torch.randn(1, 3, 31, 45))


@pytest.mark.parametrize('norm_cfg, message', [
    (dict(type='LN'), "norm_cfg type 'LN': VanillaNet normalises NCHW maps per channel"),
    (dict(type='GN', num_groups=7), 'does not build a norm layer of 8 channels')])
def test_norm_layers_the_backbone_cannot_use_are_named(norm_cfg, message):
    """LN normalises the last dimension: it built, then failed at the first iteration."""
    with pytest.raises(ConfigError, match=message):
        build_backbone(arch=narrow('5'), norm_cfg=norm_cfg)
    build_backbone(arch=narrow('5'), norm_cfg=dict(type='GN', num_groups=4))


def test_with_cp_on_a_deploy_backbone_is_not_kept_as_if_it_acted(monkeypatch):
    logged = []
    monkeypatch.setattr(vanillanet, 'print_log', lambda message, **kw: logged.append(message))
    backbone = build_backbone(arch=narrow('5'), deploy=True, with_cp=True)
    assert not backbone.with_cp
    assert logged == ['VanillaNet: with_cp is ignored by a deploy (fused) backbone, which is '
                      'not trained']
