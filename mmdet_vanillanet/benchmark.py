"""Timing inference as MMDetection users read FPS: per-image latency at batch 1 after warm-up,
with the device synchronised around every call, data loading excluded. Shared by
tools/benchmark.py and the comparison scripts in benchmarks/."""
import contextlib
import itertools
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
from mmdet.registry import MODELS
from mmengine.analysis import get_model_complexity_info
from mmengine.runner import load_checkpoint
from mmengine.utils import ProgressBar

from .complexity import detector_complexity
from .errors import InputError
from .synthetic import max_rel_diff, randomize


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


@torch.no_grad()
def matmul_gflops(device: str = 'cpu', iters: int = 5) -> float:
    """The machine's dense fp32 GEMM rate (2 flops per multiply-accumulate): the limit that a
    network of 1x1 convs can approach. The best rate seen over torch.mm and the same GEMM
    written as 1x1 convs of several widths, since they go through different libraries (on an
    AMD EPYC here MKL's torch.mm reached about 220 GFLOP/s and oneDNN's 1x1 conv up to 400)."""
    a = torch.randn(2048, 2048, device=device)
    candidates = [(lambda: a @ a, 2048 ** 3)]
    for n in (1024, 2048, 4096):
        x = torch.randn(1, n, 64, 64, device=device)
        w = torch.randn(n, n, 1, 1, device=device)
        candidates.append((lambda x=x, w=w: torch.nn.functional.conv2d(x, w), n * n * 64 * 64))
    return max(2 * macs / min(time_call(fn, iters, 1, device, progress=False)) / 1e9
               for fn, macs in candidates)


def machine_info(device: str = 'cpu') -> dict:
    info = dict(platform=platform.platform(), processor=platform.processor() or None,
                cpu_count=os.cpu_count(), torch=torch.__version__,
                threads=torch.get_num_threads(), device=device)
    if device.startswith('cuda'):
        info['gpu'] = torch.cuda.get_device_name()
    else:
        with contextlib.suppress(OSError):
            with open('/proc/cpuinfo') as f:
                names = [line.split(':', 1)[1].strip() for line in f
                         if line.startswith('model name')]
            info['cpu'] = names[0] if names else None
    return info


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


def build_detector(cfg, checkpoint: Optional[str] = None):
    """The config's detector in eval mode, with the checkpoint's weights or random ones (BN
    statistics far from identity, so that a fusion check means something)."""
    if cfg.model.backbone.get('init_cfg'):
        cfg.model.backbone.init_cfg = None  # no download: the weights come from below
    if not checkpoint:
        # Random weights give an arbitrary number of detections, and post-processing (mask
        # pasting above all) grows with it. Without a score threshold every detector returns
        # its full max_per_img, as on a busy image, so that detectors compare on equal work.
        test_cfg = cfg.model.test_cfg
        (test_cfg.rcnn if 'rcnn' in test_cfg else test_cfg).score_thr = 0.0
    model = MODELS.build(cfg.model)
    if checkpoint:
        load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    else:
        randomize(model.backbone)
    return model.eval()


def check_fusion(unfused, fused, tensor, tolerance: float = 1e-4) -> float:
    """Relative difference of the fused backbone's outputs; an error when it is off."""
    with torch.no_grad():
        diff = max_rel_diff(unfused.backbone(tensor), fused.backbone(tensor))
    if not diff <= tolerance:
        raise InputError(f'--check: the fused backbone differs from the unfused one by {diff:.3g} '
                         f'of the output magnitude (tolerance {tolerance}); the fusion is '
                         f'broken, so its timings would mean nothing')
    return diff


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
        complexity = detector_complexity(model, tuple(tensor.shape[-2:]))
    else:
        module = model.backbone if part == 'backbone' else torch.nn.Sequential(model.backbone,
                                                                               model.neck)
        fn = lambda: module(tensor)  # noqa: E731
        complexity = get_model_complexity_info(module, inputs=(tensor, ), show_table=False,
                                               show_arch=False)
    result = summarize(time_call(fn, settings.iters, settings.warmup, settings.device,
                                 settings.precision, settings.progress))
    result.update(gflops=complexity['flops'] / 1e9, params_m=complexity['params'] / 1e6,
                  input_shape=list(tensor.shape[-2:]))
    # FLOPs count multiply-accumulates (the convention of the published figures); the achieved
    # rate counts two flops per MAC, like the matrix-multiply reference.
    result['achieved_gflop_s'] = 2 * result['gflops'] / (result['median_ms'] / 1e3)
    return result
