"""The user API: what a user of the VanillaNet backbone calls beyond a config, as MMDetection
gathers its own in ``mmdet.apis``.

    from mmdet_vanillanet.apis import (OnnxDetector, convert_checkpoint, export_onnx,
                                       fuse_detector, quantize_onnx)

- ``fuse_detector(model, inplace=True)``: fuse every VanillaNet in a (wrapped) detector for
  deployment; the fused model, or a fused copy with ``inplace=False``.
- ``convert_checkpoint(src, dst, force=False, unsafe_load=False, config=None)``: write the
  fused (deploy-layout) version of a training-mode checkpoint, fused by the network it
  describes with the norm of the config it was trained with (tools/convert_checkpoint.py).
- ``export_onnx(config, checkpoint, out, part='backbone', ...)``: a fused part in ONNX, checked
  in onnxruntime against PyTorch (tools/export_onnx.py).
- ``quantize_onnx(config, onnx_file, out, split='train', num_images=64, ...)``: the INT8 (QDQ)
  version of an exported file, calibrated on the config's images (tools/quantize_onnx.py).
- ``OnnxDetector(config, onnx_file, checkpoint=None, device='cpu', threads=None)``: detections
  from an exported raw file, fp32 or INT8 (``.predict(images)``), decoded by the config's
  MMDetection heads.

Each one's docstring has an example. Importing this module registers the plugin (as a config's
``custom_imports`` does) and needs neither onnx nor onnxruntime: the ONNX functions import them
when called. mmdeploy's export is ``mmdet_vanillanet.deploy.mmdeploy_export`` (it needs
mmdeploy, which is no dependency).
"""
from .deploy.convert import convert_checkpoint
from .deploy.onnx_export import export_onnx
from .deploy.onnx_inference import OnnxDetector
from .deploy.quantize import quantize_onnx
from .models.detector import fuse_detector

__all__ = ['OnnxDetector', 'convert_checkpoint', 'export_onnx', 'fuse_detector', 'quantize_onnx']
