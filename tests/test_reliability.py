"""Faults injected into real runs of the tools on the toy set (kills: test_resume.py): a truncated
checkpoint, NaN losses and weights, a checkpoint that would run code, bad config values, an
unwritable work dir and a full disk."""
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch
from mmdet.registry import MODELS
from mmengine.config import Config

from helpers import (
    CONFIG,
    REPO_ROOT,
    RunsCode,
    build_backbone,
    evaluate,
    file_size_limit,
    first_logged_iter_of_last_run,
    fused_copy,
    run,
    run_config,
    toy_options,
    train,
)
from mmdet_runsafe.serialization import safe_load
from mmdet_runsafe.work_dir import resume_checkpoint


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
    assert 'error: non-finite values at iteration 1 (epoch 1, batch 1): loss {' in output
    assert 'no checkpoint of this run predates it' in output
    assert 'Traceback' not in output and not (tmp_path / 'epoch_1.pth').exists()


@pytest.mark.slow
def test_a_finite_blow_up_stops_at_its_step(data_root, tmp_path):
    """The probe's case: at lr 1e30 one step leaves finite weights near 1e28; the run went on
    to a NaN one step later and called the checkpoint saved in between good."""
    output = train(tmp_path, data_root, epochs=1, expect_ok=False,
                   options=['optim_wrapper.optimizer.lr=1e30'])
    assert re.search(r"error: the weights blew up at iteration 1 \(epoch 1, batch 1\): the step "
                     r"multiplied the weights' L2 norm by [\d.e+]+ \(to [\d.e+]+; the bound is "
                     r'10, StopOnNonFiniteHook.max_norm_growth\)', output), output[-2000:]
    assert 'no checkpoint of this run predates it' in output and 'Traceback' not in output
    assert not list(tmp_path.glob('*.pth'))


@pytest.mark.slow
def test_a_divergence_after_a_checkpoint_names_it(data_root, tmp_path):
    """--resume with a huge lr (taken: ResumeLrFromConfigHook) diverges in epoch 2: the run
    stops before epoch 2 is checkpointed, naming epoch 1's checkpoint as the one to resume."""
    train(tmp_path, data_root, epochs=1)
    output = train(tmp_path, data_root, '--resume', epochs=2, expect_ok=False,
                   options=['optim_wrapper.optimizer.lr=1e39'])
    # At lr 1e39 the weights blow up (norm growth) or overflow (non-finite) at the first step.
    assert re.search(r'error: (non-finite values|the weights blew up) at iteration [5-8] '
                     r'\(epoch 2, batch [1-4]\): ', output)
    assert f'the last checkpoint, {tmp_path}/epoch_1.pth, predates it' in output
    assert 'Traceback' not in output and not (tmp_path / 'epoch_2.pth').exists()


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


@pytest.mark.parametrize('opt_out', [False, True])
@pytest.mark.slow
def test_under_mmdetections_own_test_tool_the_protection_is_torchs_default(data_root, tmp_path,
                                                                          opt_out):
    """What docs/reliability.md says holds (issue 17 item 12): MMDetection's own tools load with
    torch's default, weights_only=True, which refuses a crafted file; torch's explicit opt-out,
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1, switches it off for them (only our tools overrule it)."""
    evil, marker = tmp_path / 'evil.pth', tmp_path / 'pwned'
    torch.save({'state_dict': {}, 'hook': RunsCode(marker)}, evil)
    mmdet_test = osp.join(osp.dirname(__import__('mmdet').__file__), '.mim', 'tools', 'test.py')
    run(mmdet_test, CONFIG, str(evil), '--work-dir', str(tmp_path / 'w'), '--cfg-options',
        *toy_options(data_root), expect_ok=False,
        env=dict(TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD='1') if opt_out else None)
    assert marker.exists() == opt_out


