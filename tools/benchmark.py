"""Inference speed of a detector, or of its backbone: latency (median, p90) and FPS at batch 1.

    python tools/benchmark.py configs/mask_rcnn_vanillanet13_coco.py --compare --check
    python tools/benchmark.py CONFIG CKPT --backbone-only --deploy --shape 800 1216 --out r.json

Times the whole ``test_step`` (preprocessing, forward, post-processing) as MMDetection users
read FPS, or with --backbone-only the backbone (--with-neck: and the neck) on the preprocessed
tensor; data loading is excluded. Without a checkpoint the weights are random (with non-trivial
BN statistics, so --check is meaningful); speed does not depend on them. Without --dataset the
input is one generated image of --shape, padded to 32 as the test pipeline would.
"""
import argparse
import copy
import importlib.metadata
import importlib.util
import json

import torch
from mmdet.utils import register_all_modules
from mmengine.config import DictAction
from mmengine.runner import Runner

from mmdet_vanillanet.deploy.detector import load_config
from mmdet_vanillanet.errors import InputError, deploy_layout_error
from mmdet_vanillanet.models.detector import fuse_detector
from mmdet_vanillanet.models.pretrained import checkpoint_layout
from mmdet_vanillanet.models.series_activation import SeriesActivation
from mmdet_vanillanet.toolkit.benchmark import build_timed_detector
from mmdet_vanillanet.toolkit.cli import force_weights_only_loading, one_line_errors
from mmdet_vanillanet.toolkit.compare import check_fusion
from mmdet_vanillanet.toolkit.complexity import pseudo_batch
from mmdet_vanillanet.toolkit.datasets import check_dataset_paths
from mmdet_vanillanet.toolkit.machine import machine_info, matmul_gflops
from mmdet_vanillanet.toolkit.timing import (
    Settings,
    autocast,
    measure,
    measure_onnxruntime,
    prepare,
)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint', nargs='?', help='weights (default: random)')
    parser.add_argument('--shape', type=int, nargs=2, default=[800, 1333], metavar=('H', 'W'),
                        help='generated input size (default 800 1333, padded to 32)')
    parser.add_argument('--dataset', action='store_true',
                        help="time on the config's test set instead of a generated image")
    parser.add_argument('--backbone-only', action='store_true')
    parser.add_argument('--with-neck', action='store_true', help='with --backbone-only: + neck')
    parser.add_argument('--deploy', action='store_true', help='time the fused network')
    parser.add_argument('--compare', action='store_true',
                        help='time unfused and fused in one run, and their ratio')
    parser.add_argument('--check', action='store_true',
                        help='first confirm that fused and unfused outputs agree')
    parser.add_argument('--iters', type=int, default=10, help='timed images')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--threads', type=int, help='torch CPU threads')
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--precision', choices=['fp32', 'fp16', 'bf16'], default='fp32',
                        help='autocast precision')
    parser.add_argument('--compile', action='store_true', help='torch.compile the backbone')
    parser.add_argument('--act-impl', choices=['auto', 'triton', 'torch'],
                        help="the backbone's act_impl (default: the config's, else 'auto'): "
                        'how the fused network computes its activations')
    parser.add_argument('--backend', choices=['pytorch', 'onnxruntime'], default='pytorch',
                        help='onnxruntime: also time the fused part exported to ONNX in '
                        'onnxruntime (with --backbone-only), beside the PyTorch rows')
    parser.add_argument('--no-progress', action='store_true')
    parser.add_argument('--out', help='write every figure and setting to this JSON file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args()


def inputs(cfg, args):
    """Batches of one image for test_step, prepared before timing (data loading excluded)."""
    if not args.dataset:
        if min(args.shape) < 1:
            raise InputError(f'--shape {args.shape[0]} {args.shape[1]}: height and width must be '
                             f'positive (the detector pads them to multiples of 32)')
        return [pseudo_batch(tuple(args.shape))]
    check_dataset_paths(cfg, ('test_dataloader', ))
    loader_cfg = copy.deepcopy(cfg.test_dataloader)
    loader_cfg.update(batch_size=1, num_workers=0, persistent_workers=False)
    batches = []
    for batch in Runner.build_dataloader(loader_cfg):
        batches.append(batch)
        if len(batches) == args.iters:
            break
    return batches


def main():
    args = parse_args()
    force_weights_only_loading()
    register_all_modules()
    if args.threads:
        torch.set_num_threads(args.threads)
    part = ('neck' if args.with_neck else 'backbone') if args.backbone_only else 'detector'
    with one_line_errors():
        cfg = load_config(args.config, args.cfg_options)
        if args.backend == 'onnxruntime' and not args.backbone_only:
            raise InputError('--backend onnxruntime times the fused backbone (--backbone-only) '
                             'or backbone and neck (--with-neck); decoding detections from '
                             'onnxruntime is not provided yet')
        if args.iters < 1 or args.warmup < 0:
            raise InputError(f'--iters {args.iters} --warmup {args.warmup}: need at least one '
                             f'timed image and no negative warm-up')
        if args.checkpoint and checkpoint_layout(args.checkpoint) == 'deploy':
            if args.compare or args.check:
                raise deploy_layout_error(args.checkpoint, 'be timed or checked against an '
                                          'unfused network (--compare, --check)',
                                          'give the training-mode checkpoint')
            cfg.model.backbone.deploy = True
            args.deploy = True
        elif cfg.model.backbone.get('deploy', False) and (args.compare or args.check):
            raise InputError('--compare and --check need the unfused network, but this '
                             'config builds a fused backbone (model.backbone.deploy=True); '
                             'use the training-mode config')
        if args.act_impl:
            if cfg.model.backbone.type != 'VanillaNet':
                raise InputError(f'--act-impl applies to a VanillaNet backbone; this config '
                                 f'has {cfg.model.backbone.type}')
            cfg.model.backbone.act_impl = args.act_impl
        model = build_timed_detector(cfg, args.checkpoint)
        batches = inputs(cfg, args)
        variants = {}
        if model.backbone.deploy:  # a deploy-layout checkpoint or a deploy=True config
            variants['fused'] = model
            args.deploy = True
        else:
            if args.compare or not args.deploy:
                variants['unfused'] = model
            if args.compare or args.deploy or args.check:
                fused = fuse_detector(model, inplace=False)
                if args.compare or args.deploy:
                    variants['fused'] = fused
        report = dict(config=args.config, checkpoint=args.checkpoint, part=part,
                      settings={k: v for k, v in vars(args).items()
                                if k not in ('config', 'checkpoint', 'cfg_options')},
                      act_impl=getattr(model.backbone, 'act_impl', None),
                      triton=triton_version(), machine=machine_info(args.device), results={})
        if args.check:
            tensor = model.data_preprocessor(batches[0], False)['inputs']
            report['check_max_rel_diff'] = check_fusion(model, fused, tensor)
            print(f'check: fused == unfused (max rel diff {report["check_max_rel_diff"]:.2e})')
        settings = Settings(args.iters, args.warmup, args.device, args.precision,
                            args.channels_last, args.compile, not args.no_progress)
        for name, variant in variants.items():
            print(f'{name}: timing {args.iters} images ...')
            variant = prepare(variant, settings)
            report['results'][name] = measure(variant, batches, part, settings)
            report['results'][name]['activation'] = activation_used(variant, batches, settings)
        if args.backend == 'onnxruntime':
            fused = variants.get('fused') or fuse_detector(model, inplace=False)
            print(f'onnxruntime: exporting and timing {args.iters} images ...')
            report['results']['onnxruntime'] = measure_onnxruntime(
                fused, batches, part, settings, report['results'].get('fused'))
    if part != 'detector':
        rate = matmul_gflops(args.device)
        report['matmul_gflop_s'] = rate
        for result in report['results'].values():
            result['efficiency'] = result['achieved_gflop_s'] / rate
    results = report['results']
    if 'unfused' in results and 'fused' in results:
        report['speedup'] = results['unfused']['median_ms'] / results['fused']['median_ms']
    if 'onnxruntime' in results and 'fused' in results:
        report['onnxruntime_speedup'] = (results['fused']['median_ms']
                                         / results['onnxruntime']['median_ms'])
    print_table(report)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(report, f, indent=2)
        print(f'wrote {args.out}')


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
    header = f'{"":<12}{"median ms":>11}{"p90 ms":>9}{"FPS":>8}{"GFLOPs":>9}{"params M":>10}'
    if 'matmul_gflop_s' in report:
        header += f'{"GFLOP/s":>9}{"of matmul":>11}'
    print(header)
    for name, r in report['results'].items():
        line = (f'{name:<12}{r["median_ms"]:>11.1f}{r["p90_ms"]:>9.1f}{r["fps"]:>8.2f}'
                f'{r["gflops"]:>9.1f}{r["params_m"]:>10.2f}')
        if 'efficiency' in r:
            line += f'{r["achieved_gflop_s"]:>9.1f}{r["efficiency"]:>11.2f}'
        print(line)
    if 'matmul_gflop_s' in report:
        print(f'dense fp32 matmul on this machine: {report["matmul_gflop_s"]:.1f} GFLOP/s')
    if 'speedup' in report:
        print(f'fused is {report["speedup"]:.2f}x faster than unfused')
    if 'onnxruntime_speedup' in report:
        print(f'onnxruntime is {report["onnxruntime_speedup"]:.2f}x faster than PyTorch fused')


if __name__ == '__main__':
    main()
