"""Run safety without VanillaNet (issue 28): configs/runsafe/mask_rcnn_r18_toy.py, a narrow
ResNet-18 Mask R-CNN on the toy set that takes mmdet_runsafe as any MMDetection user does (the
runtime base configs/_base_/runsafe_runtime.py), trained by MMDetection's own Runner and tools
and by ours. What each hook guards is tested in depth on the VanillaNet toy config
(test_engine.py, test_resume.py, test_run_lock.py, test_class_order.py, ...); this file checks
that the same guarantees hold on a config that never imports mmdet_vanillanet."""
import argparse
import json
import math
import os.path as osp
import re
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config, DictAction
from mmengine.runner import Runner

from helpers import REPO_ROOT, run, swapped, toy_options
from mmdet_runsafe.cli import RUNSAFE
from mmdet_runsafe.datasets import check_dataset_paths
from mmdet_runsafe.errors import InputError
from mmdet_runsafe.hooks import NonFiniteError
from mmdet_runsafe.run_files import written_by_runs
from vanillanet_toolkit.runs import build_test_runner

R18 = osp.join(REPO_ROOT, 'configs', 'runsafe', 'mask_rcnn_r18_toy.py')
MMDET_TOOLS = osp.join(osp.dirname(__import__('mmdet').__file__), '.mim', 'tools')
KILL_DURING_SAVE = osp.join(REPO_ROOT, 'tests', 'kill_during_save.py')
HOLD = ('import sys; from mmdet_runsafe.run_lock import lock_work_dir; '
        'lock_work_dir(sys.argv[1]); print("held", flush=True); sys.stdin.read()')


def r18_options(data_root, epochs=2, seed=0):
    """toy_options (without the VanillaNet toy's deep-training hook) on 2 training images of
    64 px, one batch an epoch, smaller RoI samples, no validation, 2 test images."""
    return [o for o in toy_options(data_root, epochs, seed) if not o.startswith('custom_hooks')
            ] + ['train_dataloader.dataset.indices=2', 'train_dataloader.batch_size=2',
                 f'train_cfg.val_interval={epochs + 1}', 'test_dataloader.dataset.indices=2',
                 'model.train_cfg.rpn_proposal.max_per_img=100',
                 'model.train_cfg.rcnn.sampler.num=32',
                 *(f'{split}_dataloader.dataset.pipeline.{i}.scale=(64,64)'
                   for split, i in (('train', 2), ('val', 1), ('test', 1)))]


def r18_cfg_options(data_root, epochs=2, seed=0, options=()) -> dict:
    """``r18_options`` and ``options`` as --cfg-options parses them."""
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(['--cfg-options', *r18_options(data_root, epochs, seed),
                              *options]).cfg_options


def r18_config(data_root, work_dir, epochs=2, seed=0, options=()):
    """The ResNet config with ``r18_cfg_options`` applied, as MMDetection's tools/train.py
    builds it, training into ``work_dir``."""
    cfg = Config.fromfile(R18)
    cfg.merge_from_dict(r18_cfg_options(data_root, epochs, seed, options))
    cfg.work_dir = str(work_dir)
    return cfg


def test_the_config_takes_the_safety_hooks_and_nothing_of_vanillanet():
    cfg = Config.fromfile(R18)
    assert cfg.custom_imports == dict(imports=['mmdet_runsafe.hooks'], allow_failed_imports=False)
    assert {h['type'] for h in cfg.default_hooks.values()} >= set(RUNSAFE.hooks)
    assert cfg.model.backbone.type == 'ResNet' and not cfg.get('custom_hooks')
    assert 'VanillaNet' not in cfg.pretty_text and 'CheckpointFitHook' not in cfg.pretty_text


def _weights(path):
    return torch.load(path, map_location='cpu', weights_only=True)


@pytest.fixture(scope='module')
def whole(data_root, tmp_path_factory):
    """An unseeded two-epoch run (as the shipped configs: no seed) in MMDetection's Runner;
    its work_dir."""
    work_dir = tmp_path_factory.mktemp('whole')
    runner = Runner.from_cfg(r18_config(data_root, work_dir, seed=None))
    runner.train()
    hooks = [type(h) for h in runner.hooks]
    assert {h.__name__ for h in hooks} >= set(RUNSAFE.hooks)
    assert not [h for h in hooks if h.__module__.startswith('mmdet_vanillanet')]
    return work_dir


def test_checkpoints_are_written_whole_by_the_atomic_hook_and_load_weights_only(whole):
    """Each file is renamed into place by AtomicCheckpointHook's backend, which records it as
    the run's (MMEngine's own hook records nothing), none is left half-written, and each loads
    with torch.load(weights_only=True)."""
    saved = {str(whole / f'epoch_{e}.pth') for e in (1, 2)}
    assert written_by_runs(str(whole)) >= saved
    assert not list(whole.glob('*.partial'))
    for path in saved:
        checkpoint = _weights(path)
        assert checkpoint['meta']['dataset_meta']['classes'] == ('circle', 'square', 'triangle')
        assert 'random_state' in checkpoint and checkpoint['message_hub']['log_scalars']


