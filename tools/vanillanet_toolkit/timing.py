"""Timing inference as MMDetection users read FPS: per-image latency at batch 1 after warm-up,
with the device synchronised around every call, data loading excluded. Variants timed in one
run alternate, round by round, and are compared by their per-round ratios (``compare``): on a
shared machine a burst of load falls on all of them alike. Shared by tools/benchmark.py and the
comparison scripts in benchmarks/."""
import contextlib
import dataclasses
import itertools
import math
import os.path as osp
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from mmengine.analysis import get_model_complexity_info
from mmengine.utils import ProgressBar

from mmdet_vanillanet.deploy import onnx_export, quantize

from .complexity import detector_complexity, traceable_activations

# The confidence of the interval around the median per-round ratio that a verdict needs.
CONFIDENCE = 0.95
# What pytorch_call gives of a part: the same for its onnxruntime file.
COMPLEXITY = ('gflops', 'params_m', 'input_shape')


def synchronize(device: str):
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def autocast(device: str, precision: str):
    """fp32 as is; fp16/bf16 through torch.autocast on the device's type."""
    if precision == 'fp32':
        return contextlib.nullcontext()
    dtype = dict(fp16=torch.float16, bf16=torch.bfloat16)[precision]
    return torch.autocast(device.split(':')[0], dtype=dtype)


@dataclass
class Call:
    """One thing to time: ``fn`` on ``device``, under autocast for ``precision`` (entered per
    call, as MMEngine's test loop does per image), the device synchronised after it."""
    fn: Callable[[], object]
    device: str = 'cpu'
    precision: str = 'fp32'

    def __call__(self):
        with autocast(self.device, self.precision):
            self.fn()
        synchronize(self.device)


