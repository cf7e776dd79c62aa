"""Output strides and channels of every arch, and the argument checks."""
import copy

import pytest
import torch

from helpers import ARCHS, build_backbone, narrow
from mmdet_vanillanet.config_error import ConfigError
from mmdet_vanillanet.models import ARCH_SETTINGS, vanillanet
from mmdet_vanillanet.models.series_activation import SeriesActivation


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
    # Issue 29 item 4: a config's 'no' was taken for True, 'maybe' kept as it was.
    (dict(arch='5', lean_training='no'), r"^lean_training='no': must be True or False$"),
    (dict(arch='5', with_cp='maybe'), r"^with_cp='maybe': must be True or False$"),
    (dict(arch='5', norm_eval=1), r'^norm_eval=1: must be True or False$'),
    (dict(arch='5', deploy='yes'), r"^deploy='yes': must be True or False$"),
    (dict(arch='5', act_learn=1.5), r'act_learn must lie in \[0, 1\], got 1.5'),
    (dict(arch='5', act_learn='0.5'), r"act_learn='0.5': must be a number in \[0, 1\]"),
    (dict(arch='5', act_learn=0.5, deploy=True), 'a deployed VanillaNet has merged its 1x1'),
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


def test_lean_training_set_after_construction_is_checked_too():
    model = build_backbone(arch=narrow('5'))
    with pytest.raises(ConfigError, match=r"^lean_training='no': must be True or False$"):
        model.lean_training = 'no'
    assert model.lean_training is True


def test_act_learn_is_a_config_key_that_builds_the_network_at_it():
    """Issue 29 item 11: model.backbone.act_learn=0.5 was a TypeError (no such argument)."""
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    built = build_backbone(arch=narrow('5'), act_learn=0.5).eval()
    set_after = build_backbone(arch=narrow('5')).eval()
    set_after.load_state_dict({k: v for k, v in built.state_dict().items() if k != 'act_learn'})
    set_after.act_learn = 0.5
    assert built.act_learn == 0.5 and built.slopes == (0.5, ) * 4
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(built(x), set_after(x)))


def test_one_implementation_setting_per_network():
    """lean_training and act_impl are stored once, in the network's Implementation, which every
    block and activation reads: set on the backbone or on one activation, the whole network
    (and the backbone's attribute) follows. They were copies pushed down by attribute name."""
    model = build_backbone(arch=narrow('5'), lean_training=False, act_impl='torch')
    activations = [m for m in model.modules() if isinstance(m, SeriesActivation)]
    owners = {id(m.implementation) for m in [*model.stages, *activations]}
    assert owners == {id(model.implementation)}
    assert (model.lean_training, model.act_impl) == (False, 'torch')
    activations[-1].act_impl = 'auto'
    assert model.act_impl == 'auto' and {m.act_impl for m in activations} == {'auto'}
    model.lean_training = True
    assert model.implementation.lean is True
    copied = copy.deepcopy(model)  # an EMA copy: its own setting, shared inside it
    copied.act_impl = 'torch'
    assert model.act_impl == 'auto'
    assert {m.act_impl for m in copied.modules() if isinstance(m, SeriesActivation)} == {'torch'}


@pytest.mark.parametrize('arch', ['5', '13_x1_5_ada_pool'])
def test_the_deployed_block_is_built_whole(arch):
    """Issue 28 item 4: each activation is given its block's pool when it is made; fusing moves
    no module (the pool was moved into the activation from __init__ and from switch_to_deploy),
    so the fused network is the one deploy=True builds, module for module."""
    model = build_backbone(arch=narrow(arch, 32))
    spec = ARCH_SETTINGS[arch]
    pools = [(s if s > 1 and not g else 1, g if s > 1 else 0)
             for s, g in zip(spec.strides, spec.ada_pool or [0] * len(spec.strides))]
    activations = [block.act for block in model.stages]
    assert [(a.pool, a.grid) for a in activations] == pools
    model.switch_to_deploy()
    assert [block.act for block in model.stages] == activations  # the same modules
    assert [(a.pool, a.grid) for a in activations] == pools
    built = build_backbone(arch=narrow(arch, 32), deploy=True)

    def tree(network):
        return sorted((name, type(m).__name__, m.extra_repr())
                      for name, m in network.named_modules())

    assert tree(model) == tree(built)


def test_forward_hooks_on_the_conv_and_bn_pairs_see_their_calls():
    """The pairs hold no state, but they are still the modules that compute: a feature
    recorder on ``stages[i].conv1`` (as on the authors' network) sees each call."""
    model = build_backbone(arch=narrow('5')).eval()
    seen = []
    for name in ('stem1', 'stem2', 'stages.0.conv1', 'stages.0.conv2'):
        model.get_submodule(name).register_forward_hook(
            lambda m, args, out, name=name: seen.append((name, tuple(out.shape[1:2]))))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert seen == [('stem1', (8, )), ('stem2', (8, )), ('stages.0.conv1', (8, )),
                    ('stages.0.conv2', (16, ))]
