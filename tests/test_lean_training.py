"""The lean training path (ops/lean_training.py) against the plain autograd path
(``lean_training=False``): the same outputs, gradients and BN statistics, and what it keeps."""
import copy
import functools
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.modules.batchnorm import _BatchNorm

from helpers import ARCHS, build_backbone, narrow, randomize
from mmdet_vanillanet.models.series_activation import SeriesActivation
from mmdet_vanillanet.ops import lean_training
from mmdet_vanillanet.ops.depthwise import relu_dwconv
from vanillanet_toolkit.saved_tensors import model_tensors, saved_for_backward

STATISTICS = ('running_mean', 'running_var', 'num_batches_tracked')


def pair(**cfg):
    """A plain and a lean backbone with the same generated weights and BN statistics."""
    plain = randomize(build_backbone(lean_training=False, **cfg))
    lean = build_backbone(**cfg)
    lean.load_state_dict(plain.state_dict())
    return plain, lean


def train_step(model, x, steps=1):
    """``steps`` forward and backward passes on a loss over every output, a sum over the images
    (so that a process's share of a batch has its share of the loss); the outputs and gradients
    of the last."""
    model.train()
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        inp = x.clone().requires_grad_()
        outs = model(inp)
        sum(((o - 0.5) ** 2).sum() for o in outs).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return [o.detach() for o in outs], dict(grads, input=inp.grad)


def assert_same_step(plain, lean, x, steps=1):
    """Outputs, every gradient but the depthwise weights', BN statistics: equal, bit for bit
    (both paths run PyTorch's kernels on the same values). The depthwise weight gradient is
    summed in another order on the CPU (ops/depthwise.py): equal to rounding."""
    expected_outs, expected = train_step(plain, x, steps)
    outs, got = train_step(lean, x, steps)
    assert all(torch.equal(a, b) for a, b in zip(expected_outs, outs))
    assert expected.keys() == got.keys() and len(got) > 1
    for name, grad in expected.items():
        if name.endswith(('act.weight', 'stem2.2.weight')):
            torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-6 * grad.abs().max())
        else:
            assert torch.equal(got[name], grad), name
    state, expected_state = lean.state_dict(), plain.state_dict()
    assert all(torch.equal(state[k], expected_state[k]) for k in state if k.endswith(STATISTICS))


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('act_learn', [1.0, 0.3, 0.0])
def test_every_arch_trains_as_the_plain_path(arch, act_learn):
    """Strides 1 and 2, the adaptive pool (13_x1_5_ada_pool), the deep-training slope (the
    identity at 1, a ReLU at 0)."""
    plain, lean = pair(arch=narrow(arch), act_num=4)
    plain.act_learn = lean.act_learn = act_learn
    size = 128 if 'ada_pool' in arch else 64
    x = torch.randn(2, 3, size, size + 16, generator=torch.Generator().manual_seed(0))
    assert_same_step(plain, lean, x, steps=2)


@pytest.mark.parametrize('cfg', [dict(frozen_stages=2), dict(norm_eval=True), dict(with_cp=True),
                                 dict(with_cp=True, frozen_stages=1, act_learn=0.5)],
                         ids=['frozen_stages', 'norm_eval', 'with_cp', 'with_cp_frozen'])
def test_training_switches_compose(cfg):
    cfg = dict(cfg)
    act_learn = cfg.pop('act_learn', 1.0)
    plain = randomize(build_backbone(arch=narrow('9'), lean_training=False))
    lean = build_backbone(arch=narrow('9'), **cfg)
    lean.load_state_dict(plain.state_dict())
    plain.frozen_stages, plain.norm_eval = lean.frozen_stages, lean.norm_eval
    plain._freeze_stages()
    plain.act_learn = lean.act_learn = act_learn
    x = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    assert_same_step(plain, lean, x, steps=2)


