"""act_learn travels with the weights: a backbone saved before deep training ends holds it in its
state dict, and every loader (ours, MMEngine's, MMDetection's test tool and DetInferencer) sets
it, while the released key layouts stay exactly as they are."""
import glob
import os.path as osp
import pickle

import mmdet
import pytest
import torch
from mmdet.apis import DetInferencer
from mmengine.config import Config
from mmengine.runner import load_checkpoint

from helpers import CONFIG, ap, build_backbone, fused_copy, narrow, randomize, run, toy_options
from mmdet_runsafe.errors import CheckpointError
from mmdet_vanillanet.config_error import ConfigError
from mmdet_vanillanet.deploy.convert import deploy_checkpoint
from mmdet_vanillanet.models import VanillaNet
from mmdet_vanillanet.models.checkpoint import backbone_weights
from mmdet_vanillanet.models.checkpoint.forms import count_params
from mmdet_vanillanet.models.detector import fuse_detector

MMDET_TEST = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'test.py')
MID = 0.25  # act_learn of the first epoch below: start 0.25, reaching 1 after one epoch


NARROW = dict(arch=narrow('13'), act_num=4)
# The config the generated files were "trained" with: a detector file needs one to be fused.
NARROW_CONFIG = Config(dict(model=dict(backbone=dict(type='VanillaNet', **NARROW))))


def _keys(deploy=False, **cfg):
    """The state-dict keys of a backbone, built on the meta device."""
    with torch.device('meta'):
        return set(VanillaNet(**{**NARROW, **cfg}, deploy=deploy, init_cfg=None).state_dict())


def _backbone():
    return randomize(build_backbone(**NARROW)).eval()


def test_the_key_is_there_only_below_1_and_every_loader_sets_act_learn(tmp_path):
    model = _backbone()
    released = _keys()
    assert set(model.state_dict()) == released
    assert set(fused_copy(model).state_dict()) == _keys(deploy=True)
    params = count_params(model.state_dict())
    model.act_learn = 0.3
    state = model.state_dict()
    assert set(state) == released | {'act_learn'} and count_params(state) == params
    assert state['act_learn'].item() == 0.3  # float64: the value comes back exactly
    torch.save({'state_dict': state}, tmp_path / 'mid.pth')
    for strict in (True, False):  # strict: the key is no unexpected key to MMEngine either
        loaded = build_backbone(**NARROW)
        load_checkpoint(loaded, str(tmp_path / 'mid.pth'), strict=strict)
        assert loaded.act_learn == 0.3
    loaded.load_state_dict({k: v for k, v in state.items() if k != 'act_learn'})
    assert loaded.act_learn == 1.0  # weights without the key (released ones) were saved at 1
    deployed = fused_copy(_backbone())
    with pytest.raises(ConfigError, match='loading act_learn: act_learn=0.3: a deployed'):
        deployed.load_state_dict({**deployed.state_dict(), 'act_learn': state['act_learn']})


def test_the_released_file_checks_accept_the_key_and_fusion_refuses_it(tmp_path):
    model = _backbone()
    model.act_learn = 0.3
    path = tmp_path / 'detector.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in model.state_dict().items()}}, path)
    init_cfg = dict(type='Pretrained', checkpoint=str(path))
    loaded = build_backbone(**NARROW, init_cfg=init_cfg)
    loaded.init_weights()  # the fit checks pass, and the load sets act_learn
    assert loaded.act_learn == 0.3
    deployed = build_backbone(**NARROW, init_cfg=init_cfg, deploy=True)
    with pytest.raises(CheckpointError, match='detector.pth: cannot fuse VanillaNet with '
                                              'act_learn=0.3'):
        deployed.init_weights()  # fused on load: refused
    with pytest.raises(CheckpointError, match='cannot fuse VanillaNet with act_learn=0.3'):
        deploy_checkpoint(torch.load(path, weights_only=True),  # tools/convert_checkpoint.py
                          config=NARROW_CONFIG)


