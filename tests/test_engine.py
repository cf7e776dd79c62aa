"""The engine parts (deep-training schedule, layer decay, weights_only checkpoints, the
non-finite guard) and the MMDetection 2.x key layout of the released detectors."""
import json
import math
import os
import os.path as osp
import re
from pathlib import Path

import pytest
import torch
from mmdet.registry import HOOKS, MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.model import BaseModel
from mmengine.optim import build_optim_wrapper
from mmengine.runner import Runner

from helpers import CONFIGS, save_toy_checkpoint, swapped, toy_config
from mmdet_runsafe.errors import InputError
from mmdet_runsafe.hooks import NonFiniteError
from mmdet_runsafe.run_files import written_by_runs
from mmdet_runsafe.serialization import safe_load

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


class _TinyVanillaNetModel(BaseModel):
    """A narrow VanillaNet as ``backbone`` (where the deep-training hook finds it), the mean of
    its last map as the loss."""

    def __init__(self):
        super().__init__()
        self.backbone = MODELS.build(dict(type='VanillaNet', init_cfg=None,
                                          arch=dict(dims=[8, 16], strides=[2])))

    def forward(self, inputs, data_samples=None, mode='loss'):
        return dict(loss=self.backbone(inputs)[-1].mean())


@pytest.mark.parametrize('epochs, duration, warning', [
    (2, 5, 'VanillaNetDeepTrainingHook: act_learn reaches 1 after 5 epochs, but training stops '
           'after 2, at act_learn=0.2: the last checkpoint cannot be fused for deployment. Set '
           "the hook's duration to at most 1 epochs (custom_hooks.N.duration), or train longer"),
    (3, 2, None)])
def test_a_schedule_the_run_cannot_finish_is_named_before_training(tmp_path, epochs, duration,
                                                                   warning):
    """Issue 29 item 7: a shortened run (train_cfg.max_epochs=4 on the toy config, duration 20)
    ended at act_learn 0.15, unfusable, and nothing said so at the start."""
    runner = Runner(
        model=_TinyVanillaNetModel(), work_dir=str(tmp_path),
        train_dataloader=dict(dataset=[dict(inputs=torch.zeros(3, 32, 32))], batch_size=1,
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=True, max_epochs=epochs),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.0)),
        default_hooks=dict(checkpoint=None),
        custom_hooks=[dict(type='VanillaNetDeepTrainingHook', duration=duration)],
        default_scope='mmdet', experiment_name=f'deep_training_{epochs}_{duration}')
    runner.train()
    log = Path(runner.log_dir, f'{runner.timestamp}.log').read_text()
    warned = [line for line in log.splitlines() if 'VanillaNetDeepTrainingHook:' in line]
    if warning is None:
        assert not warned and runner.model.backbone.act_learn == 1.0
    else:
        assert len(warned) == 1 and warned[0].endswith(warning)
        assert log.index(warning) < log.index('Epoch(train) [1]')  # before training
        assert runner.model.backbone.act_learn == 0.2  # as the warning said


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


