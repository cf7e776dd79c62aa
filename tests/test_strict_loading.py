"""No silent partial loads: every detector-level load (tools/test.py, MMDetection's own test
tool, load_from, --resume, the benchmark, the exporter) refuses a checkpoint that does not fit,
in one line; heads replaced on purpose load through CheckpointFitHook.replaced."""
import os.path as osp

import pytest
import torch
from mmdet.models import DetTTAModel
from mmdet.registry import MODELS
from mmengine.config import Config

from helpers import CONFIG, evaluate, run, toy_options, train
from mmdet_runsafe.errors import CheckpointError
from mmdet_vanillanet.deploy.build import build_detector
from mmdet_vanillanet.models.checkpoint.detector_weights import check_detector_fits

HEADS = ['roi_head.bbox_head.fc_cls', 'roi_head.bbox_head.fc_reg',
         'roi_head.mask_head.conv_logits']
MMDET_TEST = osp.join(osp.dirname(__import__('mmdet').__file__), '.mim', 'tools', 'test.py')


def toy_detector(**backbone):
    cfg = Config.fromfile(CONFIG).model
    cfg.backbone.update(backbone)
    return MODELS.build(cfg)


def toy_detector_with_classes(num_classes):
    cfg = Config.fromfile(CONFIG).model
    cfg.roi_head.bbox_head.num_classes = cfg.roi_head.mask_head.num_classes = num_classes
    return MODELS.build(cfg)


@pytest.fixture(scope='module')
def detector():
    return toy_detector()


def test_a_fitting_checkpoint_passes(detector):
    state = {f'module.{k}': v for k, v in detector.state_dict().items()}  # a DDP-saved file
    assert check_detector_fits(detector, state, 'x.pth') == []


def test_the_backbone_part_names_act_num(detector):
    other = toy_detector(act_num=2).state_dict()
    with pytest.raises(CheckpointError, match='x.pth was trained with act_num=2 .* set '
                       'act_num=2 in the backbone config'):
        check_detector_fits(detector, other, 'x.pth')


def test_missing_unexpected_and_reshaped_tensors_are_named(detector):
    state = dict(detector.state_dict())
    del state['neck.fpn_convs.0.conv.weight']
    state['neck.extra.weight'] = torch.zeros(1)
    state['rpn_head.rpn_cls.weight'] = torch.zeros(1, 1, 1, 1)
    with pytest.raises(CheckpointError) as err:
        check_detector_fits(detector, state, 'x.pth')
    message = str(err.value)
    assert '\n' not in message
    for part in ('does not fit this MaskRCNN', 'shape mismatches (1): rpn_head.rpn_cls.weight',
                 'missing keys (1): neck.fpn_convs.0.conv.weight',
                 'unexpected keys (1): neck.extra.weight', 'checkpoint_fit.replaced'):
        assert part in message


def test_replaced_heads_may_differ_and_nothing_else(detector):
    coco = toy_detector_with_classes(80).state_dict()
    with pytest.raises(CheckpointError, match='shape mismatches'):
        check_detector_fits(detector, coco, 'coco.pth')
    dropped = check_detector_fits(detector, coco, 'coco.pth', replaced=HEADS)
    assert sorted(dropped) == sorted(k for k in coco if k.startswith(tuple(HEADS)))
    del coco['neck.fpn_convs.0.conv.weight']
    with pytest.raises(CheckpointError, match='missing keys'):
        check_detector_fits(detector, coco, 'coco.pth', replaced=HEADS)


@pytest.fixture(scope='module')
def act_num_2_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp('ckpt') / 'act_num_2.pth'
    torch.save({'state_dict': toy_detector(act_num=2).state_dict(), 'meta': {}}, path)
    return path


@pytest.mark.slow
def test_our_test_tool_refuses_a_checkpoint_that_does_not_fit(data_root, tmp_path,
                                                              act_num_2_checkpoint):
    output = evaluate(act_num_2_checkpoint, data_root, tmp_path, expect_ok=False)
    assert output.splitlines()[-1].startswith(f'error: {act_num_2_checkpoint} was trained with '
                                              'act_num=2')
    assert 'Traceback' not in output


@pytest.mark.slow
def test_mmdetections_own_test_tool_refuses_it_too(data_root, tmp_path, act_num_2_checkpoint):
    """The check lives in the config's hooks, not in our tool."""
    output = run(MMDET_TEST, CONFIG, str(act_num_2_checkpoint), '--work-dir', str(tmp_path),
                 '--cfg-options', *toy_options(data_root), expect_ok=False)
    assert 'was trained with act_num=2' in output


@pytest.mark.slow
def test_load_from_and_resume_refuse_it(data_root, tmp_path, act_num_2_checkpoint):
    output = train(tmp_path / 'a', data_root, epochs=1,
                   options=[f'load_from={act_num_2_checkpoint}'], expect_ok=False)
    assert 'error: ' in output and 'was trained with act_num=2' in output
    output = train(tmp_path / 'b', data_root, '--resume', str(act_num_2_checkpoint),
                   epochs=1, expect_ok=False)
    assert 'error: ' in output and 'was trained with act_num=2' in output


@pytest.mark.slow
def test_fine_tuning_to_other_classes_names_the_replaced_heads(data_root, tmp_path):
    coco = tmp_path / 'coco.pth'
    torch.save({'state_dict': toy_detector_with_classes(80).state_dict(), 'meta': {}}, coco)
    refused = train(tmp_path / 'a', data_root, epochs=1, options=[f'load_from={coco}'],
                    expect_ok=False)
    assert 'shape mismatches (6): roi_head.bbox_head.fc_cls.weight' in refused
    output = train(tmp_path / 'b', data_root, epochs=1, options=[
        f'load_from={coco}', f'default_hooks.checkpoint_fit.replaced=[{",".join(HEADS)}]'])
    assert 'were loaded only where present and of the same shape' in output
    assert (tmp_path / 'b' / 'epoch_1.pth').exists()


def test_the_benchmark_and_exporter_loads_refuse_it(act_num_2_checkpoint):
    with pytest.raises(CheckpointError, match='was trained with act_num=2'):
        build_detector(Config.fromfile(CONFIG), str(act_num_2_checkpoint))


@pytest.mark.slow
def test_the_export_tool_refuses_it_in_one_line(tmp_path, act_num_2_checkpoint):
    output = run('tools/export_onnx.py', CONFIG, str(act_num_2_checkpoint),
                 str(tmp_path / 'x.onnx'), expect_ok=False)
    assert output.splitlines()[-1].startswith(f'error: {act_num_2_checkpoint} was trained with '
                                              'act_num=2')
    assert not (tmp_path / 'x.onnx').exists()


def test_the_check_sees_through_a_test_time_augmentation_model(detector):
    """MMDetection's own tools/test.py --tta wraps the detector in a DetTTAModel."""
    tta = DetTTAModel(module=detector)
    assert check_detector_fits(tta, detector.state_dict(), 'x.pth') == []
