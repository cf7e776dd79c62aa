"""The user's commands on a tiny toy set, in subprocesses as a user runs them: train (also on
2 CPU processes), checkpoint, resume, test with COCO AP, test fused, and the bad-input errors."""
import os.path as osp
import pickle
import sys

import pytest
import torch

from helpers import (
    CONFIG,
    REPO_ROOT,
    ap,
    evaluate,
    first_logged_iter_of_last_run,
    run,
    scalars,
    toy_options,
    train,
)
from mmdet_runsafe.serialization import safe_load

pytestmark = pytest.mark.slow  # every test here runs the tools in subprocesses
STATISTICS = ('running_mean', 'running_var', 'num_batches_tracked')


@pytest.fixture(scope='module')
def trained(tmp_path_factory, data_root):
    work_dir = tmp_path_factory.mktemp('train')
    train(work_dir, data_root)
    return work_dir


def test_training_runs_deep_training_and_writes_safe_checkpoints(trained):
    logged = [s for s in scalars(trained) if 'act_learn' in s]
    assert [s['act_learn'] for s in logged if s['epoch'] == 1] == [0.0] * 4
    assert [s['act_learn'] for s in logged if s['epoch'] == 2] == [1.0] * 4
    checkpoint = torch.load(trained / 'epoch_2.pth', weights_only=True)  # protection stays on
    assert checkpoint['meta']['iter'] == 8


def test_test_tool_reports_coco_ap_and_fusing_changes_nothing(trained, data_root, tmp_path):
    checkpoint = trained / 'epoch_2.pth'
    plain = evaluate(checkpoint, data_root, tmp_path / 'plain', '--out', str(tmp_path / 'p.pkl'))
    fused = evaluate(checkpoint, data_root, tmp_path / 'fused', '--deploy', '--out',
                     str(tmp_path / 'f.pkl'))
    assert 'fused VanillaNet-custom' in fused and 'fused VanillaNet' not in plain
    for metric in ('bbox', 'segm'):
        assert 0.0 <= ap(plain, metric) <= 1.0
        assert abs(ap(fused, metric) - ap(plain, metric)) <= 1e-3
    with open(tmp_path / 'p.pkl', 'rb') as f:  # written by the test above: trusted
        before = pickle.load(f)
    with open(tmp_path / 'f.pkl', 'rb') as f:
        after = pickle.load(f)
    assert len(before) == len(after) == 6
    for b, a in zip(before, after):
        top = slice(0, 10)
        torch.testing.assert_close(a['pred_instances']['scores'][top],
                                   b['pred_instances']['scores'][top], rtol=1e-3, atol=1e-4)


def test_deploy_checkpoint_is_tested_with_deploy_and_refused_without(trained, data_root,
                                                                     tmp_path):
    fused = tmp_path / 'deploy.pth'
    run('tools/convert_checkpoint.py', str(trained / 'epoch_2.pth'), str(fused))
    refused = evaluate(fused, data_root, tmp_path / 'a', expect_ok=False)
    assert 'holds a fused (deploy-layout) VanillaNet' in refused and 'add --deploy' in refused
    plain = evaluate(trained / 'epoch_2.pth', data_root, tmp_path / 'b')
    deployed = evaluate(fused, data_root, tmp_path / 'c', '--deploy')
    assert abs(ap(deployed, 'bbox') - ap(plain, 'bbox')) <= 1e-3


def test_resume_continues_where_the_run_stopped(data_root, tmp_path):
    train(tmp_path, data_root, epochs=1)
    train(tmp_path, data_root, '--resume', epochs=2)
    assert first_logged_iter_of_last_run(tmp_path) == 5  # continues after epoch 1's 4 iters
    logged = [s for s in scalars(tmp_path) if s.get('epoch') == 2 and 'act_learn' in s]
    assert [s['act_learn'] for s in logged] == [1.0] * 4
    assert torch.load(tmp_path / 'epoch_2.pth', weights_only=True)['meta']['iter'] == 8


def test_a_new_run_never_overwrites_an_earlier_runs_checkpoints(trained, data_root):
    before = (trained / 'epoch_2.pth').read_bytes()
    output = train(trained, data_root, expect_ok=False)
    assert 'an earlier run left checkpoints' in output and '--overwrite' in output
    assert (trained / 'epoch_2.pth').read_bytes() == before


def _train_two_processes(work_dir, data_root, *options, port):
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
                f'--master_port={port}']
    run(osp.join(REPO_ROOT, 'tests', 'dist_train_worker.py'), CONFIG, '--launcher', 'pytorch',
        '--work-dir', str(work_dir), '--cfg-options', *toy_options(data_root, epochs=1),
        'train_dataloader.batch_size=2', *options, launcher=torchrun)
    return [torch.load(work_dir / f'rank{rank}.pth', weights_only=True) for rank in (0, 1)]