@pytest.mark.parametrize('lean', [True, False])
def test_with_cp_updates_bn_statistics_once_per_step(lean):
    """torch.utils.checkpoint ran each BN forward twice per step (statistics updated twice,
    num_batches_tracked counting 2); ops/gradient_checkpoint.py restores them after recomputing."""
    plain = randomize(build_backbone(arch=narrow('7'), lean_training=lean))
    checkpointed = build_backbone(arch=narrow('7'), lean_training=lean, with_cp=True)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    train_step(plain, x)
    train_step(checkpointed, x)
    assert checkpointed.stages[0].conv1[1].num_batches_tracked.item() == 1
    state, expected = checkpointed.state_dict(), plain.state_dict()
    assert all(torch.equal(state[k], expected[k]) for k in state if k.endswith(STATISTICS))


def test_autocast_trains_as_the_plain_path():
    """Under autocast the recomputation runs in the forward pass's dtypes."""
    plain, lean = pair(arch=narrow('5'), act_num=4)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        expected_outs, expected = train_step(plain, x)
        outs, got = train_step(lean, x)
    assert outs[0].dtype == torch.bfloat16
    assert all(torch.equal(a, b) for a, b in zip(expected_outs, outs))
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-2, atol=1e-3 * grad.abs().max())


def test_other_norms_run_the_plain_path():
    plain, lean = pair(arch=narrow('5'), norm_cfg=dict(type='GN', num_groups=4))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert_same_step(plain, lean, x)


def test_each_depthwise_conv_is_recomputed_once_per_step(monkeypatch):
    """The forward pass runs each series activation once, the backward pass recomputes each
    once more (the op after it makes the recomputation, its own backward uses it)."""
    _, lean = pair(arch=narrow('9'))
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return relu_dwconv(*args, **kwargs)

    monkeypatch.setattr(lean_training, 'relu_dwconv', counted)
    lean.train()
    outs = lean(torch.randn(2, 3, 64, 64, requires_grad=True))
    activations = sum(isinstance(m, SeriesActivation) for m in lean.modules())
    assert len(calls) == activations
    sum((o ** 2).sum() for o in outs).backward()
    assert len(calls) == 2 * activations


def test_the_backward_pass_holds_one_blocks_recomputation_at_a_time(monkeypatch):
    """The recomputed maps alive at once are those of the op being differentiated and the ops
    before it in its block, not a chain back to the stem: a conv's input is recomputed in its own
    backward. (Recomputing it with the conv's output recomputed every op down to the stem at the
    first backward step: a whole VanillaNet-13 Mask R-CNN step peaked above plain autograd's.)"""
    _, lean = pair(arch=narrow('13'))
    lean.train()
    outs = lean(torch.randn(2, 3, 64, 64, requires_grad=True))
    nodes, todo = set(), [o.grad_fn for o in outs]
    while todo:
        node = todo.pop()
        if node is not None and node not in nodes:
            nodes.add(node)
            todo.extend(next_node for next_node, _ in node.next_functions)
    lean_nodes = [n for n in nodes if type(n) is lean_training._Lean._backward_cls]
    assert len(lean_nodes) > 30
    alive = []
    recomputed = lean_training._recomputed

    def counted(node):
        result = recomputed(node)
        alive.append(sum(n.recomputed is not None for n in lean_nodes))
        return result

    monkeypatch.setattr(lean_training, '_recomputed', counted)
    sum((o ** 2).sum() for o in outs).backward()
    assert len(alive) >= len(lean_nodes) and max(alive) <= 4, max(alive)