@torch.no_grad()
def time_rounds(calls: Dict[str, Call], rounds: int, warmup: int,
                progress: bool = True) -> Dict[str, List[float]]:
    """Seconds of each of ``calls`` in each of ``rounds`` rounds, after ``warmup`` untimed calls
    of each. A round calls each once, in turn, in the reverse order every other round, so that
    the machine's load and any drift fall on every call alike."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    names = list(calls)
    seconds = {name: [] for name in names}
    bar = ProgressBar(rounds) if progress else None
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            calls[name]()
            seconds[name].append(time.perf_counter() - start)
        if bar is not None:
            bar.update()
    if bar is not None:
        print()
    return seconds


def time_call(fn: Callable[[], object], iters: int, warmup: int, device: str = 'cpu',
              precision: str = 'fp32', progress: bool = True) -> List[float]:
    """Seconds per call of ``fn``, ``iters`` times after ``warmup`` untimed calls."""
    return time_rounds({'': Call(fn, device, precision)}, iters, warmup, progress)['']


def summarize(latencies: List[float]) -> Dict[str, float]:
    ordered = sorted(latencies)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    median = statistics.median(ordered)
    return dict(median_ms=median * 1e3, p90_ms=p90 * 1e3,
                mean_ms=statistics.fmean(ordered) * 1e3, fps=1.0 / median,
                iters=len(ordered))


def median_interval(values: List[float],
                    confidence: float = CONFIDENCE) -> Optional[Tuple[float, float]]:
    """The narrowest interval of order statistics, the k-th smallest to the k-th largest of
    ``values``, that holds their median with at least ``confidence`` whatever their distribution
    (the sign test's interval: it misses with probability 2 P(Binomial(n, 1/2) < k)); None
    where even the smallest to the largest is not sure enough (fewer than 6 values at 95 %)."""
    n, ordered, interval = len(values), sorted(values), None
    for k in range(1, n // 2 + 1):
        if 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2 ** n < confidence:
            break
        interval = ordered[k - 1], ordered[n - k]
    return interval


def rounds_needed(confidence: float = CONFIDENCE) -> int:
    """The fewest rounds whose median has an interval (``median_interval``): 6 at 95 %."""
    return next(n for n in itertools.count(1) if median_interval([1.0] * n, confidence))


def compare(baseline: List[float], variant: List[float]) -> dict:
    """How many times faster ``variant`` ran than ``baseline``, from their seconds in the same
    rounds: the median of the per-round ratios, the interval that holds it with CONFIDENCE
    (``median_interval``), and the verdict: 'faster' or 'slower' where that interval lies
    wholly above or below 1, else 'not conclusive' (the rounds disagree by more than the
    difference, or are too few)."""
    ratios = [b / v for b, v in zip(baseline, variant)]
    interval = median_interval(ratios)
    if interval is None or interval[0] <= 1 <= interval[1]:
        verdict = 'not conclusive'
    else:
        verdict = 'faster' if interval[0] > 1 else 'slower'
    low, high = interval or (None, None)
    return dict(median=statistics.median(ratios), low=low, high=high, confidence=CONFIDENCE,
                rounds=len(ratios), verdict=verdict, ratios=ratios)


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


def timed_tensor(model, batches: list, settings: Settings) -> torch.Tensor:
    """The preprocessed first image, as the backbone takes it."""
    tensor = model.data_preprocessor(batches[0], False)['inputs']
    if settings.channels_last:
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    return tensor


def pytorch_call(model, batches: list, part: str, settings: Settings) -> Tuple[Call, dict]:
    """The call running ``part`` of ``model`` ('detector': the whole test_step, on the batches
    in turn; 'backbone'; 'neck': backbone and neck) on batches of one image, and the part's
    complexity (GFLOPs, millions of parameters, input shape)."""
    tensor = timed_tensor(model, batches, settings)
    with uncompiled(model):
        if part == 'detector':
            complexity = detector_complexity(model, tuple(tensor.shape[-2:]))
        else:
            counted = timed_module(model, part)
            with traceable_activations(counted):
                complexity = get_model_complexity_info(counted, inputs=(tensor, ),
                                                       show_table=False, show_arch=False)
    if part == 'detector':
        cursor = itertools.cycle(batches)
        fn = lambda: model.test_step(next(cursor))  # noqa: E731
    else:
        timed = timed_module(model, part)
        fn = lambda: timed(tensor)  # noqa: E731
    return Call(fn, settings.device, settings.precision), dict(
        gflops=complexity['flops'] / 1e9, params_m=complexity['params'] / 1e6,
        input_shape=list(tensor.shape[-2:]))


def measure_all(calls: Dict[str, Tuple[Call, dict]], settings: Settings) -> Dict[str, dict]:
    """Each call's latency (``time_rounds``: all of them in alternating rounds) with its
    complexity and achieved rate; the per-round milliseconds as ``round_ms``."""
    seconds = time_rounds({name: call for name, (call, _) in calls.items()}, settings.iters,
                          settings.warmup, settings.progress)
    results = {}
    for name, (_, complexity) in calls.items():
        result = results[name] = dict(summarize(seconds[name]), **complexity,
                                      round_ms=[s * 1e3 for s in seconds[name]])
        result['achieved_gflop_s'] = achieved_gflop_s(result)
    return results


def measure(model, batches: list, part: str, settings: Settings) -> dict:
    """Latency and complexity of ``part`` of one model (``pytorch_call``), timed alone."""
    return measure_all({'': pytorch_call(model, batches, part, settings)}, settings)['']


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


def onnxruntime_calls(fused, batches: list, part: str, settings: Settings, folder: str,
                      int8: bool = False) -> Dict[str, Call]:
    """The fused part exported to ONNX into ``folder`` and run in onnxruntime with the same
    threads ('onnxruntime'), and with ``int8`` its INT8 version ('onnxruntime_int8':
    tools/quantize_onnx.py's default recipe, calibrated on the timed input: speed does not
    depend on the calibration images). ``fused`` is moved to the CPU for the export."""
    module = onnx_export.ExportedPart(fused.cpu(), part).eval()
    tensor = fused.data_preprocessor(batches[0], False)['inputs'].cpu()
    files = {'onnxruntime': osp.join(folder, f'{part}.onnx')}
    with uncompiled(fused):
        onnx_export.export(module, files['onnxruntime'], tuple(tensor.shape[-2:]))
    if int8:
        # What quantization reads (a file only timed: no weights, no classes recorded).
        onnx_export.write_metadata(files['onnxruntime'], module, checkpoint=None, classes=())
        files['onnxruntime_int8'] = osp.join(folder, f'{part}_int8.onnx')
        quantize.quantize_on_inputs(files['onnxruntime'], files['onnxruntime_int8'],
                                    [tensor.numpy()], calibration='the timed input')
    return {name: session_call(path, tensor, settings.device) for name, path in files.items()}


def session_call(path: str, tensor: torch.Tensor, device: str) -> Call:
    """One run of the ONNX file ``path`` on ``tensor`` in onnxruntime (its own threads
    synchronise: the call returns with the result)."""
    session = onnx_export.onnxruntime_session(path, device, torch.get_num_threads())
    array = tensor.numpy()
    return Call(lambda: session.run(None, {'input': array}))


def measure_onnxruntime(fused, batches, part, settings, fused_result=None, int8=False) -> dict:
    """``onnxruntime_calls`` timed alone (in a temporary folder), with the FLOPs and parameters
    of the fused PyTorch part (``fused_result``'s, else counted); with ``int8``, the INT8
    file's figures as result['int8']."""
    if fused_result is None:
        cpu = dataclasses.replace(settings, device='cpu', precision='fp32', channels_last=False)
        _, fused_result = pytorch_call(fused.cpu(), batches, part, cpu)
    complexity = dict({key: fused_result[key] for key in COMPLEXITY}, activation='onnxruntime')
    with tempfile.TemporaryDirectory() as tmp:
        calls = onnxruntime_calls(fused, batches, part, settings, tmp, int8)
        results = measure_all({name: (call, complexity) for name, call in calls.items()},
                              settings)
    result = results['onnxruntime']
    if int8:
        result['int8'] = results['onnxruntime_int8']
    return result
