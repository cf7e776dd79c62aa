"""What a user calls to deploy a VanillaNet detector (``mmdet_vanillanet.apis`` gathers it): the
detector built from a config and checkpoint (build.py), a checkpoint converted to the fused
layout (convert.py), a fused part exported to ONNX and checked in onnxruntime (onnx_export.py),
its INT8 version (quantize.py, calibrated on images read by calibration.py; quantized_file.py
reads such a file), detections from an exported file, fp32 or INT8 (onnx_inference.py), and
mmdeploy 1.3.1 run under torch >= 2.9 (mmdeploy_compat.py, mmdeploy_export.py); and what checks
that two networks compute the same (equivalence.py: generated weights, the relative difference).

The plugin never imports it; onnx, onnxruntime and mmdeploy are imported only where they are
used, as they are extras, not requirements.
"""
