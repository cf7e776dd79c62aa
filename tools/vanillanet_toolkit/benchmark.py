"""tools/benchmark.py's work: the request checked against the config and checkpoint, the
detector and inputs it times, the variants (unfused, fused, onnxruntime), the fusion check, and
the report (every figure and setting, each comparison's verdict, the table printed).

Times the whole ``test_step`` (preprocessing, forward, post-processing) as MMDetection users
read FPS, or the backbone (with the neck) on the preprocessed tensor; data loading is excluded.
The variants are timed in alternating rounds and compared round by round
(``timing.compare``): a verdict ('faster', 'slower') only where the rounds agree, else 'not
conclusive'.
``options`` is the tool's parsed command line (tools/benchmark.py --help names each field).
"""
import copy
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import re
import tempfile
from typing import Dict, Optional, Tuple

import torch
from mmengine.runner import Runner

from mmdet_runsafe.config import load_config
from mmdet_runsafe.datasets import check_dataset_paths
from mmdet_runsafe.errors import InputError
from mmdet_runsafe.output_paths import check_new_output_file, write_text
from mmdet_runsafe.units import readable
from mmdet_vanillanet.deploy.build import build_detector
from mmdet_vanillanet.deploy.equivalence import max_rel_diff
from mmdet_vanillanet.models.checkpoint.backbone_weights import (
    checkpoint_layout,
    deploy_layout_error,
)
from mmdet_vanillanet.models.detector import fuse_detector
from mmdet_vanillanet.models.series_activation import SeriesActivation
from mmdet_vanillanet.ops.activation_kernel import kernel_checks

from .complexity import check_input_memory, counter_warnings, pseudo_batch
from .machine import machine_info, matmul_gflops
from .timing import (
    COMPLEXITY,
    Settings,
    autocast,
    compare,
    measure_all,
    onnxruntime_calls,
    prepare,
    pytorch_call,
    rounds_needed,
)

# What the report's settings leave out: they are its own fields, or the config's.
NOT_SETTINGS = ('config', 'checkpoint', 'cfg_options')


def build_timed_detector(cfg, checkpoint: Optional[str] = None):
    """The config's detector in eval mode as deployment builds it (``build_detector``), with
    every detector doing the same work without a checkpoint. ``cfg`` is left as it was."""
    if not checkpoint:
        # Random weights give an arbitrary number of detections, and post-processing (mask
        # pasting above all) grows with it. Without a score threshold every detector returns
        # its full max_per_img, as on a busy image, so that detectors compare on equal work.
        cfg = copy.deepcopy(cfg)
        test_cfg = cfg.model.test_cfg
        (test_cfg.rcnn if 'rcnn' in test_cfg else test_cfg).score_thr = 0.0
    return build_detector(cfg, checkpoint)


def timed_part(options) -> str:
    """'detector' (the whole test_step), 'backbone' or 'neck' (backbone and neck)."""
    if not options.backbone_only:
        return 'detector'
    return 'neck' if options.with_neck else 'backbone'


def check_machine_request(options):
    """--out, --threads, --device and --precision against this machine and build, before any
    work (a bad --out was found only after the whole run, and lost its figures)."""
    if options.out:
        # As tools/test.py --out: a report is not overwritten.
        check_new_output_file(options.out, '--out', inputs=(options.config, options.checkpoint))
    if options.threads is not None and options.threads < 1:
        raise InputError(f'--threads {options.threads}: give a number of threads >= 1 (this '
                         f'machine has {os.cpu_count()} cores)')
    if not re.fullmatch(r'cpu|cuda(:\d+)?', options.device):
        raise InputError(f'--device {options.device}: choose cpu, cuda or cuda:N')
    if options.device.startswith('cuda') and not torch.cuda.is_available():
        raise InputError(f'--device {options.device}: this PyTorch build or machine has no CUDA '
                         f'(torch {torch.__version__}); use --device cpu')
    if options.device == 'cpu' and options.precision != 'fp32' and not options.backbone_only:
        raise InputError(f'--precision {options.precision} on the CPU: MMDetection\'s CPU '
                         f'post-processing (mmcv nms) takes fp32 only; time the whole detector '
                         f'in fp32, or the backbone alone (--backbone-only) in '
                         f'{options.precision}')


