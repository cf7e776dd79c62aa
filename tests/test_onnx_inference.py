"""Inference with an exported raw ONNX file (deploy/onnx_inference.py): onnxruntime runs the
fused network, MMDetection's own heads decode its outputs, and the detections and COCO AP are
those of the fused PyTorch model.

The weights are generated, not trained: a training run short enough for a test leaves the toy
AP near 0 all the same (40 iterations: box AP 0.017, after 2.8 minutes on a shared 2-core
machine). What the comparison needs is many detections of every class, scattered in score,
with non-empty masks (see center_roi_logits), compared one by one over the whole toy val
split; the COCO AP of both (0 here) is compared too, through MMDetection's CocoMetric."""
import copy
import glob
import json
import pickle

import mmcv
import numpy as np
import onnx
import pytest
import torch
from mmdet.apis import inference_detector
from mmdet.registry import MODELS
from mmengine.evaluator import Evaluator
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

from helpers import center_roi_logits, narrow_retinanet_config, randomize, toy_test_config
from mmdet_runsafe.class_order import config_classes
from mmdet_runsafe.errors import InputError
from mmdet_vanillanet.deploy import onnx_export
from mmdet_vanillanet.deploy.onnx_inference import OnnxDetector
from mmdet_vanillanet.models.detector import fuse_detector
from vanillanet_toolkit.runs import build_test_runner


def _generated(cfg, folder, seed=0, part='raw'):
    """A model of ``cfg`` with generated weights, its checkpoint, and its fused ``part`` in
    ONNX; returns (fused model, checkpoint, ONNX file)."""
    init_default_scope('mmdet')
    model = randomize(MODELS.build(cfg.model), seed=seed).eval()
    if hasattr(model, 'roi_head'):
        center_roi_logits(model, next(iter(Runner.build_dataloader(cfg.test_dataloader))))
    checkpoint = str(folder / f'seed{seed}.pth')
    torch.save({'state_dict': model.state_dict()}, checkpoint)
    fused = fuse_detector(model)
    module = onnx_export.ExportedPart(fused, part).eval()
    path = str(folder / f'seed{seed}_{part}.onnx')
    onnx_export.export(module, path, (160, 160))
    onnx_export.write_metadata(path, module, checkpoint, config_classes(cfg))
    return fused, checkpoint, path


@pytest.fixture(scope='module')
def mask_rcnn(tmp_path_factory, data_root):
    cfg = toy_test_config(data_root)
    return (cfg, *_generated(cfg, tmp_path_factory.mktemp('mask_rcnn')))


@pytest.fixture(scope='module')
def retinanet(tmp_path_factory):
    cfg = narrow_retinanet_config()
    return (cfg, *_generated(cfg, tmp_path_factory.mktemp('retinanet')))


def assert_same_detections(expected, got):
    want, have = expected.pred_instances, got.pred_instances
    assert torch.equal(want.labels, have.labels)
    assert torch.allclose(want.bboxes, have.bboxes, rtol=0, atol=1e-3)  # pixels
    assert torch.allclose(want.scores, have.scores, rtol=0, atol=1e-5)
    if 'masks' in want:
        # A pasted mask is its probabilities thresholded at 0.5: a pixel within ~1e-7 of it
        # may land on either side (about one pixel in six images here), none more.
        assert want.masks.shape == have.masks.shape
        assert (want.masks != have.masks).sum() <= 1e-3 * want.masks.sum()


def test_two_stage_detections_and_coco_ap_equal_pytorchs(mask_rcnn):
    cfg, fused, checkpoint, path = mask_rcnn
    detector = OnnxDetector(cfg, path, checkpoint)
    loader = Runner.build_dataloader(cfg.test_dataloader)
    evaluators = [Evaluator(cfg.test_evaluator) for _ in range(2)]
    labels, mask_pixels = set(), 0
    for batch in loader:
        with torch.no_grad():  # as MMEngine's test loop runs it
            expected = fused.test_step(batch)
        got = detector.predict(batch)
        for e, g in zip(expected, got):
            assert_same_detections(e, g)
            labels.update(e.pred_instances.labels.tolist())
            mask_pixels += int(e.pred_instances.masks.sum())
        for evaluator, samples in zip(evaluators, (expected, got)):
            evaluator.process(samples, batch)
    assert labels == {0, 1, 2} and mask_pixels > 6 * 20 * 20  # the comparisons meant something
    for evaluator in evaluators:
        evaluator.dataset_meta = loader.dataset.metainfo
    expected, got = (e.evaluate(len(loader.dataset)) for e in evaluators)
    assert set(expected) >= {'coco/bbox_mAP', 'coco/segm_mAP'} and got == expected


