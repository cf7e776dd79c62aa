"""Loading every released checkpoint form, written here in the released key layout from a
generated network with non-trivial BN statistics, and every way a file can fail to fit."""
import copy
import functools
import http.server
import os.path as osp
import subprocess
import sys
import threading

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import MMLogger

from helpers import (
    REPO_ROOT,
    RunsCode,
    build_backbone,
    fused_copy,
    max_rel_diff,
    narrow,
    randomize,
)
from mmdet_runsafe.errors import CheckpointError
from mmdet_vanillanet.deploy.convert import deploy_checkpoint
from mmdet_vanillanet.models.checkpoint.detector_weights import check_detector_norm
from mmdet_vanillanet.models.checkpoint.recorded_config import recorded_model_cfg

X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))


def _with_classifier(state, dims_last=64, classes=10):
    """Add the ImageNet classifier keys a released training-mode file has."""
    state = dict(state)
    state.update({'cls1.2.weight': torch.randn(classes, dims_last, 1, 1),
                  'cls1.2.bias': torch.randn(classes), 'cls1.3.weight': torch.ones(classes),
                  'cls2.0.weight': torch.randn(classes, classes, 1, 1)})
    return state


def _forms(source):
    state = source.state_dict()
    return {
        'model_ema': {'model_ema': _with_classifier(state), 'epoch': 299},
        'model': {'model': _with_classifier(state)},
        'state_dict': {'state_dict': state},
        'bare': _with_classifier(state),
        'detector': {'meta': {'epoch': 12, 'dataset_meta': {'classes': ('a', 'b')}},
                     'state_dict': {**{f'backbone.{k}': v for k, v in state.items()},
                                    'neck.lateral_convs.0.conv.weight': torch.randn(8, 8, 1, 1)}},
        'ddp': {'model': {f'module.{k}': v for k, v in state.items()}},
    }


def _load(path, **cfg):
    cfg.setdefault('arch', narrow('13'))
    cfg.setdefault('act_num', 4)
    model = build_backbone(init_cfg=dict(type='Pretrained', checkpoint=str(path)), **cfg)
    model.init_weights()
    return model.eval()


@pytest.mark.parametrize('form', ['model_ema', 'model', 'state_dict', 'bare', 'detector', 'ddp'])
def test_training_checkpoint_forms_load_exactly(form, random_narrow13, tmp_path):
    path = tmp_path / f'{form}.pth'
    torch.save(_forms(random_narrow13)[form], path)
    model = _load(path)
    with torch.no_grad():
        assert max_rel_diff(random_narrow13(X), model(X)) == 0


@pytest.mark.parametrize('form', ['model_ema', 'detector'])
def test_training_checkpoint_is_fused_into_a_deploy_backbone(form, random_narrow13, tmp_path):
    path = tmp_path / 'train.pth'
    torch.save(_forms(random_narrow13)[form], path)
    model = _load(path, deploy=True)
    with torch.no_grad():
        assert max_rel_diff(random_narrow13(X), model(X)) <= 1e-4


def test_deploy_checkpoint_loads_into_deploy_backbone(random_narrow13, tmp_path):
    path = tmp_path / 'deploy.pth'
    fused = fused_copy(random_narrow13)
    torch.save({'model': {**fused.state_dict(), 'cls.2.weight': torch.randn(10, 64, 1, 1)}}, path)
    with torch.no_grad():
        assert max_rel_diff(fused(X), _load(path, deploy=True)(X)) == 0


def test_deploy_checkpoint_into_training_backbone_explains_why_not(random_narrow13, tmp_path):
    path = tmp_path / 'deploy.pth'
    torch.save({'model': fused_copy(random_narrow13).state_dict()}, path)
    with pytest.raises(CheckpointError,
                       match='BN statistics and separate 1x1 convs were merged away'):
        _load(path)


def test_wrong_act_num_names_the_act_num_of_the_file(tmp_path):
    path = tmp_path / 'act3.pth'
    torch.save({'model_ema': build_backbone(arch=narrow('13'), act_num=3).state_dict()}, path)
    with pytest.raises(CheckpointError, match='trained with act_num=3 .7x7.*set act_num=3'):
        _load(path, act_num=4)


