"""Faults injected into real runs of the tools on the toy set: a killed training, a truncated
checkpoint, a NaN loss, a checkpoint that would run code, and bad config values."""
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import (CONFIG, REPO_ROOT, RunsCode, build_backbone, evaluate,
                     first_logged_iter_of_last_run, fused_copy, run, toy_options, train)
from mmdet_vanillanet.serialization import safe_load
from mmdet_vanillanet.toolkit.work_dir import guard_work_dir, resume_checkpoint

STATISTICS = ('running_mean', 'running_var', 'num_batches_tracked')


def _weights(path):
    return torch.load(path, weights_only=True)['state_dict']


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_weights(data_root, tmp_path):
    """SIGKILL in epoch 2 of 3, then --resume: the weights equal an uninterrupted run's."""
    train(tmp_path / 'whole', data_root, epochs=3)
    killed = tmp_path / 'killed'
    cmd = [sys.executable, 'tools/train.py', CONFIG, '--work-dir', str(killed), '--cfg-options',
           *toy_options(data_root, 3)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / 'last_checkpoint').exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # epoch 1 is saved; epoch 2 is under way
    proc.wait()
    assert (killed / 'epoch_1.pth').exists() and not (killed / 'epoch_3.pth').exists()
    train(killed, data_root, '--resume', epochs=3)
    assert first_logged_iter_of_last_run(killed) == 5  # continues after epoch 1's 4 iters
    whole, resumed = _weights(tmp_path / 'whole' / 'epoch_3.pth'), _weights(killed / 'epoch_3.pth')
    assert whole.keys() == resumed.keys()
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow
def test_a_truncated_last_checkpoint_is_passed_over(data_root, tmp_path):
    train(tmp_path, data_root, epochs=2)
    last = tmp_path / 'epoch_2.pth'
    last.write_bytes(last.read_bytes()[:len(last.read_bytes()) // 2])
    named = train(tmp_path, data_root, '--resume', str(last), expect_ok=False)
    assert f'error: {last} is truncated or corrupt' in named and 'Traceback' not in named
    tested = evaluate(last, data_root, tmp_path / 'test', expect_ok=False)
    assert f'error: {last} is truncated or corrupt' in tested and 'Traceback' not in tested
    output = train(tmp_path, data_root, '--resume', epochs=2)  # picks epoch_1 and redoes epoch 2
    assert f'not resuming from {last}' in output and 'truncated or corrupt' in output
    assert first_logged_iter_of_last_run(tmp_path) == 5


@pytest.mark.slow
def test_a_nan_loss_stops_training_naming_the_iteration(data_root, tmp_path):
    output = run('tools/train.py', CONFIG, '--work-dir', str(tmp_path), '--cfg-options',
                 *toy_options(data_root, 2), 'model.data_preprocessor.std=[0,0,0]',
                 expect_ok=False)
    assert 'error: non-finite loss at iteration 1 (epoch 1, batch 1)' in output
    assert 'Traceback' not in output and not (tmp_path / 'epoch_1.pth').exists()


@pytest.mark.parametrize('tool', ['test', 'resume'])
@pytest.mark.slow
def test_a_checkpoint_that_would_run_code_never_does(data_root, tmp_path, tool):
    evil, marker = tmp_path / 'epoch_1.pth', tmp_path / 'pwned'
    torch.save({'state_dict': {}, 'meta': {'epoch': 1}, 'hook': RunsCode(marker)}, evil)
    # Even with torch's weights_only default switched off by the environment.
    env = dict(TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD='1')
    if tool == 'test':
        output = evaluate(evil, data_root, tmp_path / 'w', expect_ok=False, env=env)
    else:
        output = train(tmp_path / 'w', data_root, '--resume', str(evil), expect_ok=False,
                       env=env)
    assert not marker.exists()
    assert 'could run code from the file' in output and 'Traceback' not in output


@pytest.mark.parametrize('option, message', [
    ('model.backbone.arch=14', "unknown VanillaNet arch '14'; choose one of"),
    ('model.backbone.act_num=-1', 'act_num must be an integer >= 0'),
    ('model.backbone.out_indices=[0,7]', "[7] not allowed; this arch has stages 0..4, and 'stem'"),
    ('model.backbone.frozen_stages=9', 'frozen_stages=9 is out of range'),
])
@pytest.mark.slow
def test_bad_values_give_one_line_errors(data_root, tmp_path, option, message):
    output = run('tools/train.py', CONFIG, '--work-dir', str(tmp_path), '--cfg-options',
                 *toy_options(data_root, 1), option, expect_ok=False)
    assert message in output and 'Traceback' not in output
    assert 'error: ' in output.splitlines()[-1]


@pytest.mark.slow
def test_a_deploy_checkpoint_cannot_start_a_training_run(data_root, tmp_path):
    detector = {f'backbone.{k}': v for k, v in fused_copy(build_backbone(arch=dict(
        dims=[32, 32, 64, 128, 256, 256], strides=[1, 2, 2, 2, 1]))).state_dict().items()}
    torch.save({'state_dict': detector}, tmp_path / 'deploy.pth')
    output = run('tools/train.py', CONFIG, '--work-dir', str(tmp_path / 'w'), '--cfg-options',
                 *toy_options(data_root, 1), f'load_from={tmp_path}/deploy.pth',
                 expect_ok=False)
    assert 'holds a fused (deploy-layout) VanillaNet' in output
    assert 'cannot start a training run' in output


@pytest.mark.parametrize('content, message', [
    ('{"images": [', 'is not valid JSON'),
    ('{"images": [], "annotations": [], "categories": []}', 'has no images or no categories'),
])
@pytest.mark.slow
def test_a_broken_annotation_file_is_named(data_root, tmp_path, content, message):
    ann = tmp_path / 'broken.json'
    ann.write_text(content)
    output = run('tools/train.py', CONFIG, '--work-dir', str(tmp_path / 'w'), '--cfg-options',
                 *toy_options(data_root, 1), f'train_dataloader.dataset.ann_file={ann}',
                 expect_ok=False)
    assert f'annotation file {ann} {message}' in output and 'Traceback' not in output


def test_resume_prefers_last_checkpoint_and_never_a_best_file(tmp_path):
    for name in ('epoch_2.pth', 'epoch_3.pth', 'best_coco_bbox_mAP_epoch_9.pth'):
        torch.save({'state_dict': {}, 'meta': {'epoch': 1}}, tmp_path / name)
    assert resume_checkpoint(str(tmp_path)) == str(tmp_path / 'epoch_3.pth')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_2.pth'))
    assert resume_checkpoint(str(tmp_path)) == str(tmp_path / 'epoch_2.pth')


def test_overwrite_removes_the_earlier_runs_checkpoints(tmp_path):
    torch.save({'state_dict': {}}, tmp_path / 'epoch_12.pth')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_12.pth'))
    with pytest.raises(FileExistsError, match='--overwrite'):
        guard_work_dir(str(tmp_path), resume=None, overwrite=False)
    assert (tmp_path / 'epoch_12.pth').exists()
    guard_work_dir(str(tmp_path), resume=None, overwrite=True)
    assert resume_checkpoint(str(tmp_path)) is None and not (tmp_path / 'last_checkpoint').exists()


def test_a_legacy_format_checkpoint_loads_where_memory_mapping_is_asked(tmp_path):
    path = tmp_path / 'legacy.pth'
    torch.save({'state_dict': {'w': torch.ones(2)}}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(safe_load(str(path), mmap=True)['state_dict']['w'], torch.ones(2))


@pytest.mark.slow
def test_a_mid_schedule_checkpoint_keeps_act_learn_and_refuses_fusion(data_root, tmp_path):
    run('tools/train.py', CONFIG, '--work-dir', str(tmp_path), '--cfg-options',
        *toy_options(data_root, 1), 'custom_hooks.0.duration=2')
    checkpoint = tmp_path / 'epoch_1.pth'
    assert torch.load(checkpoint, weights_only=True)['meta']['act_learn'] == 0.0
    output = evaluate(checkpoint, data_root, tmp_path / 'test', '--deploy', expect_ok=False)
    assert 'error: ' in output and 'cannot fuse VanillaNet with act_learn=0.0' in output
