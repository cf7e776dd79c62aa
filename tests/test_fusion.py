"""switch_to_deploy: the fused network computes what the unfused one does, for every arch."""
import copy

import pytest
import torch
import torch.nn.functional as F

from helpers import ARCHS, build_backbone, fused_copy, max_rel_diff, narrow, randomize
from mmdet_vanillanet.config_error import ConfigError
from mmdet_vanillanet.models import VanillaBlock
from mmdet_vanillanet.models.checkpoint.backbone_weights import fused_state, training_network
from mmdet_vanillanet.models.series_activation import SeriesActivation

TOLERANCE = 1e-4  # max abs difference, relative to the largest output magnitude


def _input(arch):
    size = 128 if 'ada_pool' in arch else 64
    return torch.randn(2, 3, size, size + 8, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize('act_num', [3, 4])
@pytest.mark.parametrize('arch', ARCHS)
def test_fused_equals_unfused(arch, act_num):
    model = randomize(build_backbone(arch=narrow(arch), act_num=act_num)).eval()
    x = _input(arch)
    with torch.no_grad():
        expected = model(x)
        model.switch_to_deploy()
        got = model(x)
    assert max_rel_diff(expected, got) <= TOLERANCE


def test_fused_equals_unfused_at_real_width_of_arch_5():
    model = randomize(build_backbone(arch='5', act_num=3)).eval()
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        expected = model(x)
        model.switch_to_deploy()
        got = model(x)
    assert max_rel_diff(expected, got) <= TOLERANCE


def test_fused_tree_is_the_released_deploy_layout(random_narrow13):
    fused = fused_copy(random_narrow13)
    dims, k = fused.arch.dims, 9  # act_num 4
    released = {'stem.0.weight': (dims[0], 3, 4, 4), 'stem.0.bias': (dims[0], ),
                'stem.1.weight': (dims[0], 1, k, k), 'stem.1.bias': (dims[0], )}
    for i in range(11):
        released.update({f'stages.{i}.conv.weight': (dims[i + 1], dims[i], 1, 1),
                         f'stages.{i}.conv.bias': (dims[i + 1], ),
                         f'stages.{i}.act.weight': (dims[i + 1], 1, k, k),
                         f'stages.{i}.act.bias': (dims[i + 1], )})
    assert {k: tuple(v.shape) for k, v in fused.state_dict().items()} == released
    reference = build_backbone(arch=fused.arch, act_num=4, deploy=True)
    assert fused.state_dict().keys() == reference.state_dict().keys()
    assert all(p.is_contiguous() for p in fused.parameters())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())


def test_second_switch_changes_nothing(random_narrow13):
    fused = fused_copy(random_narrow13)
    before = {k: v.clone() for k, v in fused.state_dict().items()}
    fused.switch_to_deploy()
    after = fused.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_fusing_mid_deep_training_is_refused_and_leaves_the_model_intact(random_narrow13):
    model = copy.deepcopy(random_narrow13)
    model.act_learn = 0.5
    with pytest.raises(ConfigError, match='act_learn=0.5'):
        model.switch_to_deploy()
    assert not model.deploy and 'stages.0.conv1.0.weight' in model.state_dict()


def test_deploy_model_refuses_a_training_step(random_narrow13):
    fused = fused_copy(random_narrow13).train()
    with pytest.raises(RuntimeError, match='fused for deployment'):
        fused(torch.randn(1, 3, 64, 64))
    with torch.no_grad():  # inference in train mode (e.g. a test hook) is harmless
        fused(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match='cannot take another value'):
        fused.act_learn = 0.2


def _reference_forward(state, x, act_num, act_learn, strides):
    """The training-mode network written out from the reference description, on a state dict:
    stem1 -> leaky_relu -> stem2 -> act; per stage conv1 -> leaky_relu -> conv2 -> pool -> act."""
    def bn(x, prefix):
        return F.batch_norm(x, state[f'{prefix}.running_mean'], state[f'{prefix}.running_var'],
                            state[f'{prefix}.weight'], state[f'{prefix}.bias'], eps=1e-6)

    def conv_bn(x, prefix, **kw):
        x = F.conv2d(x, state[f'{prefix}.0.weight'], state[f'{prefix}.0.bias'], **kw)
        return bn(x, f'{prefix}.1')

    def act(x, prefix):
        x = F.conv2d(F.relu(x), state[f'{prefix}.weight'], padding=act_num, groups=x.shape[1])
        return bn(x, f'{prefix}.bn')

    def leaky(x):  # the paper's A'(x) = (1 - l) A(x) + l x
        return (1 - act_learn) * F.relu(x) + act_learn * x

    x = act(conv_bn(leaky(conv_bn(x, 'stem1', stride=4)), 'stem2'), 'stem2.2')
    outs = []
    for i, stride in enumerate(strides):
        x = conv_bn(leaky(conv_bn(x, f'stages.{i}.conv1')), f'stages.{i}.conv2')
        x = F.max_pool2d(x, stride) if stride > 1 else x
        x = act(x, f'stages.{i}.act')
        outs.append(x)
    return outs


@pytest.mark.parametrize('act_learn', [0.0, 0.3, 1.0])
def test_training_forward_follows_the_reference(act_learn, random_narrow13):
    model = copy.deepcopy(random_narrow13)
    model.act_learn = act_learn
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got = model(x)
        ref = _reference_forward(model.state_dict(), x, 4, act_learn, model.arch.strides)
    expected = [ref[i] for i in model.out_indices]
    assert max_rel_diff(expected, got) <= 1e-5


def test_blocks_and_activations_build_with_their_default_norm():
    """norm_cfg defaults to the released BN (eps 1e-6), not None, for every part alone."""
    block = VanillaBlock(8, 16, stride=2).eval()
    act = SeriesActivation(8).eval()
    assert block.act.bn.eps == act.bn.eps == 1e-6
    assert block(torch.randn(1, 8, 8, 8)).shape == (1, 16, 4, 4)


def test_a_norm_that_is_not_batchnorm_is_named_at_fusion():
    model = build_backbone(arch=narrow('5'), norm_cfg=dict(type='GN', num_groups=1)).eval()
    with pytest.raises(ConfigError, match='cannot fuse GroupNorm: only BatchNorm folds'):
        model.switch_to_deploy()


@pytest.mark.parametrize('eps', [1e-6, 1e-2])
def test_a_file_is_fused_by_the_network_it_describes(eps):
    """Converting and fusing on load build the training network on the meta device, give it
    the file's tensors and switch it: the same numbers as the network fused in memory."""
    norm_cfg = dict(type='BN', eps=eps)
    model = randomize(build_backbone(arch=narrow('13'), act_num=4, norm_cfg=norm_cfg)).eval()
    training = training_network(dict(arch=model.arch, act_num=4, norm_cfg=norm_cfg), 'the test')
    assert all(t.is_meta for t in training.state_dict().values())
    fused = fused_state(training, model.state_dict(), 'x.pth')
    expected = fused_copy(model).state_dict()
    assert fused.keys() == expected.keys()
    assert all(torch.equal(fused[k], expected[k]) for k in expected)
    other_eps = 1e-2 if eps == 1e-6 else 1e-6
    other = training_network(dict(arch=model.arch, act_num=4,
                                  norm_cfg=dict(type='BN', eps=other_eps)), 'test')
    wrong = fused_state(other, model.state_dict(), 'x.pth')  # what the eps changes
    assert not torch.allclose(wrong['stem.0.weight'], expected['stem.0.weight'], rtol=1e-3)