def test_a_0_2_0_checkpoint_with_act_learn_in_its_meta_still_computes_with_it(tmp_path):
    """0.2.0 wrote act_learn into the checkpoint's meta; such a file is read as it was."""
    state = {f'backbone.{k}': v for k, v in _backbone().state_dict().items()}
    path = tmp_path / 'v020.pth'
    torch.save({'state_dict': state, 'meta': {'act_learn': 0.25}}, path)
    loaded = build_backbone(**NARROW, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    loaded.init_weights()
    assert loaded.act_learn == 0.25
    with pytest.raises(CheckpointError, match='cannot fuse VanillaNet with act_learn=0.25'):
        deploy_checkpoint(torch.load(path, weights_only=True), config=NARROW_CONFIG)


@pytest.fixture(scope='module')
def run_dir(data_root, tmp_path_factory):
    """Two toy epochs: epoch_1.pth from the middle of deep training, epoch_2.pth after it."""
    work_dir = tmp_path_factory.mktemp('act_learn_run')
    run('tools/train.py', CONFIG, '--work-dir', str(work_dir), '--cfg-options',
        *toy_options(data_root, 2), f'custom_hooks.0.start={MID}')
    return work_dir


@pytest.mark.slow
def test_a_mid_schedule_checkpoint_holds_act_learn_and_a_finished_one_the_released_layout(
        run_dir):
    mid = torch.load(run_dir / 'epoch_1.pth', weights_only=True)
    assert mid['state_dict']['backbone.act_learn'].item() == MID and 'act_learn' not in mid['meta']
    finished = torch.load(run_dir / 'epoch_2.pth', weights_only=True)['state_dict']
    backbone = Config.fromfile(CONFIG).model.backbone
    released = _keys(arch=backbone.arch, act_num=backbone.act_num)
    assert {k for k in finished if k.startswith('backbone.')} == {
        f'backbone.{k}' for k in released}


def _predictions(output_file):
    with open(output_file, 'rb') as f:
        return torch.cat([torch.as_tensor(p['pred_instances']['bboxes']) for p in pickle.load(f)])


@pytest.mark.slow
def test_mmdetections_own_test_tool_computes_with_the_trained_act_learn(run_dir, data_root):
    """MMDetection's tools/test.py, on a config without our deep-training hook (as the COCO
    configs are), gives what ours gives."""
    checkpoint = str(run_dir / 'epoch_1.pth')
    options = [o for o in toy_options(data_root) if not o.startswith('custom_hooks')]
    theirs = run(MMDET_TEST, CONFIG, checkpoint, '--work-dir', str(run_dir / 'theirs'),
                 '--out', str(run_dir / 'theirs.pkl'), '--cfg-options', *options,
                 'custom_hooks=[]')
    ours = run('tools/test.py', CONFIG, checkpoint, '--work-dir', str(run_dir / 'ours'),
               '--out', str(run_dir / 'ours.pkl'), '--cfg-options', *toy_options(data_root))
    assert [ap(theirs, m) for m in ('bbox', 'segm')] == [ap(ours, m) for m in ('bbox', 'segm')]
    torch.testing.assert_close(_predictions(run_dir / 'theirs.pkl'),
                               _predictions(run_dir / 'ours.pkl'))
    output = run('tools/test.py', CONFIG, checkpoint, '--deploy', '--work-dir',
                 str(run_dir / 'fused'), '--cfg-options', *toy_options(data_root), expect_ok=False)
    assert output.strip().splitlines()[-1].startswith(
        f'error: cannot fuse VanillaNet with act_learn={MID}')


@pytest.mark.slow
def test_det_inferencer_gets_the_trained_act_learn_and_fusion_refuses_it(run_dir, data_root):
    inferencer = DetInferencer(model=CONFIG, weights=str(run_dir / 'epoch_1.pth'), device='cpu',
                               show_progress=False)
    model = inferencer.model
    assert model.backbone.act_learn == MID
    image = sorted(glob.glob(f'{data_root}val/*'))[0]
    model.roi_head.test_cfg.score_thr = 0.0  # always max_per_img detections, to compare

    def scores():
        return inferencer(image, return_datasamples=True)['predictions'][0].pred_instances.scores

    trained = scores()
    model.backbone.act_learn = 1.0
    assert not torch.allclose(scores(), trained)  # the default act_learn would compute otherwise
    model.backbone.act_learn = MID
    with pytest.raises(ConfigError, match=f'cannot fuse VanillaNet with act_learn={MID}'):
        fuse_detector(model)


def test_a_block_takes_act_learn_as_the_authors_change_act_sets_it():
    """The authors' change_act sets act_learn on the model and on each block: a block's slope is
    the one it computes with (when the block became conv1 -> conv2 -> pool -> act, the
    assignment set an attribute nothing read), and a network with a block below 1 is not
    fused."""
    model = randomize(build_backbone(arch=narrow('5'), act_num=1)).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = model(x)[-1]
        for block in model.stages:
            block.act_learn = 0.3
        model.stem_act_learn = 0.3  # change_act's `self.act_learn = m`, the stem's slope
        per_block = model(x)[-1]
        model.act_learn = 0.3
        per_model = model(x)[-1]
    assert torch.equal(per_block, per_model) and not torch.allclose(per_block, plain)
    model.act_learn = 1.0
    model.stages[0].act_learn = 0.5
    with pytest.raises(ConfigError, match='cannot fuse VanillaNet with act_learn=0.5'):
        model.switch_to_deploy()
    assert not model.deploy and hasattr(model.stages[0], 'conv1')  # nothing fused
    with pytest.raises(ConfigError, match=r'act_learn must lie in \[0, 1\], got 2.0'):
        model.stages[0].act_learn = 2


def _outputs(model, x):
    with torch.no_grad():
        return model(x)


def _same(a, b):
    return all(torch.equal(p, q) for p, q in zip(a, b))


@pytest.mark.parametrize('slopes, refused', [
    ((0.3, 0.3, 0.3, 0.3), 'act_learn=0.3'),
    ((1.0, 0.3, 0.3, 0.3), 'act_learn=0.3 in stages.0'),
    ((1.0, 1.0, 0.5, 0.2), 'act_learn=0.5 in stages.1'),
    ((0.4, 1.0, 1.0, 1.0), 'act_learn=0.4 in the stem')])
def test_slopes_set_block_by_block_are_saved_loaded_and_checked_by_fusion(slopes, refused,
                                                                          tmp_path):
    """Issue 28: the authors' change_act loop set the blocks' slopes, which state_dict did not
    record (it held the backbone's own copy): a model loaded from it computed something else,
    and fused without complaint. Each slope is owned by its place, and the state dict records
    every one."""
    model = randomize(build_backbone(arch=narrow('5'), act_num=1)).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model.stem_act_learn = slopes[0]
    for block, slope in zip(model.stages, slopes[1:]):  # the authors' change_act
        block.act_learn = slope
    trained = _outputs(model, x)
    assert model.slopes == slopes and model.act_learn == min(slopes)
    torch.save({'state_dict': model.state_dict()}, tmp_path / 'mid.pth')
    loaded = build_backbone(arch=narrow('5'), act_num=1).eval()
    load_checkpoint(loaded, str(tmp_path / 'mid.pth'), strict=True)
    assert loaded.slopes == slopes and _same(_outputs(loaded, x), trained)
    with pytest.raises(ConfigError, match=f'^cannot fuse VanillaNet with {refused}:'):
        loaded.switch_to_deploy()
    assert not loaded.deploy and hasattr(loaded.stages[0], 'conv1')  # nothing fused
    loaded.act_learn = 1.0  # the backbone's setter sets every place
    assert loaded.slopes == (1.0, ) * 4 and 'act_learn' not in loaded.state_dict()


def test_a_state_dict_with_a_wrong_number_of_slopes_is_refused():
    model = build_backbone(arch=narrow('5'))
    state = {**model.state_dict(), 'act_learn': torch.tensor([0.5, 0.5], dtype=torch.float64)}
    with pytest.raises(ConfigError, match=r'loading act_learn: holds \(2,\) values, where one, '
                                         r'or one per place \(4: the stem and each stage\)'):
        model.load_state_dict(state)


def test_a_configured_act_learn_replaced_by_the_pretrained_files_is_said(tmp_path, monkeypatch):
    """A config's act_learn is the value the network is built with; its init_cfg's weights then
    set theirs (a released file: 1), which is logged rather than done silently."""
    path = tmp_path / 'released.pth'
    torch.save({'model': _backbone().state_dict()}, path)  # saved at 1: no act_learn key
    logged = []
    monkeypatch.setattr(backbone_weights, 'print_log', lambda message, **kw: logged.append(message))
    model = build_backbone(**NARROW, act_learn=0.5,
                           init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    assert model.act_learn == 1.0
    assert logged[-1] == (f'VanillaNet-custom: act_learn=0.5 of the config is replaced by the '
                          f'value {path} was saved at (1)')