def test_what_a_step_keeps_is_the_conv_outputs():
    """VanillaNet-13 at 800x1344 (on the meta device: no memory, no compute): the lean path keeps
    the input image, and per 1x1 or stem conv its output, nothing else of map size."""
    model = build_backbone(arch='13', act_num=4, init_cfg=None).to('meta').train()
    x = torch.empty(1, 3, 800, 1344, device='meta')
    lean = saved_for_backward(lambda: model(x), model_tensors(model))
    model.lean_training = False
    plain = saved_for_backward(lambda: model(x), model_tensors(model))

    def conv_outputs(n, h, w):
        size, total = (h // 4) * (w // 4), n * 3 * h * w
        total += 2 * n * model.arch.dims[0] * size  # stem1, stem2 convs
        for c_in, c_out, stride in zip(model.arch.dims, model.arch.dims[1:], model.arch.strides):
            total += n * (c_in + c_out) * size  # conv1, conv2
            size //= stride * stride
        return total * 4

    small_tensors = 4 * 2 * sum(m.num_features for m in model.modules()
                                if isinstance(m, _BatchNorm))  # each BN's batch mean and invstd
    assert lean['activations'] == conv_outputs(1, 800, 1344) + small_tensors
    assert lean['activations'] / 2**30 < 2.0 and plain['activations'] > 2.5 * lean['activations']


def _sync_worker(rank, port, result):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=2)
    torch.manual_seed(0)
    model = randomize(build_backbone(arch=narrow('7'), norm_cfg=dict(type='SyncBN', eps=1e-6)),
                      seed=1).double()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)[2 * rank:2 * rank + 2]
    outs, grads = train_step(model, x)
    for name, grad in grads.items():  # as DDP does (which takes SyncBatchNorm on GPUs only)
        if name != 'input':
            dist.all_reduce(grad)
            grad /= 2
    if rank == 0:
        result.update(outs=outs, grads=grads, state=copy.deepcopy(model.state_dict()))
    dist.destroy_process_group()


def test_sync_bn_over_two_cpu_processes_equals_bn_over_their_batch():
    """SyncBN (which PyTorch runs on GPUs only; the lean ops on any device) over 2 gloo processes
    of 2 images each: the same outputs, statistics and gradients as BN over the 4 images in one
    process (the weights' gradients averaged over the processes, as DDP does; each process's
    loss is half the one-process loss)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        result = manager.dict()
        mp.spawn(_sync_worker, args=(port, result), nprocs=2)
        got = dict(result)
    model = randomize(build_backbone(arch=narrow('7'), norm_cfg=dict(type='BN', eps=1e-6),
                                     lean_training=False), seed=1).double()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    outs, grads = train_step(model, x)
    # float64, so that a difference in the formulas would show above the rounding.
    for a, b in zip(outs, got['outs']):
        torch.testing.assert_close(b, a[:2], rtol=1e-9, atol=1e-10 * a.abs().max())
    # Gradients that are zero but for rounding (a conv bias before a BN) are compared at the
    # scale of the largest one.
    scale = max(grad.abs().max() for grad in grads.values())
    for name, grad in grads.items():
        if name != 'input':
            torch.testing.assert_close(got['grads'][name] * 2, grad, rtol=1e-7, atol=1e-12 * scale)
    state = model.state_dict()
    for key in state:
        if key.endswith(STATISTICS):
            torch.testing.assert_close(got['state'][key], state[key], rtol=1e-9, atol=1e-12)


def test_torch_compile_trains_as_before():
    """torch.compile traces PyTorch's ops (the lean ops step aside while it compiles): the
    compiled step computes the plain path's."""
    plain, lean = pair(arch=narrow('7'), act_num=4)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    expected_outs, expected = train_step(plain, x)
    outs, got = train_step(torch.compile(lean, backend='aot_eager'), x)
    got = {name.replace('_orig_mod.', ''): grad for name, grad in got.items()}
    assert all(torch.equal(a, b) for a, b in zip(expected_outs, outs))
    scale = max(grad.abs().max() for grad in expected.values())
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6 * scale)


@pytest.mark.parametrize(
    'cfg', [dict(), dict(with_cp=True), dict(with_cp=True, lean_training=False)],
    ids=['lean', 'lean_with_cp', 'with_cp'])
@pytest.mark.parametrize('order', [1, 2])
def test_a_second_order_gradient_is_an_error_whatever_the_loss(cfg, order):
    """A gradient penalty (create_graph=True) through ops that are differentiable once: one
    error line, for a loss linear in the outputs too (where once_differentiable let the penalty
    come back without a graph, and be dropped from the step's gradients)."""
    model = randomize(build_backbone(arch=narrow('5'), **cfg)).train()
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    loss = sum((o ** order).sum() for o in model(x))
    with pytest.raises(RuntimeError, match='second-order gradient'):
        grad, = torch.autograd.grad(loss, x, create_graph=True)
        (loss + 10 * (grad ** 2).sum()).backward()


