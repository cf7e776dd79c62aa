"""Timing inference as MMDetection users read FPS: per-image latency at batch 1 after warm-up,
with the device synchronised around every call, data loading excluded. Shared by
tools/benchmark.py and the comparison scripts in benchmarks/."""
import contextlib
import dataclasses
import itertools
import os.path as osp
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Dict, List

import torch
from mmengine.analysis import get_model_complexity_info
from mmengine.utils import ProgressBar

from ..deploy import onnx_export, quantize
from .complexity import detector_complexity, traceable_activations


def synchronize(device: str):
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def autocast(device: str, precision: str):
    """fp32 as is; fp16/bf16 through torch.autocast on the device's type."""
    if precision == 'fp32':
        return contextlib.nullcontext()
    dtype = dict(fp16=torch.float16, bf16=torch.bfloat16)[precision]
    return torch.autocast(device.split(':')[0], dtype=dtype)


@torch.no_grad()
def time_call(fn: Callable[[], object], iters: int, warmup: int, device: str = 'cpu',
              precision: str = 'fp32', progress: bool = True) -> List[float]:
    """Seconds per call of ``fn``, ``iters`` times after ``warmup`` untimed calls."""
    with autocast(device, precision):
        for _ in range(warmup):
            fn()
        synchronize(device)
        bar = ProgressBar(iters) if progress else None
        latencies = []
        for _ in range(iters):
            start = time.perf_counter()
            fn()
            synchronize(device)
            latencies.append(time.perf_counter() - start)
            if bar is not None:
                bar.update()
        if bar is not None:
            print()
    return latencies


def summarize(latencies: List[float]) -> Dict[str, float]:
    ordered = sorted(latencies)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    median = statistics.median(ordered)
    return dict(median_ms=median * 1e3, p90_ms=p90 * 1e3,
                mean_ms=statistics.fmean(ordered) * 1e3, fps=1.0 / median,
                iters=len(ordered))


@dataclass
class Settings:
    """How to time: what the command-line flags of tools/benchmark.py set."""
    iters: int = 10
    warmup: int = 2
    device: str = 'cpu'
    precision: str = 'fp32'
    channels_last: bool = False
    compile: bool = False
    progress: bool = True


def prepare(model, settings: Settings):
    model = model.to(settings.device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if settings.compile:
        model.backbone = torch.compile(model.backbone)
    return model


def measure(model, batches: list, part: str, settings: Settings) -> dict:
    """Latency and complexity of ``part`` ('detector': the whole test_step; 'backbone';
    'neck': backbone and neck) on batches of one image."""
    tensor = model.data_preprocessor(batches[0], False)['inputs']
    if settings.channels_last:
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    if part == 'detector':
        cursor = itertools.cycle(batches)
        fn = lambda: model.test_step(next(cursor))  # noqa: E731
        with uncompiled(model):
            complexity = detector_complexity(model, tuple(tensor.shape[-2:]))
    else:
        timed = timed_module(model, part)
        fn = lambda: timed(tensor)  # noqa: E731
        with uncompiled(model):
            counted = timed_module(model, part)
            with traceable_activations(counted):
                complexity = get_model_complexity_info(counted, inputs=(tensor, ),
                                                       show_table=False, show_arch=False)
    result = summarize(time_call(fn, settings.iters, settings.warmup, settings.device,
                                 settings.precision, settings.progress))
    result.update(gflops=complexity['flops'] / 1e9, params_m=complexity['params'] / 1e6,
                  input_shape=list(tensor.shape[-2:]))
    result['achieved_gflop_s'] = achieved_gflop_s(result)
    return result


def timed_module(model, part: str) -> torch.nn.Module:
    """The backbone ('backbone'), or backbone and neck ('neck'), of ``model``."""
    return model.backbone if part == 'backbone' else torch.nn.Sequential(model.backbone,
                                                                         model.neck)


@contextlib.contextmanager
def uncompiled(model):
    """``model`` with the backbone that --compile wrapped (``prepare``) unwrapped: the FLOPs
    count and the ONNX export trace the module, and a trace cannot enter torch.compile's
    wrapper."""
    backbone = model.backbone
    model.backbone = getattr(backbone, '_orig_mod', backbone)
    try:
        yield model
    finally:
        model.backbone = backbone


def achieved_gflop_s(result: dict) -> float:
    """FLOPs count multiply-accumulates (the convention of the published figures); the achieved
    rate counts two flops per MAC, like the matrix-multiply reference."""
    return 2 * result['gflops'] / (result['median_ms'] / 1e3)


def measure_onnxruntime(fused, batches, part, settings, fused_result, int8=False) -> dict:
    """The fused part exported to ONNX (in a temporary folder) and timed in onnxruntime with
    the same threads; FLOPs and parameters are the fused PyTorch part's. With ``int8``, its
    INT8 version (tools/quantize_onnx.py's default recipe, calibrated on the timed input:
    speed does not depend on the calibration images) is timed next, in the same session
    settings, as result['int8']."""
    if fused_result is None:  # before the model moves to the CPU for the export
        once = dataclasses.replace(settings, iters=1, warmup=0, progress=False)
        fused_result = measure(fused, batches, part, once)
    module = onnx_export.ExportedPart(fused.cpu(), part).eval()
    tensor = fused.data_preprocessor(batches[0], False)['inputs'].cpu()
    with tempfile.TemporaryDirectory() as tmp, uncompiled(fused):
        path = osp.join(tmp, f'{part}.onnx')
        onnx_export.export(module, path, tuple(tensor.shape[-2:]))
        result = time_onnx_file(path, tensor, settings, fused_result)
        if int8:
            # What quantization reads (a file only timed: no weights, no classes recorded).
            onnx_export.write_metadata(path, module, checkpoint=None, classes=())
            int8_path = osp.join(tmp, f'{part}_int8.onnx')
            quantize.quantize_on_inputs(path, int8_path, [tensor.numpy()],
                                        calibration='the timed input')
            result['int8'] = time_onnx_file(int8_path, tensor, settings, fused_result)
    return result


def time_onnx_file(path, tensor, settings, fused_result) -> dict:
    session = onnx_export.onnxruntime_session(path, settings.device, torch.get_num_threads())
    array = tensor.numpy()
    result = summarize(time_call(lambda: session.run(None, {'input': array}), settings.iters,
                                 settings.warmup, 'cpu', progress=settings.progress))
    result.update(gflops=fused_result['gflops'], params_m=fused_result['params_m'],
                  input_shape=list(tensor.shape[-2:]), activation='onnxruntime')
    result['achieved_gflop_s'] = achieved_gflop_s(result)
    return result