@pytest.mark.parametrize('option, message', [
    ('model.backbone.arch=14', "unknown VanillaNet arch '14'; choose one of"),
    ('model.backbone.act_num=-1', 'act_num must be an integer >= 0'),
    ('model.backbone.out_indices=[0,7]', "[7] not allowed; this arch has stages 0..4, and 'stem'"),
    ('model.backbone.frozen_stages=9', 'frozen_stages=9 is not allowed'),
    ('model.backbone.frozen_stages=1.5', 'frozen_stages=1.5 is not allowed'),
    ('model.backbone.act_num=True', 'act_num must be an integer >= 0 (kernel 2*act_num+1), '
     'got True'),
    ('model.backbone.out_indices=3', 'out_indices must be a list or tuple of stage indices'),
    (('model.backbone.init_cfg.type=Pretrained',
      'model.backbone.init_cfg.checkpoint=open-mmlab://vanillanet13'),
     "MMEngine knows no model 'vanillanet13' under open-mmlab://"),
    ('load_from=torchvision://resnet50', 'torchvision:// names need torchvision installed'),
    ('model.backbone.norm_cfg.type=LN', "norm_cfg type 'LN': VanillaNet normalises NCHW maps"),
])
@pytest.mark.slow
def test_bad_values_give_one_line_errors(data_root, tmp_path, option, message):
    output = run('tools/train.py', CONFIG, '--work-dir', str(tmp_path), '--cfg-options',
                 *toy_options(data_root, 1), *([option] if isinstance(option, str) else option),
                 expect_ok=False)
    assert message in output and 'Traceback' not in output
    assert 'error: ' in output.splitlines()[-1]


@pytest.mark.slow
def test_an_unwritable_work_dir_is_named_before_training(data_root, tmp_path):
    (tmp_path / 'file').write_text('')
    output = train(tmp_path / 'file' / 'run', data_root, epochs=1, expect_ok=False)
    assert output.splitlines()[-1] == (f'error: the work dir {tmp_path}/file/run is in '
                                       f'{tmp_path}/file, a file, not a folder; choose another '
                                       f'with --work-dir')


@pytest.mark.slow
def test_a_full_disk_during_a_save_is_one_line_and_leaves_no_partial_file(data_root, tmp_path):
    done = subprocess.run([sys.executable, 'tools/train.py', CONFIG, '--work-dir',
                           str(tmp_path), '--cfg-options', *toy_options(data_root, 1)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          preexec_fn=file_size_limit(2 ** 20))
    last = (done.stdout + done.stderr).strip().splitlines()[-1]
    assert done.returncode == 1 and last.startswith(
        f'error: cannot write {tmp_path}/epoch_1.pth (File too large)'), last
    assert not list(tmp_path.glob('epoch_1.pth*'))


@pytest.mark.slow
def test_fusing_a_group_norm_backbone_is_one_line(data_root, tmp_path):
    gn = ['model.backbone.norm_cfg.type=GN', 'model.backbone.norm_cfg.num_groups=8']
    cfg = Config.fromfile(CONFIG)
    cfg.model.backbone.norm_cfg = dict(type='GN', num_groups=8, eps=1e-6, requires_grad=True)
    torch.save({'state_dict': MODELS.build(cfg.model).state_dict()}, tmp_path / 'gn.pth')
    output = run('tools/test.py', CONFIG, str(tmp_path / 'gn.pth'), '--deploy', '--work-dir',
                 str(tmp_path), '--cfg-options', *toy_options(data_root), *gn, expect_ok=False)
    assert output.splitlines()[-1] == ('error: cannot fuse GroupNorm: only BatchNorm folds into '
                                       'the conv before it (use norm_cfg=dict(type="BN") or '
                                       '"SyncBN")')


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
    assert resume_checkpoint(run_config(tmp_path)) == str(tmp_path / 'epoch_3.pth')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_2.pth'))
    assert resume_checkpoint(run_config(tmp_path)) == str(tmp_path / 'epoch_2.pth')


def test_a_legacy_format_checkpoint_loads_where_memory_mapping_is_asked(tmp_path):
    path = tmp_path / 'legacy.pth'
    torch.save({'state_dict': {'w': torch.ones(2)}}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(safe_load(str(path), mmap=True)['state_dict']['w'], torch.ones(2))
