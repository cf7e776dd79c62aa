"""COCO AP of an exported raw file (fp32 or INT8) decoded by OnnxDetector, what onnxruntime
really runs of a file, and the toy model's raw file they start from: the INT8 measurements of
benchmarks/ and the INT8 tests'."""
import collections
import os
import os.path as osp
import tempfile
from typing import Dict, Optional, Tuple

import torch
from mmengine.config import Config
from mmengine.evaluator import Evaluator
from mmengine.runner import Runner

from ..deploy.build import load_config
from ..deploy.onnx_export import export_onnx, onnx_packages
from ..deploy.onnx_inference import OnnxDetector
from .demo import toy_data_options


def onnx_coco_ap(cfg: Config, onnx_file: str, checkpoint: Optional[str],
                 threads: Optional[int] = None) -> Dict[str, float]:
    """Box and mask AP ('box', 'mask'; 0 where CocoMetric finds no detection) of the file on
    the config's test split, through OnnxDetector and the config's test evaluator."""
    detector = OnnxDetector(cfg, onnx_file, checkpoint, threads=threads)
    loader = Runner.build_dataloader(cfg.test_dataloader)
    evaluator = Evaluator(cfg.test_evaluator)
    evaluator.dataset_meta = loader.dataset.metainfo
    for batch in loader:
        with torch.no_grad():
            evaluator.process(detector.predict(batch), batch)
    metrics = evaluator.evaluate(len(loader.dataset))
    return dict(box=metrics.get('coco/bbox_mAP', 0.0), mask=metrics.get('coco/segm_mAP', 0.0))


def onnxruntime_ops(path: str) -> Dict[str, int]:
    """Op counts of the graph onnxruntime runs on the CPU after its optimisations: a 'Conv'
    left there runs in float, a 'QLinearConv' in int8 (onnxruntime fuses QDQ around a conv
    into one, or quantizes a float conv again whose input is a DequantizeLinear)."""
    onnx, onnxruntime = onnx_packages('reading an ONNX file')
    with tempfile.TemporaryDirectory() as tmp:
        options = onnxruntime.SessionOptions()
        options.optimized_model_filepath = optimized = osp.join(tmp, 'optimized.onnx')
        onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])
        return dict(collections.Counter(n.op_type for n in onnx.load(optimized).graph.node))


def toy_raw_file(config: str, data: str, checkpoint: str, work_dir: str) -> Tuple[Config, str]:
    """The toy config on the toy set in ``data``, and the checkpoint's raw part exported to
    ``work_dir``/raw_fp32.onnx (overwritten)."""
    os.makedirs(work_dir, exist_ok=True)
    cfg = load_config(config, toy_data_options(data))
    path = osp.join(work_dir, 'raw_fp32.onnx')
    export_onnx(cfg, checkpoint, path, part='raw', force=True)
    return cfg, path