def test_wrong_arch_names_the_first_mismatched_keys_and_the_arch_of_the_file(tmp_path):
    path = tmp_path / 'arch9.pth'
    torch.save({'model_ema': build_backbone(arch=narrow('9'), act_num=4).state_dict()}, path)
    with pytest.raises(CheckpointError) as err:
        _load(path, arch=narrow('13'))
    message = str(err.value)
    assert 'stages.5.conv2.0.weight: file (64, 32, 1, 1) vs model (32, 32, 1, 1)' in message
    assert 'missing keys (68): stages.7.conv1.0.weight' in message  # stages 7..10 of arch 13
    assert 'the file holds custom widths (8, 8, 16, 32, 32, 32, 64, 64)' in message


def test_real_width_arch_is_recognised_in_the_error(tmp_path):
    path = tmp_path / 'real5.pth'
    with torch.device('meta'):
        state = build_backbone(arch='5').state_dict()
    torch.save({'model_ema': {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in state.items()}},
               path)
    with pytest.raises(CheckpointError, match=r'the file holds arch 5 \(training layout'):
        _load(path, arch=narrow('5'), act_num=3)


def test_missing_keys_are_an_error_not_a_silent_partial_load(random_narrow13, tmp_path):
    path = tmp_path / 'partial.pth'
    state = random_narrow13.state_dict()
    del state['stages.4.act.weight']
    torch.save({'model_ema': state}, path)
    with pytest.raises(CheckpointError, match=r'missing keys \(1\): stages.4.act.weight'):
        _load(path)


def test_the_load_is_logged(random_narrow13, tmp_path):
    path, log = tmp_path / 'ok.pth', tmp_path / 'load.log'
    torch.save(_forms(random_narrow13)['model_ema'], path)
    MMLogger.get_instance('test_the_load_is_logged', log_file=str(log))
    _load(path)
    logged = log.read_text()  # names the file and what it holds
    assert str(path) in logged and '(training layout, act_num 4)' in logged