def test_single_stage_detections_from_files_and_arrays_equal_pytorchs(retinanet, data_root):
    cfg, fused, _, path = retinanet
    detector = OnnxDetector(cfg, path)  # every weight is in the file
    images = [f'{data_root}val/{name}' for name in ('000000.png', '000001.png')]
    fused.cfg = cfg  # what inference_detector reads the test pipeline from
    with torch.no_grad():
        expected = inference_detector(fused, images)
    got = detector.predict(images)
    assert got[0].ori_shape == (96, 96) and got[0].img_shape == (320, 320)
    for e, g in zip(expected, got):
        assert len(e.pred_instances) > 10
        assert_same_detections(e, g)
    assert_same_detections(expected[1], detector.predict(mmcv.imread(images[1]))[0])


def test_a_file_that_does_not_fit_the_config_is_refused(mask_rcnn, retinanet, tmp_path):
    cfg, _, checkpoint, path = mask_rcnn
    other_act_num = copy.deepcopy(cfg)
    other_act_num.model.backbone.act_num = 4
    with pytest.raises(InputError, match='act_num 3 where the config has 4'):
        OnnxDetector(other_act_num, path, checkpoint)
    with pytest.raises(InputError, match='vanillanet_dims 8,8,16,32,32,32,32,32,32,32,64,64 '
                                         'where the config has 32,32,64,128,256,256'):
        OnnxDetector(cfg, retinanet[3], checkpoint)
    with pytest.raises(FileNotFoundError, match='ONNX file not found: .*none.onnx'):
        OnnxDetector(cfg, str(tmp_path / 'none.onnx'), checkpoint)
    no_loader = copy.deepcopy(cfg)
    del no_loader.test_dataloader.dataset.pipeline[0]
    with pytest.raises(InputError, match='test pipeline has no LoadImageFromFile'):
        OnnxDetector(no_loader, path, checkpoint)
    with pytest.raises(InputError, match='holds the neck part'):
        OnnxDetector(cfg, _generated(cfg, tmp_path, part='neck')[2], checkpoint)
    four_levels = narrow_retinanet_config()
    four_levels.model.neck.num_outs = 4
    with pytest.raises(InputError, match=r'gives 10 outputs .* RetinaNet gives 8'):
        OnnxDetector(four_levels, retinanet[3])


def test_a_two_stage_detector_needs_the_checkpoint_the_file_came_from(mask_rcnn, tmp_path):
    cfg, _, _, path = mask_rcnn
    with pytest.raises(InputError, match='give the checkpoint'):
        OnnxDetector(cfg, path)
    _, another, _ = _generated(cfg, tmp_path, seed=1)
    with pytest.raises(InputError, match='the RPN head in .* differs from the checkpoint'):
        OnnxDetector(cfg, path, another)


def with_metadata(path, folder, metadata):
    """A copy of the file with ``metadata`` merged into its own (None: none at all; a value
    None: that key removed)."""
    model = onnx.load(path)
    kept = {} if metadata is None else {p.key: p.value for p in model.metadata_props}
    kept.update(metadata or {})
    del model.metadata_props[:]
    for key, value in kept.items():
        if value is not None:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
    changed = str(folder / 'changed.onnx')
    onnx.save(model, changed)
    return changed


@pytest.mark.parametrize('metadata, message', [
    (None, 'has no VanillaNet metadata'),
    ({'min_input_size': '400'}, 'input 320x320: .* needs each side at least 400 pixels'),
    # Crafted values (main: ValueError, KeyError, RuntimeError, JSONDecodeError tracebacks).
    ({'min_input_size': 'abc'}, "its metadata min_input_size 'abc' is not a positive whole"),
    ({'min_input_size': '-100'}, "its metadata min_input_size '-100' is not a positive"),
    ({'min_input_size': None}, "its metadata min_input_size '' is not a positive"),
    # Fails before issue 24 round two: a RuntimeError (storage size calculation overflowed).
    ({'min_input_size': '99999999999'}, "its metadata min_input_size '99999999999' is not a "
                                        r"positive whole number up to 4096 \(the config's "
                                        r"backbone needs \d+\)"),
    ({'quantization': '{not json'}, "its metadata 'quantization' is not the JSON object"),
    ({'quantization': '[1, 2]'}, "its metadata 'quantization' is not the JSON object"),
    ({'classes': '{not json'}, "its metadata classes '{not json' is not a JSON list of names"),
    ({'classes': '[1, 2]'}, "its metadata classes '\\[1, 2\\]' is not a JSON list of names"),
    # A single-stage file decodes without a checkpoint: the file's own record is what is
    # checked (main: labels permuted silently).
    ({'classes': '["bicycle", "person"]'}, r"changed.onnx was exported with the classes "
                                           r"\['bicycle', 'person'\], in another order or with "
                                           r"other names than the config's \['person', ")])
