"""--resume with the shipped configs as they are (no seed): a kill at a random moment, a kill in
the middle of a save, checkpoints written elsewhere, none readable. (The lr on resume:
test_engine.py.)"""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from mmengine.config import Config

from helpers import CONFIG, REPO_ROOT, first_logged_iter_of_last_run, run_config, toy_options, train
from mmdet_runsafe.errors import InputError
from mmdet_runsafe.serialization import safe_load
from mmdet_runsafe.work_dir import resume_checkpoint

KILL_DURING_SAVE = os.path.join(REPO_ROOT, 'tests', 'kill_during_save.py')


def _checkpoint(path):
    return torch.load(path, weights_only=True)


def _assert_same_weights(a, b):
    a, b = _checkpoint(a)['state_dict'], _checkpoint(b)['state_dict']
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f'{len(different)} tensors differ, e.g. {different[:3]}'


def _train_cmd(work_dir, data_root, epochs, *options):
    return [sys.executable, 'tools/train.py', CONFIG, '--work-dir', str(work_dir),
            '--cfg-options', *toy_options(data_root, epochs, seed=None), *options]


@pytest.mark.slow
def test_an_unseeded_run_killed_at_a_random_moment_resumes_bit_identically(data_root, tmp_path):
    """SIGKILL after epoch 1's checkpoint (in its validation, or in epoch 2) of an unseeded run
    that validates every epoch and checkpoints into the hook's out_dir, then --resume: the
    weights equal, bit for bit, those of an uninterrupted run with the seed the killed run
    drew."""
    work_dir, out_dir = tmp_path / 'run', tmp_path / 'store'
    saved = out_dir / 'run'  # MMEngine's CheckpointHook: out_dir / the work_dir's name
    option = f'default_hooks.checkpoint.out_dir={out_dir}'
    every = 'train_cfg.val_interval=1'  # as the COCO configs: validation after each checkpoint
    proc = subprocess.Popen(_train_cmd(work_dir, data_root, 2, option, every), cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (work_dir / 'last_checkpoint').exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(torch.rand(()).item() * 3)  # validation and epoch 2 take 4 to 8 s here
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (saved / 'epoch_1.pth').exists() and not (saved / 'epoch_2.pth').exists()
    refused = train(work_dir, data_root, epochs=2, seed=None, options=[option], expect_ok=False)
    assert f'{saved}/epoch_1.pth' in refused and '--overwrite' in refused
    train(work_dir, data_root, '--resume', epochs=2, seed=None, options=[option, every])
    assert first_logged_iter_of_last_run(work_dir) == 5
    seed = _checkpoint(saved / 'epoch_1.pth')['meta']['seed']
    train(tmp_path / 'whole', data_root, epochs=2, seed=seed, options=[every])
    _assert_same_weights(saved / 'epoch_2.pth', tmp_path / 'whole' / 'epoch_2.pth')


@pytest.mark.slow
def test_a_kill_before_the_rename_leaves_the_previous_checkpoint(data_root, tmp_path):
    """max_keep_ckpts=1, killed when epoch 2's file is written but not yet renamed into place
    (MMEngine's own hook would have deleted epoch 1's file already): --resume redoes epoch 2."""
    keep = 'default_hooks.checkpoint.max_keep_ckpts=1'
    done = subprocess.run([sys.executable, KILL_DURING_SAVE, 'write', '2',
                           *_train_cmd(tmp_path, data_root, 2, keep)[1:]], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['epoch_1.pth']
    train(tmp_path, data_root, '--resume', epochs=2, seed=None, options=[keep])
    assert first_logged_iter_of_last_run(tmp_path) == 5
    # The killed save's file (a unique name, NAME.XXXXXXXX.partial) stays: no run removes a
    # file it cannot tell from a user's.
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['epoch_2.pth']
    assert [p.name.startswith('epoch_2.pth.') for p in tmp_path.glob('*.partial')] == [True]


@pytest.mark.slow
def test_a_kill_before_the_old_checkpoint_is_deleted_leaves_both(data_root, tmp_path):
    """Killed just after epoch 2's file is in place: it is complete and the one --resume takes;
    epoch 1's file stays (the run's records already count it as deleted)."""
    done = subprocess.run([sys.executable, KILL_DURING_SAVE, 'remove', '2',
                           *_train_cmd(tmp_path, data_root, 2,
                                       'default_hooks.checkpoint.max_keep_ckpts=1')[1:]],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.glob('*.pth*')) == ['epoch_1.pth', 'epoch_2.pth']
    assert resume_checkpoint(run_config(tmp_path)) == str(tmp_path / 'epoch_2.pth')
    assert safe_load(str(tmp_path / 'epoch_2.pth'))['meta']['epoch'] == 2


def test_resume_with_only_unreadable_checkpoints_is_an_error_naming_them(tmp_path):
    for name in ('epoch_1.pth', 'epoch_2.pth'):
        (tmp_path / name).write_bytes(b'PK\x03\x04 cut short')
    with pytest.raises(InputError, match='none of the run\'s checkpoints is readable '
                       rf'\({tmp_path}/epoch_2.pth, {tmp_path}/epoch_1.pth\); pass --overwrite'):
        resume_checkpoint(run_config(tmp_path))
    assert resume_checkpoint(run_config(tmp_path / 'fresh')) is None  # nothing to resume: start


def test_last_checkpoint_is_followed_wherever_it_points(tmp_path):
    elsewhere = tmp_path / 'elsewhere' / 'iter_40.pth'
    elsewhere.parent.mkdir()
    for path in (tmp_path / 'iter_50.pth', elsewhere):
        torch.save({'state_dict': {}, 'meta': {'iter': 1}}, path)
    (tmp_path / 'last_checkpoint').write_text(str(elsewhere))
    assert resume_checkpoint(run_config(tmp_path)) == str(elsewhere)


def test_a_config_without_a_checkpoint_hook_resumes_from_work_dir(tmp_path):
    torch.save({'state_dict': {}, 'meta': {'epoch': 1}}, tmp_path / 'epoch_1.pth')
    cfg = Config(dict(work_dir=str(tmp_path), default_hooks=dict(checkpoint=None)))
    assert resume_checkpoint(cfg) == str(tmp_path / 'epoch_1.pth')