class _Diverging(BaseModel):
    """One weight at -3e38 whose loss (the weight) is finite, and whose gradient step with
    lr=3e38 takes it past float32's range: a finite loss that leaves an infinite weight."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.full((1, ), -3e38))

    def forward(self, inputs, data_samples=None, mode='loss'):
        return dict(loss=self.w.sum())


def _guarded_runner(model, work_dir, iters, lr, name, hook=None, interval=1, **cfg):
    """A Runner of ``iters`` SGD steps on a one-sample dataset, checkpointed every ``interval``
    iterations by our AtomicCheckpointHook and guarded by StopOnNonFiniteHook (``hook``: its
    arguments)."""
    return Runner(
        model=model, work_dir=str(work_dir),
        train_dataloader=dict(dataset=[dict(inputs=torch.zeros(1))] * iters, batch_size=1,
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=lr)),
        default_hooks=dict(checkpoint=dict(type='AtomicCheckpointHook', interval=interval,
                                           by_epoch=False),
                           non_finite=dict(type='StopOnNonFiniteHook', **(hook or {}))),
        default_scope='mmdet', experiment_name=name, **cfg)


def test_a_finite_loss_step_that_blows_up_the_weights_is_never_checkpointed(tmp_path):
    """The non-finite guard checks the weights after the step, before the checkpoint hook of
    the same iteration runs."""
    runner = _guarded_runner(_Diverging(), tmp_path, iters=2, lr=3e38, name='diverging')
    with pytest.raises(NonFiniteError) as err:
        runner.train()
    assert str(err.value).startswith('non-finite values at iteration 1 (epoch 1, batch 1): '
                                     '1 weight tensors (w). Training stopped; no checkpoint')
    assert not list(tmp_path.glob('*.pth'))


class _Linear(BaseModel):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(4))

    def forward(self, inputs, data_samples=None, mode='loss'):
        return dict(loss=self.w.sum())


def _blow_up_at(work_dir, iteration, **hook):
    """3 iterations of SGD on a linear loss, checkpointed every iteration; the lr jumps to
    1e30 at ``iteration``: finite weights of 1e30, a blow-up that is not (yet) a NaN."""
    runner = _guarded_runner(
        _Linear(), work_dir, iters=3, lr=1e-3, name=f'blow_up{iteration}{hook}', hook=hook,
        param_scheduler=[dict(type='MultiStepLR', by_epoch=False, milestones=[iteration - 1],
                              gamma=1e33)])
    runner.train()
    return runner


@pytest.mark.parametrize('iteration, named', [
    (1, 'no checkpoint of this run predates it'),
    (3, "is {work_dir}/iter_2.pth: resume from it (load_from='{work_dir}/iter_2.pth' and "
        'resume=True')])
def test_a_finite_blow_up_stops_at_its_step_naming_a_checkpoint_before_it(tmp_path, iteration,
                                                                          named):
    """The probe's case (lr 1e30): the weights are finite but useless after one step, and
    the checkpoint saved after that step must never be called good."""
    with pytest.raises(NonFiniteError) as err:
        _blow_up_at(tmp_path, iteration)
    message = str(err.value)
    assert message.startswith(f'the weights blew up at iteration {iteration} (epoch 1, batch '
                              f'{iteration}): the step multiplied the weights\' L2 norm by ')
    assert 'the bound is 10, StopOnNonFiniteHook.max_norm_growth' in message
    assert named.format(work_dir=tmp_path) in message
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == [
        f'iter_{i}.pth' for i in range(1, iteration)]


def test_the_bound_is_a_hook_argument(tmp_path):
    runner = _blow_up_at(tmp_path, 3, max_norm_growth=1e40)  # a bound that lets it pass
    assert runner.iter == 3
    with pytest.raises(InputError, match='max_norm_growth=1 must be a number above 1'):
        _blow_up_at(tmp_path / 'b', 3, max_norm_growth=1)


def test_the_checkpoint_hook_never_writes_last_checkpoint_through_a_link(tmp_path):
    """Issue 24: in a work dir shared with others, MMEngine's plain open of last_checkpoint
    wrote through a link someone put there; the run stops before its first save instead, and
    records the files it writes (what --overwrite may remove)."""
    theirs = tmp_path / 'theirs.txt'
    theirs.write_text('theirs')
    (tmp_path / 'w').mkdir()
    (tmp_path / 'w' / 'last_checkpoint').symlink_to(theirs)
    with pytest.raises(InputError, match=f'^{tmp_path}/w/last_checkpoint is a symbolic link'):
        _blow_up_at(tmp_path / 'w', 9)
    assert theirs.read_text() == 'theirs' and not list((tmp_path / 'w').glob('*.pth'))
    _blow_up_at(tmp_path / 'fine', 9)
    assert written_by_runs(str(tmp_path / 'fine')) == {
        str(tmp_path / 'fine' / name) for name in ('iter_1.pth', 'iter_2.pth', 'iter_3.pth',
                                                    'last_checkpoint')}


class _Quadratic(BaseModel):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))

    def forward(self, inputs, data_samples=None, mode='loss'):
        return dict(loss=(self.w ** 2).sum())


@HOOKS.register_module(force=True)
class LrRecorderHook(Hook):
    def __init__(self, lrs):
        self.lrs = lrs

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.lrs.append(runner.optim_wrapper.get_lr()['lr'][0])


def _lr_run(work_dir, lr, iters, resume=False):
    """A Runner on a tiny real model with warm-up and step decay, checkpointing every 2
    iterations; returns the lr of each iteration it trained."""
    runner = Runner(
        model=_Quadratic(), work_dir=str(work_dir),
        train_dataloader=dict(dataset=[dict(inputs=torch.zeros(1))] * 8, batch_size=1,
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=lr, momentum=0.9)),
        param_scheduler=[dict(type='LinearLR', start_factor=0.1, by_epoch=False, end=3),
                         dict(type='MultiStepLR', by_epoch=False, milestones=[3], gamma=0.5)],
        default_hooks=dict(checkpoint=dict(type='AtomicCheckpointHook', interval=2,
                                           by_epoch=False),
                           resume_lr=dict(type='ResumeLrFromConfigHook'),
                           weights_only=dict(type='WeightsOnlyCheckpointHook')),
        resume=resume, default_scope='mmdet', experiment_name=f'lr{lr}{resume}')
    lrs = []
    runner.register_hook(dict(type='LrRecorderHook', lrs=lrs), priority='LOWEST')
    runner.train()
    return lrs


def test_resume_with_another_lr_continues_the_schedule_scaled(tmp_path):
    """What the non-finite stop recommends: --resume with a lower lr takes it, at the same
    point of the schedule (MMEngine alone would restore the checkpoint's lr)."""
    whole = _lr_run(tmp_path / 'whole', 0.2, 6)
    _lr_run(tmp_path / 'halved', 0.2, 4)
    resumed = _lr_run(tmp_path / 'halved', 0.1, 6, resume=True)
    assert resumed == pytest.approx([lr / 2 for lr in whole[4:]], rel=1e-12)


class _SlowlyDiverging(BaseModel):
    """A loss whose value is w^2 and whose gradient is -2w: each SGD step multiplies the weight
    by 1 + 2 lr (under the one-step bound for lr < 4.5) and the loss grows with it, a slow
    divergence that reaches infinity only after many checkpoints."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, inputs, data_samples=None, mode='loss'):
        square = self.w.pow(2).sum()
        return dict(loss=2 * square.detach() - square)


def test_a_slow_divergence_names_the_last_healthy_checkpoint(tmp_path):
    """Fails on main: the stop named the last checkpoint, whose weights had grown by 1e7 since
    the one before (issue 24: 4.7x, with the loss tripled, at SGD lr 0.5). Here 20 quiet steps,
    then steps that multiply the weight by 5, checkpointed every 10 steps, until it overflows."""
    runner = _guarded_runner(
        _SlowlyDiverging(), tmp_path, iters=200, lr=1e-4, name='slow', interval=10,
        param_scheduler=[dict(type='MultiStepLR', by_epoch=False, milestones=[20], gamma=2e4)])
    with pytest.raises(NonFiniteError) as err:
        runner.train()
    message = str(err.value)
    assert message.startswith('non-finite values at iteration')
    assert f'the last healthy one (its norm grown at most 2x since the healthy one before it ' \
           f'and its mean loss at most 1.5x their lowest, the later ones had grown or lost ' \
           f"beyond that) is {tmp_path}/iter_20.pth: resume from it (load_from=" \
           f"'{tmp_path}/iter_20.pth' and resume=True" in message
    assert 'iter_20.pth 1.00' in message and 'iter_30.pth 9.8' in message
    assert 'since iter_20.pth, loss' in message and 'not healthy' in message
    assert (tmp_path / 'iter_40.pth').exists()  # the last checkpoint, passed over


@HOOKS.register_module(force=True)
class TrainStartRecorderHook(Hook):
    """What the runtime hooks left when training starts (run after them: LOWEST priority)."""

    def __init__(self, seen):
        self.seen = seen

    def before_train(self, runner):
        self.seen.update(lock=(Path(runner.work_dir) / 'run.lock').read_text(),
                         rng=torch.get_rng_state())


# Two iterations an epoch, no validation (the loop is built all the same), two test images.
SMALL = ['train_dataloader.dataset.indices=4', 'train_dataloader.batch_size=2',
         'train_cfg.val_interval=9', 'test_dataloader.dataset.indices=2']


def _toy_runner(cfg, seen):
    runner = Runner.from_cfg(cfg)
    runner.register_hook(dict(type='TrainStartRecorderHook', seen=seen), priority='LOWEST')
    return runner


def test_the_runtime_hooks_in_the_toy_configs_runner(data_root, tmp_path):
    """Every hook of configs/_base_/vanillanet_runtime.py in the Runner MMDetection's own tools
    build from the config, in this process (fast enough to run against the lowest declared
    mmengine too: tests/test_mmengine_range.py): training holds the work_dir lock; --resume
    restores the generators; a checkpoint of other classes is refused naming its file; a COCO
    file of another class order is refused before training and before testing."""
    seen = {}
    _toy_runner(toy_config(data_root, tmp_path, epochs=1, options=SMALL), seen).train()
    assert json.loads(seen['lock'])['pid'] == os.getpid()
    assert (tmp_path / 'run.lock').read_text().strip() == ''  # released at the end
    saved = safe_load(str(tmp_path / 'epoch_1.pth'))

    resumed = _toy_runner(toy_config(data_root, tmp_path, epochs=2,
                                     options=[*SMALL, 'resume=True']), seen)
    resumed.train()
    assert torch.equal(seen['rng'], saved['random_state']['torch']) and resumed.iter == 4

    other = save_toy_checkpoint(str(tmp_path / 'other.pth'), classes=('a', 'b', 'c'))
    train_file, test_file = (swapped(data_root, tmp_path, split) for split in ('train', 'val'))
    for run, named, option in (('test', other, f'load_from={other}'),
                               ('train', train_file, f'train_dataloader.dataset.ann_file='
                                                     f'{train_file}'),
                               ('test', test_file, f'test_dataloader.dataset.ann_file='
                                                   f'{test_file}')):
        cfg = toy_config(data_root, tmp_path / run, options=[*SMALL, option])
        with pytest.raises(InputError, match=re.escape(named)):
            getattr(Runner.from_cfg(cfg), run)()
    cfg = toy_config(data_root, tmp_path / 'tested',
                     options=[*SMALL, f'load_from={tmp_path}/epoch_2.pth'])
    assert 'coco/bbox_mAP' in Runner.from_cfg(cfg).test()