def test_a_checkpoint_that_would_run_code_is_refused(random_narrow13, tmp_path):
    path, marker = tmp_path / 'evil.pth', tmp_path / 'pwned'
    torch.save({'model_ema': random_narrow13.state_dict(), 'args': RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match='could run code from the file.*unsafe_load=True'):
        _load(path)
    assert not marker.exists()


def test_a_truncated_checkpoint_is_named(random_narrow13, tmp_path):
    path = tmp_path / 'cut.pth'
    torch.save({'model_ema': random_narrow13.state_dict()}, path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match='cut.pth is truncated or corrupt'):
        _load(path)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        _load(tmp_path / 'nope.pth')


def test_checkpoint_from_a_url(random_narrow13, tmp_path, monkeypatch):
    served, cache = tmp_path / 'served', tmp_path / 'hub'
    served.mkdir()
    torch.save(_forms(random_narrow13)['model_ema'], served / 'vn.pth')
    monkeypatch.setattr(torch.hub, '_hub_dir', str(cache))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        model = _load(f'http://127.0.0.1:{server.server_port}/vn.pth')
    finally:
        server.shutdown()
    assert (cache / 'checkpoints' / 'vn.pth').exists()
    with torch.no_grad():
        assert max_rel_diff(random_narrow13(X), model(X)) == 0


NARROW13 = dict(type='VanillaNet', arch=narrow('13'), act_num=4)
EPS_1E_3 = dict(type='BN', eps=1e-3)


def _recording(backbone_cfg, state):
    """A detector checkpoint as MMEngine's Runner writes it: the run's config in its meta."""
    cfg = Config(dict(model=dict(type='RetinaNet', backbone=backbone_cfg), seed=0))
    return {'meta': {'cfg': cfg.pretty_text, 'epoch': 12},
            'state_dict': {f'backbone.{k}': v for k, v in state.items()}}


def _fused_backbone(converted):
    return {k[len('backbone.'):]: v for k, v in converted['state_dict'].items()}


def test_a_converted_file_folds_the_norm_its_recorded_config_gives():
    model = randomize(build_backbone(arch=narrow('13'), act_num=4, norm_cfg=EPS_1E_3)).eval()
    expected = fused_copy(model).state_dict()
    checkpoint = _recording({**NARROW13, 'norm_cfg': EPS_1E_3}, model.state_dict())
    converted, _, _ = deploy_checkpoint(copy.deepcopy(checkpoint), 'x.pth')
    fused = _fused_backbone(converted)
    assert fused.keys() == expected.keys()
    assert all(torch.equal(fused[k], expected[k]) for k in expected)
    # A config that says otherwise is refused; one that agrees is taken.
    other = Config(dict(model=dict(backbone=NARROW13)))  # the default norm: eps 1e-6
    with pytest.raises(CheckpointError, match=r'x.pth was trained with BatchNorm2d\(eps=0.001\) '
                       r'.*but the config gives BatchNorm2d\(eps=1e-06\)'):
        deploy_checkpoint(copy.deepcopy(checkpoint), 'x.pth', other)
    same = Config(dict(model=dict(backbone={**NARROW13, 'norm_cfg': dict(type='SyncBN',
                                                                          eps=1e-3)})))
    converted, _, _ = deploy_checkpoint(copy.deepcopy(checkpoint), 'x.pth', same)
    assert all(torch.equal(_fused_backbone(converted)[k], expected[k]) for k in expected)


def test_a_detector_file_is_refused_wherever_the_config_gives_another_norm():
    """Loading a detector file (CheckpointFitHook, load_detector_weights) checks its recorded
    norm against the model's as the converter does: the eps is in no tensor, and another one
    changes every output, fused or not."""
    model = nn.Module()
    model.backbone = build_backbone(arch=narrow('13'), act_num=4)  # the default eps, 1e-6
    state = model.backbone.state_dict()
    with pytest.raises(CheckpointError, match=r"x.pth was trained with BatchNorm2d\(eps=0.001\) "
                       r".*but the config's model.backbone.norm_cfg gives "
                       r"BatchNorm2d\(eps=1e-06\)"):
        check_detector_norm(model, _recording({**NARROW13, 'norm_cfg': EPS_1E_3}, state), 'x.pth')
    # Taken: a record that agrees (SyncBN folds as BN), no record, a record this version
    # cannot build (an argument it does not know), and a fused backbone, which has no norm.
    sync_bn = dict(type='SyncBN', eps=1e-6)
    check_detector_norm(model, _recording({**NARROW13, 'norm_cfg': sync_bn}, state), 'x.pth')
    check_detector_norm(model, {'state_dict': state}, 'x.pth')
    check_detector_norm(model, _recording({**NARROW13, 'no_such_argument': 1}, state), 'x.pth')
    model.backbone = fused_copy(model.backbone)
    check_detector_norm(model, _recording({**NARROW13, 'norm_cfg': EPS_1E_3}, state), 'x.pth')


def test_a_detector_file_that_records_no_config_needs_one():
    model = randomize(build_backbone(arch=narrow('13'), act_num=4, norm_cfg=EPS_1E_3)).eval()
    checkpoint = _recording({**NARROW13, 'norm_cfg': EPS_1E_3}, model.state_dict())
    del checkpoint['meta']
    with pytest.raises(CheckpointError, match='x.pth records no config of the VanillaNet '
                                              'it trained.*eps.*give the config'):
        deploy_checkpoint(copy.deepcopy(checkpoint), 'x.pth')
    given = Config(dict(model=dict(backbone={**NARROW13, 'norm_cfg': EPS_1E_3})))
    converted, _, _ = deploy_checkpoint(checkpoint, 'x.pth', given)
    expected = fused_copy(model).state_dict()
    assert all(torch.equal(_fused_backbone(converted)[k], expected[k]) for k in expected)


def test_a_deploy_backbone_fuses_on_load_with_the_recorded_norm_only(tmp_path):
    model = randomize(build_backbone(arch=narrow('13'), act_num=4, norm_cfg=EPS_1E_3)).eval()
    path = tmp_path / 'run.pth'
    torch.save(_recording({**NARROW13, 'norm_cfg': EPS_1E_3}, model.state_dict()), path)
    with pytest.raises(CheckpointError, match=r"trained with BatchNorm2d\(eps=0.001\).*this "
                                              r"backbone's norm_cfg gives BatchNorm2d\(eps=1e-06"):
        _load(path, deploy=True)
    with torch.no_grad():
        assert max_rel_diff(model(X), _load(path, deploy=True, norm_cfg=EPS_1E_3)(X)) <= 1e-4


def test_a_recorded_config_is_read_as_literals_never_run(tmp_path):
    marker = tmp_path / 'ran'
    code = f"model = dict(backbone=open({str(marker)!r}, 'w'))\n"
    assert recorded_model_cfg({'meta': {'cfg': code}}) is None and not marker.exists()
    text = Config(dict(model=dict(backbone=dict(NARROW13, norm_cfg=EPS_1E_3)))).pretty_text
    assert recorded_model_cfg({'meta': {'cfg': text}})['backbone']['norm_cfg'] == EPS_1E_3


def _convert(*args):
    tool = osp.join(REPO_ROOT, 'tools', 'convert_checkpoint.py')
    return subprocess.run([sys.executable, tool, *args], capture_output=True, text=True)


@pytest.mark.slow
def test_convert_tool_writes_the_deploy_layout(random_narrow13, tmp_path):
    src, dst = tmp_path / 'train.pth', tmp_path / 'deploy.pth'
    torch.save(_forms(random_narrow13)['model_ema'], src)
    done = _convert(str(src), str(dst))
    assert done.returncode == 0, done.stderr
    assert 'backbone parameters:' in done.stdout and '(deploy)' in done.stdout
    written = torch.load(dst, weights_only=True)
    assert set(written) == {'model'} and 'stages.0.conv.weight' in written['model']
    with torch.no_grad():
        assert max_rel_diff(random_narrow13(X), _load(dst, deploy=True)(X)) <= 1e-4


@pytest.mark.slow
def test_convert_tool_keeps_a_detectors_heads(random_narrow13, tmp_path):
    """This detector file records no config: the norm to fold comes from --config."""
    src, dst = tmp_path / 'det.pth', tmp_path / 'det_deploy.pth'
    torch.save(_forms(random_narrow13)['detector'], src)
    refused = _convert(str(src), str(dst))
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1].endswith('give the config it was trained '
                                                            'with (--config)')
    config = tmp_path / 'trained_with.py'
    config.write_text(f'model = dict(backbone={NARROW13!r})\n')
    done = _convert(str(src), str(dst), '--config', str(config))
    assert done.returncode == 0, done.stderr
    written = torch.load(dst, weights_only=True)
    assert 'neck.lateral_convs.0.conv.weight' in written['state_dict']
    assert 'backbone.stem.0.weight' in written['state_dict']
    assert written['meta'] == {'dataset_meta': {'classes': ('a', 'b')}}