def test_the_files_metadata_is_read(retinanet, data_root, tmp_path, metadata, message):
    cfg, _, _, path = retinanet
    with pytest.raises(InputError, match=message) as err:
        OnnxDetector(cfg, with_metadata(path, tmp_path, metadata)).predict(
            f'{data_root}val/000000.png')
    assert '\n' not in str(err.value)


def test_a_checkpoint_of_other_classes_is_refused_by_export_and_inference(mask_rcnn, tmp_path):
    """Fails on main: tools/test.py refused such a checkpoint, but export_onnx and OnnxDetector
    took it, and every label came out as another class's."""
    cfg, _, checkpoint, path = mask_rcnn
    state = torch.load(checkpoint, weights_only=True)
    permuted = str(tmp_path / 'permuted.pth')
    torch.save({**state, 'meta': {'dataset_meta': {
        'classes': ('square', 'circle', 'triangle')}}}, permuted)
    message = r"permuted.pth was trained with the classes \['square', 'circle', 'triangle'\]"
    with pytest.raises(InputError, match=message):
        OnnxDetector(cfg, path, permuted)
    with pytest.raises(InputError, match=message):
        onnx_export.export_onnx(cfg, permuted, str(tmp_path / 'x.onnx'), part='raw')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['permuted.pth']
    same = str(tmp_path / 'same.pth')
    torch.save({**state, 'meta': {'dataset_meta': {
        'classes': ('circle', 'square', 'triangle')}}}, same)
    OnnxDetector(cfg, path, same)


def test_a_file_records_its_classes(retinanet):
    cfg, _, _, path = retinanet
    recorded = {p.key: p.value for p in onnx.load(path).metadata_props}['classes']
    assert json.loads(recorded) == list(config_classes(cfg)) and len(json.loads(recorded)) == 80


def test_a_file_exported_without_a_checkpoint_says_so(retinanet, tmp_path, caplog):
    """Fails on main: neither the tool's output nor the file said the weights were random."""
    cfg = retinanet[0]
    generated = str(tmp_path / 'generated.onnx')
    onnx_export.export_onnx(cfg, None, generated, part='raw', shape=(320, 320))
    assert {p.key: p.value for p in onnx.load(generated).metadata_props}['weights'] == \
        onnx_export.GENERATED
    assert 'was exported without a checkpoint: its weights are random' in \
        logged_warnings(caplog, lambda: OnnxDetector(cfg, generated))
    # Exported with its checkpoint: no warning.
    assert 'without a checkpoint' not in logged_warnings(caplog,
                                                         lambda: OnnxDetector(cfg, retinanet[3]))


def logged_warnings(caplog, call) -> str:
    """The warnings MMEngine's logger (outside logging's tree) logged during ``call()``."""
    caplog.clear()
    logger = MMLogger.get_current_instance()
    logger.addHandler(caplog.handler)
    try:
        call()
    finally:
        logger.removeHandler(caplog.handler)
    return '\n'.join(r.getMessage() for r in caplog.records if r.levelname == 'WARNING')


def test_a_file_of_another_number_of_classes_is_refused(retinanet):
    """The probe's case: a file of another num_classes decoded with labels in the config's
    range and high scores, or failed deep inside MMDetection."""
    cfg, _, _, path = retinanet
    three = copy.deepcopy(cfg)
    three.model.bbox_head.num_classes = 3
    with pytest.raises(InputError, match=r"output head_out0_level0 has shape \(1, 720, 8, 8\) "
                       r"where the config's RetinaHead \(3 classes, 9 anchors per location\) "
                       r'gives \(1, 27, 8, 8\).*another number of classes or anchors'):
        OnnxDetector(three, path)
    fewer_anchors = copy.deepcopy(cfg)
    fewer_anchors.model.bbox_head.anchor_generator.ratios = [1.0]
    with pytest.raises(InputError, match=r"gives \(1, 240, 8, 8\): .* another number of classes "
                       r'or anchors'):
        OnnxDetector(fewer_anchors, path)


