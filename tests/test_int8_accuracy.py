"""A trained toy Mask R-CNN keeps its box and mask AP after INT8 quantization with the default
recipe, decoded by OnnxDetector and scored by CocoMetric on its 48 validation images; the same
file calibrated on images that skip the data preprocessor (raw pixels) loses it, so the test
would catch a calibration that read images another way.

The bound is 0.015 AP, not the issue's 0.01: on a model this small (box AP about 0.14) and 48
images the int8 difference moves with the calibration draw alone by up to 0.012 (measured while
choosing the bound: a 20-epoch model of this recipe, 5 draws, every node int8 with 7-bit
weights: box -0.004 to +0.012). The 0.01 claim is the demo model's, measured over three draws
by benchmarks/int8_accuracy.py (docs/deployment.md)."""
import numpy as np
import pytest

from helpers import CONFIG, ap, run, scale_options
from mmdet_runsafe.config import load_config
from mmdet_vanillanet.deploy.calibration import calibration_inputs
from mmdet_vanillanet.deploy.onnx_export import export_onnx
from mmdet_vanillanet.deploy.quantize import quantize_on_inputs, quantize_onnx
from vanillanet_toolkit.demo import toy_data_options
from vanillanet_toolkit.onnx_eval import onnx_coco_ap

BOUND = 0.015


@pytest.mark.slow
def test_int8_keeps_the_trained_models_ap(trained_toy, tmp_path):
    root, checkpoint, scale = trained_toy
    options = dict(toy_data_options(root), **scale_options(scale), **{
        f'{split}_dataloader.{key}': value for split in ('train', 'val', 'test')
        for key, value in (('batch_size', 4), ('num_workers', 0),
                           ('persistent_workers', False))})
    cfg = load_config(CONFIG, options)
    fp32, int8 = str(tmp_path / 'fp32.onnx'), str(tmp_path / 'int8.onnx')
    export_onnx(cfg, checkpoint, fp32, part='raw', shape=(96, 96))
    quantize_onnx(cfg, fp32, int8, split='train', num_images=32)
    reference, quantized = (onnx_coco_ap(cfg, f, checkpoint) for f in (fp32, int8))
    assert reference['box'] > 0.1 and reference['mask'] > 0.1  # it learned something
    for metric in ('box', 'mask'):
        assert abs(quantized[metric] - reference[metric]) <= BOUND, (reference, quantized)
    # The one documented command gives the figure benchmarks/int8_accuracy.py reports (its
    # onnx_coco_ap) for the same file.
    output = run('tools/test.py', CONFIG, int8, '--checkpoint', checkpoint, '--work-dir',
                 str(tmp_path / 'test'), '--cfg-options',
                 *(f'{k}={"({},{})".format(*v) if isinstance(v, tuple) else v}'
                   for k, v in options.items()))
    assert (ap(output, 'bbox'), ap(output, 'segm')) == (quantized['box'], quantized['mask'])
    # Raw pixels (the test pipeline without the data preprocessor's normalisation).
    preprocessor = cfg.model.data_preprocessor
    std, mean = (np.array(preprocessor[k], np.float32).reshape(1, 3, 1, 1)
                 for k in ('std', 'mean'))
    raw = [a * std + mean for a in calibration_inputs(cfg, 'train', 32)]
    quantize_on_inputs(fp32, int8, raw, calibration='raw pixels')
    assert onnx_coco_ap(cfg, int8, checkpoint)['box'] < reference['box'] - 0.05
