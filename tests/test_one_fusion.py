"""One fusion, whatever norm the run trained with: a toy run trained with BN eps 1e-2 (not the
released 1e-6) is fused by the converter (the eps read from the config the checkpoint records),
by tools/test.py --deploy (the deploy hook, on the training checkpoint), by the deploy backbone
loading the converted file, and by the ONNX exporter, and all of them compute one result."""
import pickle

import onnxruntime
import pytest
import torch
from mmengine.config import Config

from helpers import CONFIG, evaluate, max_rel_diff, run, toy_options
from mmdet_runsafe.errors import CheckpointError
from mmdet_vanillanet.apis import convert_checkpoint, export_onnx
from mmdet_vanillanet.deploy.build import build_detector
from mmdet_vanillanet.models.checkpoint.backbone_weights import fused_state, training_network
from mmdet_vanillanet.models.checkpoint.forms import backbone_state_dict

EPS = 1e-2
NORM = [f'model.backbone.norm_cfg.eps={EPS}']
X = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope='module')
def trained(data_root, tmp_path_factory):
    """Two toy epochs at BN eps 1e-2 (deep training ends after the first)."""
    work_dir = tmp_path_factory.mktemp('eps_run')
    run('tools/train.py', CONFIG, '--work-dir', str(work_dir), '--cfg-options',
        *toy_options(data_root, 2), *NORM)
    return work_dir / 'epoch_2.pth'


def _config(**backbone):
    cfg = Config.fromfile(CONFIG)
    cfg.model.backbone.update(backbone)
    return cfg


def _predictions(path):
    with open(path, 'rb') as f:
        return [(p['pred_instances']['bboxes'], p['pred_instances']['scores'])
                for p in pickle.load(f)]


@pytest.mark.slow
def test_convert_deploy_export_and_the_deploy_hook_give_one_result(trained, data_root,
                                                                     tmp_path):
    converted = tmp_path / 'deploy.pth'
    convert_checkpoint(str(trained), str(converted))  # the eps from the recorded config
    deployed = build_detector(_config(deploy=True), str(converted))
    with torch.no_grad():
        expected = deployed.backbone(X)

    # The fused backbone of a converted file computes with the eps the run trained with:
    # another eps gives other numbers, far beyond the agreement asked below.
    state = backbone_state_dict(torch.load(trained, weights_only=True))
    backbone = {k: v for k, v in _config().model.backbone.items() if k != 'norm_cfg'}
    released = training_network(backbone, 'released eps')  # BN eps 1e-6
    wrong = build_detector(_config(deploy=True)).backbone
    wrong.load_state_dict(fused_state(released, state, 'released eps'))
    with torch.no_grad():
        assert max_rel_diff(expected, wrong.eval()(X)) > 1e-3

    # tools/test.py --deploy: the deploy hook fuses the trained network in memory; and the
    # converted file into a deploy backbone. Both dump their detections.
    hooked, loaded = tmp_path / 'hooked.pkl', tmp_path / 'loaded.pkl'
    run('tools/test.py', CONFIG, str(trained), '--work-dir', str(tmp_path / 'a'), '--deploy',
        '--out', str(hooked), '--cfg-options', *toy_options(data_root), *NORM)
    evaluate(converted, data_root, tmp_path / 'b', '--deploy', '--out', str(loaded))
    hooked, loaded = _predictions(hooked), _predictions(loaded)
    assert len(hooked) == len(loaded)
    for (boxes_a, scores_a), (boxes_b, scores_b) in zip(hooked, loaded):
        assert len(scores_a) > 0
        torch.testing.assert_close(boxes_a, boxes_b, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(scores_a, scores_b, rtol=1e-5, atol=1e-6)

    # The exporter fuses the training checkpoint under the config it was trained with.
    out = tmp_path / 'backbone.onnx'
    export_onnx(CONFIG, str(trained), str(out), shape=(96, 128),
                cfg_options={'model.backbone.norm_cfg.eps': EPS})
    session = onnxruntime.InferenceSession(str(out), providers=['CPUExecutionProvider'])
    exported = [torch.from_numpy(o) for o in session.run(None, {'input': X.numpy()})]
    assert max_rel_diff(expected, exported) <= 1e-5


@pytest.mark.slow
def test_a_config_of_another_eps_is_refused_wherever_the_file_is_loaded(trained, data_root,
                                                                        tmp_path):
    """Under the config's own eps (1e-6) the eps-1e-2 file would compute other numbers, fused or
    not: tools/test.py (with and without --deploy), the exporter and the converter refuse it."""
    for extra in ((), ('--deploy', )):
        output = evaluate(trained, data_root, tmp_path / f'run{len(extra)}', *extra,
                          expect_ok=False)
        last = output.strip().splitlines()[-1]
        assert last.startswith('error: ') and 'BatchNorm2d(eps=0.01)' in last \
            and 'BatchNorm2d(eps=1e-06)' in last, output[-2000:]
    message = r'trained with BatchNorm2d\(eps=0.01\).*gives BatchNorm2d\(eps=1e-06\)'
    with pytest.raises(CheckpointError, match=message):
        export_onnx(CONFIG, str(trained), str(tmp_path / 'x.onnx'), shape=(96, 128))
    with pytest.raises(CheckpointError, match=message):
        convert_checkpoint(str(trained), str(tmp_path / 'x.pth'), config=CONFIG)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['run0', 'run1']