def _resume(data_root, whole, work_dir, *options):
    """Epoch 2 again, resumed from ``whole``'s epoch 1 checkpoint (copied into ``work_dir``)."""
    work_dir.mkdir()
    shutil.copy(whole / 'epoch_1.pth', work_dir)
    cfg = r18_config(data_root, work_dir, seed=None,
                     options=['resume=True', f'load_from={work_dir}/epoch_1.pth', *options])
    Runner.from_cfg(cfg).train()
    return work_dir / 'epoch_2.pth'


def test_resume_continues_bit_identically(data_root, whole, tmp_path):
    """The unseeded run's seed, sampler order and generators travel in the checkpoint
    (RandomStateHook): the resumed epoch 2 ends on the uninterrupted run's weights exactly."""
    resumed, straight = (_weights(p)['state_dict']
                         for p in (_resume(data_root, whole, tmp_path / 'r'),
                                   whole / 'epoch_2.pth'))
    assert resumed.keys() == straight.keys()
    different = [k for k in resumed if not torch.equal(resumed[k], straight[k])]
    assert not different, f'{len(different)} tensors differ, e.g. {different[:3]}'


def test_resume_with_another_lr_trains_with_it(data_root, whole, tmp_path):
    """ResumeLrFromConfigHook: the config's halved lr, not the checkpoint's, continues the
    schedule (MMEngine would restore the checkpoint's: a ratio of 1). Halved but for the cosine
    schedule's eta_min, which is not scaled."""
    lr = Config.fromfile(R18).optim_wrapper.optimizer.lr
    resumed = _resume(data_root, whole, tmp_path / 'r', f'optim_wrapper.optimizer.lr={lr / 2}')
    halved, straight = (_weights(p)['optimizer']['param_groups'][0]['lr']
                        for p in (resumed, whole / 'epoch_2.pth'))
    assert math.isclose(halved / straight, 0.5, rel_tol=0.01)


def test_a_nan_loss_stops_the_run_at_its_step(data_root, tmp_path):
    cfg = r18_config(data_root, tmp_path, epochs=1,
                     options=['model.rpn_head.loss_bbox.loss_weight=nan'])
    with pytest.raises(NonFiniteError, match=r'non-finite values at iteration 1 \(epoch 1, '
                                             r'batch 1\): loss .*\'loss\': nan'):
        Runner.from_cfg(cfg).train()
    assert not list(tmp_path.glob('*.pth'))


def test_a_coco_file_of_permuted_categories_is_refused(data_root, tmp_path):
    path = swapped(data_root, tmp_path, 'train')
    cfg = r18_config(data_root, tmp_path / 'w',
                     options=[f'train_dataloader.dataset.ann_file={path}'])
    with pytest.raises(InputError, match=re.escape(
            f"{path} lists the categories ['square', 'circle', 'triangle'] in another order "
            f"than the config's classes ['circle', 'square', 'triangle']")):
        Runner.from_cfg(cfg).train()
    assert not list((tmp_path / 'w').glob('*.pth'))