def check_request(cfg, options):
    """The flags against each other, the config and the checkpoint, before anything is built. A
    deploy-layout checkpoint (or a deploy=True config) makes the run a deployed one: the config
    builds the fused backbone, and ``options.deploy`` says so in the report."""
    check_machine_request(options)
    if options.backend == 'onnxruntime' and not options.backbone_only:
        raise InputError('--backend onnxruntime times the fused backbone (--backbone-only) '
                         'or backbone and neck (--with-neck); decoding detections from '
                         'onnxruntime is not provided yet')
    if options.int8 and options.backend != 'onnxruntime':
        raise InputError('--int8 times the INT8 file in onnxruntime: add --backend onnxruntime')
    if options.iters < 1 or options.warmup < 0:
        raise InputError(f'--iters {options.iters} --warmup {options.warmup}: need at least '
                         f'one timed image and no negative warm-up')
    if options.compile and options.warmup < 1:
        raise InputError('--compile --warmup 0: the first call compiles the backbone, and would '
                         'be timed; give --warmup 1 or more')
    if options.checkpoint and checkpoint_layout(options.checkpoint) == 'deploy':
        if options.compare or options.check:
            raise deploy_layout_error(options.checkpoint, 'be timed or checked against an '
                                      'unfused network (--compare, --check)',
                                      'give the training-mode checkpoint')
        cfg.model.backbone.deploy = True
        options.deploy = True
    elif cfg.model.backbone.get('deploy', False) and (options.compare or options.check):
        raise InputError('--compare and --check need the unfused network, but this '
                         'config builds a fused backbone (model.backbone.deploy=True); '
                         'use the training-mode config')
    if options.act_impl:
        if cfg.model.backbone.type != 'VanillaNet':
            raise InputError(f'--act-impl applies to a VanillaNet backbone; this config '
                             f'has {cfg.model.backbone.type}')
        if not (options.deploy or options.compare or cfg.model.backbone.get('deploy', False)):
            raise InputError(f'--act-impl {options.act_impl} chooses how the fused network '
                             f'computes its activations; the unfused one timed here always runs '
                             f'PyTorch: add --deploy (or --compare)')
        cfg.model.backbone.act_impl = options.act_impl


def benchmark_inputs(cfg, model, options) -> list:
    """Batches of one image for test_step, prepared before timing (data loading excluded): one
    generated image of ``options.shape`` (refused from ``model``'s memory estimate before it is
    made), or the config's test set (``options.dataset``)."""
    if not options.dataset:
        check_input_memory(model, tuple(options.shape))
        return [pseudo_batch(tuple(options.shape))]
    check_dataset_paths(cfg, ('test_dataloader', ))
    loader_cfg = copy.deepcopy(cfg.test_dataloader)
    loader_cfg.update(batch_size=1, num_workers=0, persistent_workers=False)
    batches = []
    for batch in Runner.build_dataloader(loader_cfg):
        batches.append(batch)
        if len(batches) == options.iters:
            break
    return batches


def variants(model, options) -> Tuple[Dict[str, torch.nn.Module], Optional[torch.nn.Module]]:
    """The networks to time by name ('unfused', 'fused'), and the fused one (for --check, timed
    or not). A model built fused (deploy checkpoint or config) is timed as it is."""
    if model.backbone.deploy:  # a deploy-layout checkpoint or a deploy=True config
        options.deploy = True
        return {'fused': model}, model
    timed, fused = {}, None
    if options.compare or not options.deploy:
        timed['unfused'] = model
    if options.compare or options.deploy or options.check:
        fused = fuse_detector(model, inplace=False)
        if options.compare or options.deploy:
            timed['fused'] = fused
    return timed, fused


