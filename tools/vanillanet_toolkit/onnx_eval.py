"""COCO AP of an exported raw file (fp32 or INT8), what onnxruntime really runs of a file, and
the toy model's raw file they start from: the INT8 measurements of benchmarks/ and the INT8
tests'."""
import collections
import copy
import os
import os.path as osp
import secrets
import tempfile
from typing import Dict, Optional, Tuple

from mmengine.config import Config

from mmdet_runsafe.config import load_config
from mmdet_vanillanet.deploy.onnx_export import export_onnx, onnx_packages

from .demo import toy_data_options
from .runs import build_test_runner


def onnx_coco_ap(cfg: Config, onnx_file: str, checkpoint: Optional[str],
                 threads: Optional[int] = None,
                 work_dir: Optional[str] = None) -> Dict[str, float]:
    """Box and mask AP ('box', 'mask'; 0 where CocoMetric finds no detection) of the file on
    the config's test split: what ``tools/test.py CONFIG FILE.onnx --checkpoint CKPT``
    prints, from the same Runner (in ``work_dir``, else a temporary folder)."""
    cfg = copy.deepcopy(cfg)
    # A logger and a visualizer are one per name in a process (the configs name the visualizer
    # 'visualizer'): a second Runner would write into the first one's (deleted) folder.
    cfg.experiment_name = f'onnx_test_{secrets.token_hex(4)}'
    if cfg.get('visualizer'):
        cfg.visualizer.name = cfg.experiment_name
    with tempfile.TemporaryDirectory() as tmp:
        metrics = build_test_runner(cfg, onnx_file, work_dir=work_dir or tmp,
                                    onnx_checkpoint=checkpoint, threads=threads).test()
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
    raw_fp32.onnx in a new folder of the run's own in ``work_dir`` (``run_XXXXXXXX``, where the
    caller writes its other files): a file of the user's in ``work_dir`` is never replaced."""
    os.makedirs(work_dir, exist_ok=True)
    cfg = load_config(config, toy_data_options(data))
    path = osp.join(tempfile.mkdtemp(prefix='run_', dir=work_dir), 'raw_fp32.onnx')
    export_onnx(cfg, checkpoint, path, part='raw')
    return cfg, path
