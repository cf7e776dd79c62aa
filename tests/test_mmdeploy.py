"""tools/mmdeploy_export.py: mmdeploy 1.3.1 exports our detectors under torch >= 2.9 without an
edit of mmdeploy, fuses the backbone itself, refuses a checkpoint from the middle of deep
training, and its onnxruntime model gives PyTorch's detections.

mmdeploy is no dependency (it pins protobuf <= 3.20.2, which onnx 1.23 cannot use): the tests
that export are skipped unless it is installed (pip install --no-deps mmdeploy==1.3.1 aenum);
the one-line error of the tool without it is tested everywhere. Weights are generated, as in
test_onnx_inference.py, so that every image has many detections to compare."""
import glob
import importlib.util
import re

import onnx
import pytest
import torch
from mmdet.registry import MODELS
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

from helpers import (
    CONFIG,
    center_roi_logits,
    narrow_retinanet_config,
    randomize,
    run,
    toy_test_config,
)

# The settings mmdeploy's configs/mmdet/detection/detection_onnxruntime_dynamic.py and
# instance-seg/instance-seg_onnxruntime_dynamic.py resolve to (its wheel ships no configs).
DEPLOY_CFG = """
onnx_config = dict(type='onnx', export_params=True, keep_initializers_as_inputs=False,
                   opset_version=11, save_file='end2end.onnx', input_names=['input'],
                   output_names={names}, input_shape=None, optimize=True, dynamic_axes={axes})
codebase_config = dict(type='mmdet', task='ObjectDetection', model_type='end2end',
                       post_processing=dict(score_threshold=0.05, confidence_threshold=0.005,
                                            iou_threshold=0.5, max_output_boxes_per_class=200,
                                            pre_top_k=5000, keep_top_k=100,
                                            background_label_id=-1,
                                            export_postprocess_mask=False))
backend_config = dict(type='onnxruntime')
"""
COMPARED = re.compile(r"PyTorch (\d+) detections, onnxruntime (\d+); (\d+) of PyTorch's found "
                      r'.*max box difference (\S+) px, max score difference ([^,\s]+)'
                      r'(?:, mask pixels differing (\d+) of (\d+))?')


def _deploy_config(folder, masks):
    names = ['dets', 'labels', 'masks'] if masks else ['dets', 'labels']
    axes = {'input': {0: 'batch', 2: 'height', 3: 'width'},
            **{name: {0: 'batch', 1: 'num_dets'} for name in names}}
    if masks:
        axes['masks'].update({2: 'height', 3: 'width'})
    path = folder / 'deploy.py'
    path.write_text(DEPLOY_CFG.format(names=names, axes=axes))
    return str(path)


def _generated(cfg, folder, act_learn=1.0):
    """The config as a file, and a checkpoint of generated weights saved at ``act_learn``."""
    init_default_scope('mmdet')
    model = randomize(MODELS.build(cfg.model)).eval()
    if hasattr(model, 'roi_head'):
        center_roi_logits(model, next(iter(Runner.build_dataloader(cfg.test_dataloader))))
    model.backbone.act_learn = act_learn  # travels in the state dict when it is not 1
    checkpoint = folder / f'act_learn_{act_learn}.pth'
    torch.save({'state_dict': model.state_dict()}, checkpoint)
    config = folder / 'model.py'
    cfg.dump(str(config))
    return str(config), str(checkpoint)


def _export(tmp_path, cfg, data_root, act_learn=1.0, expect_ok=True):
    pytest.importorskip('mmdeploy')
    config, checkpoint = _generated(cfg, tmp_path, act_learn)
    images = sorted(glob.glob(f'{data_root}val/*.png'))
    deploy = _deploy_config(tmp_path, masks=hasattr(cfg.model, 'roi_head'))
    return run('tools/mmdeploy_export.py', deploy, config, checkpoint, images[0],
               '--test-img', *images[1:], '--work-dir', str(tmp_path / 'out'),
               expect_ok=expect_ok)


@pytest.mark.slow
def test_retinanet_exports_fused_with_dynamic_shapes_and_gives_pytorchs_detections(
        tmp_path, data_root):
    output = _export(tmp_path, narrow_retinanet_config(), data_root)
    total, given, found, box, score = COMPARED.search(output).groups()[:5]
    assert int(total) == int(given) == int(found) > 6 * 50  # every image, many detections
    assert float(box) <= 1e-3 and float(score) <= 1e-5
    graph = onnx.load(str(tmp_path / 'out' / 'end2end.onnx')).graph
    # mmdeploy fused the backbone (switch_to_deploy): the unfused network has a leaky_relu
    # (act_learn) in every block, the fused one none.
    assert 'LeakyRelu' not in {node.op_type for node in graph.node}
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ['batch', '', 'height', 'width']


@pytest.mark.slow
def test_mask_rcnn_exports_with_roi_align_and_gives_pytorchs_detections(tmp_path, data_root):
    output = _export(tmp_path, toy_test_config(data_root), data_root)
    total, given, found, box, score, differing, pixels = COMPARED.search(output).groups()
    # mmdeploy rewrites the post-processing (the RPN's NMS runs over all levels at once, where
    # MMDetection runs one per level), so the two keep partly different detections (97 of 120
    # shared here; on the trained toy model the same AP within 0.004); those both keep must
    # be the same.
    assert int(total) == int(given) == 6 * 20 and int(found) >= int(total) // 2
    assert float(box) <= 1e-3 and float(score) <= 1e-5
    assert int(pixels) > 6 * 20 * 20 and int(differing) <= 1e-3 * int(pixels)


@pytest.mark.slow
def test_a_checkpoint_from_the_middle_of_deep_training_is_refused(tmp_path, data_root):
    output = _export(tmp_path, narrow_retinanet_config(), data_root, act_learn=0.5, expect_ok=False)
    assert output.strip().splitlines()[-1].startswith(
        'error: cannot fuse VanillaNet with act_learn=0.5')
    assert not (tmp_path / 'out' / 'end2end.onnx').exists()


def _last_line(*argv):
    output = run('tools/mmdeploy_export.py', *map(str, argv), expect_ok=False)
    assert 'Traceback' not in output
    return output.strip().splitlines()[-1]


def test_bad_input_is_a_one_line_error(tmp_path):
    missing = tmp_path / 'deploy.py'
    last = _last_line(missing, CONFIG, 'x.pth', 'x.png')
    if not all(importlib.util.find_spec(name) for name in ('mmdeploy', 'aenum')):
        assert last.startswith('error: this tool needs mmdeploy') and 'pip install' in last
        return
    assert last == f'error: deploy config not found: {missing}'
    tensorrt = tmp_path / 'tensorrt.py'
    tensorrt.write_text(DEPLOY_CFG.format(names=['dets', 'labels'], axes={}).replace(
        "type='onnxruntime'", "type='tensorrt'"))
    checkpoint, image = tmp_path / 'x.pth', tmp_path / 'x.png'
    checkpoint.touch()
    image.touch()
    assert _last_line(tensorrt, CONFIG, checkpoint, image) == (
        'error: --device cpu: cpu is invalid for the backend tensorrt; choose the device the '
        'backend runs on')