def check_fusion(unfused, fused, tensor, tolerance: float = 1e-4) -> float:
    """--check: the fused backbone's outputs against the unfused one's, before any timing; an
    error when they differ by more than ``tolerance`` of their magnitude."""
    with torch.no_grad():
        diff = max_rel_diff(unfused.backbone(tensor), fused.backbone(tensor))
    if not diff <= tolerance:
        raise InputError(f'--check: the fused backbone differs from the unfused one by {diff:.3g} '
                         f'of the output magnitude (tolerance {tolerance}); the fusion is '
                         f'broken, so its timings would mean nothing')
    return diff


def run_benchmark(options) -> dict:
    """Time the variants ``options`` asks for; the report (results, comparisons, settings,
    machine)."""
    cfg = load_config(options.config, options.cfg_options)
    check_request(cfg, options)
    if options.threads:
        torch.set_num_threads(options.threads)
    model = build_timed_detector(cfg, options.checkpoint)
    batches = benchmark_inputs(cfg, model, options)
    timed, fused = variants(model, options)
    part = timed_part(options)
    report = dict(config=options.config, checkpoint=options.checkpoint, part=part,
                  settings={k: v for k, v in vars(options).items() if k not in NOT_SETTINGS},
                  act_impl=getattr(model.backbone, 'act_impl', None),
                  triton=triton_version(), machine=machine_info(options.device))
    if options.check:
        tensor = model.data_preprocessor(batches[0], False)['inputs']
        report['check_max_rel_diff'] = check_fusion(model, fused, tensor)
        print(f'check: fused == unfused (max rel diff {report["check_max_rel_diff"]:.2e})')
    settings = Settings(options.iters, options.warmup, options.device, options.precision,
                        options.channels_last, options.compile, not options.no_progress)
    with tempfile.TemporaryDirectory() as folder, counter_warnings(options.verbose):
        calls, onnx = {}, {}
        if options.backend == 'onnxruntime':  # exported from the CPU, before it is prepared
            print(f'onnxruntime: exporting{", quantizing" if options.int8 else ""} ...')
            if fused is None:
                fused = fuse_detector(model, inplace=False)
            onnx = onnxruntime_calls(fused, batches, part, settings, folder, options.int8)
        activations = {}
        for name, variant in timed.items():
            variant = prepare(variant, settings)
            calls[name] = pytorch_call(variant, batches, part, settings)
            activations[name] = activation_used(variant, batches, settings)
        if onnx:
            cpu = dataclasses.replace(settings, device='cpu', precision='fp32',
                                      channels_last=False)
            fused_part = (calls['fused'] if 'fused' in calls
                          else pytorch_call(fused, batches, part, cpu))[1]
            complexity = {key: fused_part[key] for key in COMPLEXITY}
            calls.update({name: (call, complexity) for name, call in onnx.items()})
            activations.update({name: 'onnxruntime' for name in onnx})
        print(f'timing {", ".join(calls)}: {options.iters} rounds'
              + (' (alternating)' if len(calls) > 1 else '') + ' ...')
        report['results'] = measure_all(calls, settings)
    for name, activation in activations.items():
        report['results'][name]['activation'] = activation
    # What the kernel's run-time check found for each variant timed above: a figure of a
    # kernel that failed its check is PyTorch's (under 'auto'), and the report must say so.
    report['kernel_checks'] = kernel_checks()
    add_rates(report, options.device)
    return report


# Each comparison's report key: the variant, its baseline, and how the table names them.
COMPARISONS = {'speedup': ('fused', 'unfused', 'fused', 'unfused'),
               'onnxruntime_speedup': ('onnxruntime', 'fused', 'onnxruntime', 'PyTorch fused'),
               'int8_speedup': ('onnxruntime_int8', 'onnxruntime', 'onnxruntime INT8',
                                'onnxruntime fp32')}


def add_rates(report: dict, device: str):
    """The backbone's share of the machine's matrix-product rate, and each comparison of two
    variants timed (``timing.compare`` of their per-round times)."""
    if report['part'] != 'detector':
        rate = matmul_gflops(device)
        report['matmul_gflop_s'] = rate
        for result in report['results'].values():
            result['efficiency'] = result['achieved_gflop_s'] / rate
    results = report['results']
    for key, (variant, baseline, _, _) in COMPARISONS.items():
        if variant in results and baseline in results:
            report[key] = compare(results[baseline]['round_ms'], results[variant]['round_ms'])