@pytest.mark.slow
def test_convert_tool_never_overwrites_without_force(random_narrow13, tmp_path):
    src, dst = tmp_path / 'train.pth', tmp_path / 'mine.pth'
    torch.save(_forms(random_narrow13)['model_ema'], src)
    dst.write_text('precious')
    done = _convert(str(src), str(dst))
    assert done.returncode != 0 and 'pass --force' in done.stderr
    assert dst.read_text() == 'precious'
    assert _convert(str(src), str(dst), '--force').returncode == 0


@pytest.mark.slow
def test_convert_tool_unsafe_load_writes_plain_tensors(random_narrow13, tmp_path):
    src, dst, marker = tmp_path / 'evil.pth', tmp_path / 'clean.pth', tmp_path / 'ran'
    torch.save({'model_ema': random_narrow13.state_dict(), 'args': RunsCode(marker)}, src)
    refused = _convert(str(src), str(dst))
    assert refused.returncode != 0 and '--unsafe-load' in refused.stderr and not marker.exists()
    assert _convert(str(src), str(dst), '--unsafe-load').returncode == 0
    torch.load(dst, weights_only=True)


def test_loading_leaves_the_allow_list_as_it_was(random_narrow13, tmp_path):
    path = tmp_path / 'ok.pth'
    torch.save(_forms(random_narrow13)['model_ema'], path)
    before = set(torch.serialization.get_safe_globals())
    _load(path)
    assert set(torch.serialization.get_safe_globals()) == before