def test_a_second_run_in_a_locked_work_dir_is_refused(data_root, tmp_path):
    holder = subprocess.Popen([sys.executable, '-c', HOLD, str(tmp_path)], cwd=REPO_ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        with pytest.raises(InputError, match=re.escape(
                f'another run is training in {tmp_path} (pid {holder.pid} on ')):
            Runner.from_cfg(r18_config(data_root, tmp_path, epochs=1)).train()
    finally:
        holder.kill()
        holder.wait()
    assert not list(tmp_path.glob('*.pth'))


@pytest.fixture
def broken_root(data_root, tmp_path):
    """A copy of the toy set whose first training image is missing; (root, its path)."""
    root = tmp_path / 'data'
    shutil.copytree(data_root, root)
    with open(root / 'annotations' / 'instances_train.json') as f:
        image = json.load(f)['images'][0]
    missing = root / 'train' / image['file_name']
    missing.unlink()
    return f'{root}/', image['id'], missing


def test_the_dataset_checks_name_a_missing_image_in_one_line(broken_root, tmp_path):
    root, image_id, missing = broken_root
    cfg = r18_config(root, tmp_path / 'w')
    with pytest.raises(InputError) as err:
        check_dataset_paths(cfg, ('train_dataloader', 'val_dataloader'))
    assert '\n' not in str(err.value) and str(err.value).startswith(
        f'annotation file {root}annotations/instances_train.json: image {image_id} ({missing}) '
        f'does not exist; restore the file')


# python -c PROBE TOOL ARGS: runs TOOL as its own script, then prints the packages of ours the
# process imported.
MMDET_TRAIN_PROBE = '''
import runpy, sys
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
print('imported:', sorted({m.split('.')[0] for m in sys.modules} & {'mmdet_runsafe',
                                                                   'mmdet_vanillanet'}))
'''


@pytest.mark.slow
def test_mmdetections_own_train_tool_never_imports_vanillanet(data_root, tmp_path):
    """MMDetection's tools/train.py, the config's custom_imports alone: the safety hooks run
    (the lock is taken and left empty, the checkpoint is the atomic backend's) and no module of
    mmdet_vanillanet is ever imported."""
    output = run('-c', MMDET_TRAIN_PROBE, osp.join(MMDET_TOOLS, 'train.py'), R18, '--work-dir',
                 str(tmp_path), '--cfg-options', *r18_options(data_root, epochs=1))
    assert "imported: ['mmdet_runsafe']" in output
    assert 'the largest one-step growth of the weights' in output  # StopOnNonFiniteHook ran
    assert (tmp_path / 'run.lock').read_text().strip() == ''
    assert str(tmp_path / 'epoch_1.pth') in written_by_runs(str(tmp_path))
    _weights(tmp_path / 'epoch_1.pth')


@pytest.mark.slow
def test_a_kill_before_the_rename_under_mmdetections_tool_keeps_the_previous_checkpoint(
        data_root, tmp_path):
    """max_keep_ckpts=1, MMDetection's tools/train.py killed when epoch 2's file is written but
    not yet in place (MMEngine's own hook would have deleted epoch 1's already)."""
    done = subprocess.run(
        [sys.executable, KILL_DURING_SAVE, 'write', '2', osp.join(MMDET_TOOLS, 'train.py'), R18,
         '--work-dir', str(tmp_path), '--cfg-options', *r18_options(data_root, epochs=2),
         'default_hooks.checkpoint.max_keep_ckpts=1'],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['epoch_1.pth']
    assert _weights(tmp_path / 'epoch_1.pth')['meta']['epoch'] == 1


def test_our_test_tool_has_nothing_to_fuse_in_a_resnet_config(data_root, whole, tmp_path):
    with pytest.raises(InputError, match="^--deploy fuses a VanillaNet backbone; the config's "
                                         "backbone is ResNet: test without --deploy$"):
        build_test_runner(R18, str(whole / 'epoch_2.pth'), deploy=True,
                          work_dir=str(tmp_path), cfg_options=r18_cfg_options(data_root))


def _runtime_warnings(output):
    return [line for line in output.splitlines() if 'the config does not declare' in line]


@pytest.mark.slow
def test_our_tools_run_the_resnet_config_without_a_runtime_warning(data_root, broken_root,
                                                                   tmp_path):
    """tools/train.py and tools/test.py expect the hooks of runsafe_runtime.py from a config
    that does not import VanillaNet (not CheckpointFitHook, which only the plugin has), and
    name a broken dataset in one line before any work."""
    output = run('tools/train.py', R18, '--work-dir', str(tmp_path / 'w'), '--cfg-options',
                 *r18_options(data_root, epochs=1))
    assert not _runtime_warnings(output) and (tmp_path / 'w' / 'epoch_1.pth').exists()
    output = run('tools/test.py', R18, str(tmp_path / 'w' / 'epoch_1.pth'), '--work-dir',
                 str(tmp_path / 't'), '--cfg-options', *r18_options(data_root))
    assert not _runtime_warnings(output) and 'coco/bbox_mAP: ' in output

    root, image_id, missing = broken_root
    output = run('tools/train.py', R18, '--work-dir', str(tmp_path / 'b'), '--cfg-options',
                 *r18_options(root, epochs=1), expect_ok=False)
    assert output.strip().splitlines()[-1].startswith(
        f'error: annotation file {root}annotations/instances_train.json: image {image_id} '
        f'({missing}) does not exist; restore the file')
    assert 'Traceback' not in output and not (tmp_path / 'b' / 'epoch_1.pth').exists()


def test_the_inline_settings_in_the_docs_are_the_runtime_bases():
    """docs/reliability.md lists custom_imports and the hooks for a config without the base
    file: merged onto MMDetection's default runtime they equal runsafe_runtime.py."""
    text = open(osp.join(REPO_ROOT, 'docs', 'reliability.md')).read()
    block = next(b for b in re.findall(r'```python\n(.*?)```', text, re.S)
                 if 'custom_imports' in b and 'default_hooks' in b)
    inline = Config.fromstring("_base_ = ['mmdet::_base_/default_runtime.py']\n" + block, '.py')
    base = Config.fromfile(osp.join(REPO_ROOT, 'configs', '_base_', 'runsafe_runtime.py'))
    for key in ('custom_imports', 'default_hooks'):
        assert inline[key].to_dict() == base[key].to_dict()