def test_two_cpu_processes_train_the_same_weights(data_root, tmp_path):
    rank0, rank1 = _train_two_processes(tmp_path, data_root, port=29517)
    saved = torch.load(tmp_path / 'epoch_1.pth', weights_only=True)['state_dict']
    assert rank0.keys() == rank1.keys() == saved.keys()
    assert all(torch.equal(rank0[k], saved[k]) for k in rank0)
    # DDP keeps the weights in step; BN running statistics are each rank's own (plain BN on CPU).
    weights = [k for k in rank0 if not k.endswith(STATISTICS)]
    assert len(weights) > 100 and all(torch.equal(rank0[k], rank1[k]) for k in weights)


def test_the_plain_autograd_path_trains_the_same_run(data_root, tmp_path):
    """Two processes, the lean path (the default) and the plain one, one epoch (4 logged
    iterations): the losses agree to 1e-5 relative and the weights to 2e-3, but for the
    backbone's biases and BN running means. Not bit for bit: each step's gradients agree to
    rounding (the lean op sums the depthwise weights' gradient in another order), and rounding
    differences grow over a run (grad_norm parts at the second or third iteration, by about
    2e-5 relative); these bounds hold for this short run, not for a long one. The biases get
    gradients that are zero but for rounding (each feeds a BN through linear layers only),
    which AdamW's normalised steps turn into steps of full size in either path, and the
    running means follow them."""
    lean = _train_two_processes(tmp_path / 'lean', data_root, port=29518)[0]
    plain = _train_two_processes(tmp_path / 'plain', data_root,
                                 'model.backbone.lean_training=False', port=29519)[0]
    losses = [[s['loss'] for s in scalars(tmp_path / d) if 'loss' in s] for d in ('lean', 'plain')]
    assert len(losses[0]) == 4
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), rtol=1e-5, atol=0)
    noise = [k for k in lean if k.startswith('backbone.') and k.endswith(('.bias', 'running_mean'))]
    assert len(lean) - len(noise) > 100
    for k in lean.keys() - noise:
        torch.testing.assert_close(lean[k], plain[k], rtol=2e-3, atol=1e-5)


def test_missing_dataset_is_named_with_how_to_get_it(tmp_path):
    output = run('tools/train.py', CONFIG, '--work-dir', str(tmp_path), '--cfg-options',
                 f'train_dataloader.dataset.data_root={tmp_path}/nowhere/', expect_ok=False)
    assert f'annotation file not found: {tmp_path}/nowhere/annotations/instances_train.json' \
        in output
    assert 'make demo' in output and 'cocodataset.org' in output


def test_act_num_mismatch_stops_before_training(data_root, tmp_path):
    from mmdet.registry import MODELS
    backbone = MODELS.build(dict(type='VanillaNet', act_num=4, arch=dict(
        dims=[32, 32, 64, 128, 256, 256], strides=[1, 2, 2, 2, 1])))
    torch.save({'model_ema': backbone.state_dict()}, tmp_path / 'act4.pth')
    output = run('tools/train.py', CONFIG, '--work-dir', str(tmp_path / 'run'), '--cfg-options',
                 *toy_options(data_root, 1), 'model.backbone.init_cfg.type=Pretrained',
                 f'model.backbone.init_cfg.checkpoint={tmp_path}/act4.pth', expect_ok=False)
    assert 'was trained with act_num=4' in output and 'set act_num=4' in output
    assert not list((tmp_path / 'run').glob('*.pth'))  # nothing was trained


def test_a_mmdetection_2x_checkpoint_is_tested_as_it_is(trained, data_root, tmp_path):
    """The authors' released detectors are MMDetection 2.x files: meta with CLASSES and the
    config as text, the state dict, and the optimizer state."""
    mmdet3 = torch.load(trained / 'epoch_2.pth', weights_only=True)
    mmdet2 = {'meta': {'mmdet_version': '2.28.2', 'mmcv_version': '1.7.1', 'epoch': 12,
                       'iter': 8, 'CLASSES': ('circle', 'square', 'triangle'),
                       'config': "model = dict(type='MaskRCNN')", 'hook_msgs': {}},
              'state_dict': mmdet3['state_dict'], 'optimizer': mmdet3['optimizer']}
    torch.save(mmdet2, tmp_path / 'mmdet2.pth')
    as_2x = evaluate(tmp_path / 'mmdet2.pth', data_root, tmp_path / 'a')
    as_3x = evaluate(trained / 'epoch_2.pth', data_root, tmp_path / 'b')
    assert 'missing keys' not in as_2x and 'unexpected key' not in as_2x
    assert ap(as_2x, 'segm') == ap(as_3x, 'segm')


def test_the_toy_config_runs_under_mmdetections_own_train_tool(data_root, tmp_path):
    """No import of this package but the config's custom_imports; the config's hooks still
    save the generator states and write a checkpoint that loads with weights_only."""
    import mmdet
    mmdet_train = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'train.py')
    run(mmdet_train, CONFIG, '--work-dir', str(tmp_path), '--cfg-options',
        *toy_options(data_root, 1))
    checkpoint = safe_load(str(tmp_path / 'epoch_1.pth'))
    assert {'python', 'numpy', 'torch'} <= set(checkpoint['random_state'])