def test_module_backward_hooks_are_called_as_on_the_plain_path():
    """A conv's full backward hook, a BN's full backward pre-hook (gradient-visualisation tools)
    and a global backward hook: called as often as on the plain path, with the same gradients."""
    plain, lean = pair(arch=narrow('5'))
    calls = {id(plain): [], id(lean): []}
    for model in (plain, lean):
        record = calls[id(model)].append
        model.stages[0].conv1[0].register_full_backward_hook(
            lambda m, grad_in, grad_out, record=record: record(('conv', grad_out[0].clone())))
        model.stages[1].conv2[1].register_full_backward_pre_hook(
            lambda m, grad_out, record=record: record(('bn', grad_out[0].clone())))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert_same_step(plain, lean, x)
    assert [name for name, _ in calls[id(lean)]] == [name for name, _ in calls[id(plain)]] \
        == ['bn', 'conv']
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(calls[id(plain)], calls[id(lean)]))

    seen = []
    for model in (plain, lean):
        names = []
        handle = torch.nn.modules.module.register_module_full_backward_hook(
            lambda m, grad_in, grad_out: names.append(type(m).__name__))
        try:
            train_step(model, x)
        finally:
            handle.remove()
        seen.append(names)
    assert seen[0] == seen[1] and 'Conv2d' in seen[0] and 'BatchNorm2d' in seen[0]


def _double_data(module, args, out):
    out.data = out.data * 2


@pytest.mark.parametrize('target', ['stages.1', 'stages.1.conv1', 'stages.2.act'])
def test_a_block_hook_changing_its_output_through_data_is_seen(target):
    """A forward hook on a block (or a module in it) that rescales its output through ``.data``:
    plain autograd's next conv takes its weight gradient from the changed map, and so does the
    lean path (which runs plain where any module of the backbone has a hook), where it
    recomputed the unchanged map (the next conv1's weight gradient half plain's)."""
    plain, lean = pair(arch=narrow('7'))
    for model in (plain, lean):
        model.get_submodule(target).register_forward_hook(_double_data)
    assert_same_step(plain, lean, torch.randn(2, 3, 64, 64))