def write_report(report: dict, out: str):
    """The report as JSON into ``out``, a new file (never over one that appeared meanwhile)."""
    write_text(out, json.dumps(report, indent=2))


def times(ratio: float) -> str:
    """'2.38x faster' or, below 1, '1.45x slower' ('0.69x faster' misread)."""
    return f'{ratio:.2f}x faster' if ratio >= 1 else f'{1 / ratio:.2f}x slower'


def verdict_line(comparison: dict, variant: str, baseline: str) -> str:
    """What ``timing.compare`` found, in words: the verdict with the speed ratio (the median over
    the rounds of the baseline's time over the variant's) and the interval that holds it, or
    'not conclusive' and why."""
    rounds, median = comparison['rounds'], comparison['median']
    if comparison['low'] is None:
        return (f'{variant} against {baseline}: not conclusive ({rounds} rounds give no '
                f'{comparison["confidence"]:.0%} interval for the median speed ratio '
                f'({median:.2f} here); time {rounds_needed(comparison["confidence"])} or more '
                f'with --iters)')
    interval = (f'median of {rounds} rounds; {comparison["confidence"]:.0%} interval '
                f'{comparison["low"]:.2f} to {comparison["high"]:.2f}')
    if comparison['verdict'] == 'not conclusive':
        return (f'{variant} against {baseline}: not conclusive (speed ratio {median:.2f}, '
                f'{interval}, which holds 1: the rounds disagree by more than '
                f'the difference; time more rounds with --iters, or on a quieter machine)')
    return f'{variant} is {times(median)} than {baseline} (speed ratio {median:.2f}, {interval})'


def triton_version():
    spec = importlib.util.find_spec('triton')
    return importlib.metadata.version('triton') if spec else None


def activation_used(model, batches, settings) -> str:
    """What the backbone's activations ran on this input ('triton' or 'torch (why)')."""
    acts = [m for m in model.backbone.modules() if isinstance(m, SeriesActivation)]
    if not acts:
        return 'n/a'
    tensor = model.data_preprocessor(batches[0], False)['inputs']
    if settings.channels_last:
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), autocast(settings.device, settings.precision):
        return acts[0].implementation_for(tensor)


def print_table(report):
    m = report['machine']
    print(f"\n{report['config']} [{report['part']}] on {m.get('gpu') or m.get('cpu')}, "
          f"torch {m['torch']}, {m['threads']} threads, act_impl {report['act_impl']}")
    header = f'{"":<17}{"median ms":>11}{"p90 ms":>9}{"FPS":>8}{"FLOPs":>9}{"params":>10}'
    if 'matmul_gflop_s' in report:
        header += f'{"GFLOP/s":>9}{"of matmul":>11}'
    print(header)
    for name, r in report['results'].items():
        line = (f'{name:<17}{r["median_ms"]:>11.1f}{r["p90_ms"]:>9.1f}{r["fps"]:>8.2f}'
                f'{readable(r["gflops"] * 1e9):>9}{readable(r["params_m"] * 1e6):>10}')
        if 'efficiency' in r:
            line += f'{r["achieved_gflop_s"]:>9.3g}{r["efficiency"]:>11.3g}'
        print(line)
    if 'matmul_gflop_s' in report:
        print(f'dense fp32 matmul on this machine: {report["matmul_gflop_s"]:.1f} GFLOP/s')
    for key, (_, _, variant, baseline) in COMPARISONS.items():
        if key in report:
            print(verdict_line(report[key], variant, baseline))
    for variant, check in report.get('kernel_checks', {}).items():
        print(f'activation kernel {variant}: ' + (
            f'FAILED its check ({check["failure"]}), PyTorch ran instead' if check['failure']
            else f'checked against PyTorch (max rel err {check["max_rel_err"]:.1e})'))