def test_a_file_that_is_not_onnx_is_one_line(retinanet, tmp_path):
    corrupt = tmp_path / 'corrupt.onnx'
    corrupt.write_bytes(b'not an onnx file')
    with pytest.raises(InputError, match=f'onnxruntime cannot load {corrupt} '):
        OnnxDetector(retinanet[0], str(corrupt))


@pytest.fixture(scope='module')
def retinanet_detector(retinanet):
    return OnnxDetector(retinanet[0], retinanet[3])


@pytest.mark.parametrize('inputs, message', [
    ([], 'predict: give an image path, an HxWx3 BGR array, a non-empty list'),
    (np.zeros((40, 50), np.uint8), r'image 0 is an array of shape \(40, 50\); give an HxWx3'),
    (torch.zeros(3, 40, 50), 'image 0 is a torch tensor; give an HxWx3 BGR uint8 numpy array'),
    ([np.zeros((40, 50, 3), np.uint8), 7], 'image 1 is of type int; give a path'),
    (np.zeros((10, 8000, 3), np.uint8), r"image 0 \(8000x10, width x height\): the config's "
                                        r'test pipeline cannot resize it'),
])
def test_inputs_it_cannot_take_are_one_line(retinanet_detector, inputs, message):
    with pytest.raises(InputError, match=message) as err:
        retinanet_detector.predict(inputs)
    assert '\n' not in str(err.value)


def test_a_file_that_is_not_an_image_is_named(retinanet_detector, tmp_path):
    text = tmp_path / 'notes.jpg'
    text.write_text('not an image')
    with pytest.raises(InputError, match=f'{text} is not an image file OpenCV can read'):
        retinanet_detector.predict(str(text))
    with pytest.raises(FileNotFoundError, match='image not found: .*none.jpg'):
        retinanet_detector.predict(str(tmp_path / 'none.jpg'))


def test_the_test_tool_scores_an_exported_file_as_it_scores_the_checkpoint(mask_rcnn, tmp_path):
    """tools/test.py CONFIG FILE.onnx --checkpoint CKPT: the config's dataloader and evaluator,
    --out and --show-dir, and the same metrics as the fused checkpoint's test (main: the file
    was taken for a checkpoint that "holds Python objects beyond tensors")."""
    cfg, _, checkpoint, path = mask_rcnn
    runner = build_test_runner(copy.deepcopy(cfg), path, work_dir=str(tmp_path / 'onnx'),
                               out=str(tmp_path / 'onnx.pkl'), show_dir='vis',
                               onnx_checkpoint=checkpoint)
    got = runner.test()
    expected = build_test_runner(copy.deepcopy(cfg), checkpoint, work_dir=str(tmp_path / 'pth'),
                                 out=str(tmp_path / 'pth.pkl'), deploy=True).test()
    assert set(got) >= {'coco/bbox_mAP', 'coco/segm_mAP'} and got == expected
    dumped, reference = (pickle.load(open(tmp_path / f'{name}.pkl', 'rb'))
                         for name in ('onnx', 'pth'))
    assert len(dumped) == len(reference) == 6
    for mine, theirs in zip(dumped, reference):
        mine, theirs = mine['pred_instances'], theirs['pred_instances']
        assert len(mine['labels']) == 20 and torch.equal(mine['labels'], theirs['labels'])
        assert torch.allclose(mine['bboxes'], theirs['bboxes'], rtol=0, atol=1e-3)
    assert len(glob.glob(str(tmp_path / 'onnx' / '*' / 'vis' / '*.png'))) == 6


def test_the_test_tool_refuses_what_an_onnx_file_cannot_take(mask_rcnn):
    cfg, _, checkpoint, path = mask_rcnn
    for kwargs, message in ((dict(checkpoint=checkpoint, onnx_checkpoint=checkpoint),
                             'is a PyTorch checkpoint, not an ONNX model: tools/test.py CONFIG '
                             'FILE.onnx --checkpoint CKPT tests a file exported by'),
                            (dict(checkpoint=path, deploy=True), '--deploy: .* is an exported'),
                            (dict(checkpoint=path, launcher='pytorch'), 'tested in one process')):
        with pytest.raises(InputError, match=message):
            build_test_runner(copy.deepcopy(cfg), **kwargs)
