"""frozen_stages, norm_eval and with_cp, observed through real optimisation steps."""
import copy

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from helpers import build_backbone, narrow, randomize


def _train_step(model, seed=0):
    """One SGD step on a loss over all outputs; returns the gradients it computed."""
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    loss = sum((out ** 2).mean() for out in model(x))
    optimizer.zero_grad()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    return grads


def _changed(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_frozen_stages_get_no_gradient_and_keep_bn_statistics():
    model = randomize(build_backbone(arch=narrow('9'), frozen_stages=2))
    before = copy.deepcopy(model.state_dict())
    grads = _train_step(model)
    changed = _changed(before, model.state_dict())
    frozen = ('stem1.', 'stem2.', 'stages.0.', 'stages.1.')
    assert not any(k.startswith(frozen) for k in changed)
    assert not any(k.startswith(frozen) for k in grads)
    # Everything after the frozen part learns and tracks statistics.
    assert 'stages.2.conv1.0.weight' in changed and 'stages.2.conv1.1.running_mean' in changed
    assert all(not m.training for m in model.stem2.modules())
    assert all(m.training for m in model.stages[2].modules())


def test_frozen_stages_zero_freezes_only_the_stem():
    model = build_backbone(arch=narrow('5'), frozen_stages=0)
    grads = _train_step(model)
    assert not any(k.startswith(('stem1.', 'stem2.')) for k in grads)
    assert 'stages.0.conv1.0.weight' in grads


def test_norm_eval_keeps_every_bn_in_eval_mode_while_weights_learn():
    model = randomize(build_backbone(arch=narrow('7'), norm_eval=True))
    before = copy.deepcopy(model.state_dict())
    _train_step(model)
    changed = _changed(before, model.state_dict())
    assert all(not m.training for m in model.modules() if isinstance(m, _BatchNorm))
    assert not any('running_' in k for k in changed)
    assert 'stages.0.conv1.0.weight' in changed and 'stages.0.conv1.1.weight' in changed


def test_with_cp_gives_the_same_gradients():
    plain = randomize(build_backbone(arch=narrow('8'), act_num=4))
    checkpointed = build_backbone(arch=narrow('8'), act_num=4, with_cp=True)
    checkpointed.load_state_dict(plain.state_dict())
    for model in (plain, checkpointed):
        model.act_learn = 0.4
    expected, got = _train_step(plain), _train_step(checkpointed)
    assert expected.keys() == got.keys() and len(got) > 0
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6)