class StagesAlone(torch.nn.Module):
    """The backbone's stem and stages called one by one, not through VanillaNet.forward."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        x = self.model.forward_stem(x)
        for stage in self.model.stages:
            x = stage(x)
        return (x, )


@pytest.mark.parametrize('target', ['stem2', 'stages.1', 'stages.2.act'])
def test_a_hooked_block_called_alone_runs_the_plain_path(target):
    """The same where a loop calls the stem and the blocks itself: each block, conv and
    activation runs plain autograd when it, or a module in it, has a hook."""
    plain, lean = pair(arch=narrow('7'))
    for model in (plain, lean):
        model.get_submodule(target).register_forward_hook(_double_data)
    assert_same_step(StagesAlone(plain), StagesAlone(lean), torch.randn(2, 3, 64, 64))


def _checkpoint_stages(model, use_reentrant):
    for name in ('stages.1', 'stages.2'):
        stage = model.get_submodule(name)
        stage.forward = functools.partial(torch.utils.checkpoint.checkpoint, stage.forward,
                                          use_reentrant=use_reentrant)
    return model


@pytest.mark.parametrize('wrap', [
    lambda model: Checkpointed(model),
    lambda model: _checkpoint_stages(model, use_reentrant=False),
    lambda model: _checkpoint_stages(model, use_reentrant=True),
], ids=['backbone', 'stages', 'stages_reentrant'])
def test_torch_utils_checkpoint_trains_as_the_plain_path(wrap):
    """torch.utils.checkpoint around the backbone or its stages (non-reentrant; reentrant, as
    MMEngine's activation checkpointing calls it) recomputes them in backward: the lean ops keep
    the same tensors in both passes, and the step computes the plain path's under the same
    checkpoint (BN statistics updated by both passes, as there)."""
    plain, lean = pair(arch=narrow('7'), act_num=4)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    expected_outs, expected = train_step(wrap(plain), x)
    outs, got = train_step(wrap(lean), x)
    assert all(torch.equal(a, b) for a, b in zip(expected_outs, outs))
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-6 * grad.abs().max())
    state, expected_state = lean.state_dict(), plain.state_dict()
    assert all(torch.equal(state[k], expected_state[k]) for k in state if k.endswith(STATISTICS))


class Checkpointed(torch.nn.Module):
    """``model`` under torch.utils.checkpoint (non-reentrant)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.utils.checkpoint.checkpoint(self.model, x, use_reentrant=False)


@pytest.mark.parametrize('cfg', [dict(), dict(with_cp=True)], ids=['lean', 'with_cp'])
def test_an_empty_batch_trains_as_the_plain_path(cfg):
    """0 images (a sampler's last, empty share): the plain path's outputs, gradients and BN
    statistics."""
    plain, lean = pair(arch=narrow('5'), **cfg)
    expected_outs, expected = train_step(plain, torch.randn(0, 3, 64, 64))
    outs, got = train_step(lean, torch.randn(0, 3, 64, 64))
    assert [o.shape for o in outs] == [o.shape for o in expected_outs] and outs[0].numel() == 0
    assert expected.keys() == got.keys()
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    state, expected_state = lean.state_dict(), plain.state_dict()
    assert all(torch.equal(state[k], expected_state[k]) for k in state if k.endswith(STATISTICS))


def test_one_value_per_channel_is_refused_as_by_bn():
    """A 1x1 map of one image has no variance: PyTorch's error, not NaN statistics."""
    _, lean = pair(arch=narrow('5'))
    with pytest.raises(ValueError, match='Expected more than 1 value per channel'):
        train_step(lean, torch.randn(1, 3, 32, 32))


def test_a_map_changed_in_place_is_kept_as_changed():
    """A hook that scales a stage's output in place: the next conv's gradient is taken from the
    changed map, as plain autograd takes it (a recipe would recompute the map before)."""
    plain, lean = pair(arch=narrow('7'))
    for model in (plain, lean):
        model.stages[1].register_forward_hook(lambda module, args, out: out.mul_(2))
    assert_same_step(plain, lean, torch.randn(2, 3, 64, 64))


def test_hooked_and_subclassed_layers_run_their_own_forward():
    """weight_norm (a forward pre-hook), a forward hook recording features, a conv subclass
    with its own forward: the lean ops step aside for them, so they act as in plain autograd."""
    plain, lean = pair(arch=narrow('5'))
    seen = {id(plain): 0, id(lean): 0}
    for model in (plain, lean):
        torch.nn.utils.weight_norm(model.stages[0].conv1[0])
        model.stages[1].conv2[1].register_forward_hook(
            lambda m, args, out, key=id(model): seen.__setitem__(key, seen[key] + 1))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    expected_outs, expected = train_step(plain, x, steps=2)
    outs, got = train_step(lean, x, steps=2)
    assert seen[id(lean)] == seen[id(plain)] == 2
    assert all(torch.equal(a, b) for a, b in zip(expected_outs, outs))
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-6 * grad.abs().max())
    assert not lean_training.applies(x.requires_grad_(), (lean.stages[0].conv1[0], ))


def test_backward_called_under_autocast_recomputes_in_the_forward_pass_dtypes():
    """A forward pass in fp32 and its backward inside an autocast region."""
    plain, lean = pair(arch=narrow('5'))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    grads = []
    for model in (plain, lean):
        model.train()
        loss = sum(((o - 0.5) ** 2).sum() for o in model(x))
        with torch.autocast('cpu', dtype=torch.bfloat16):
            loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6 * grad.abs().max())
