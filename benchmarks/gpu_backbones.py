"""VanillaNet backbones on a CUDA device with torch alone (no mmcv ops needed): batch 1,
224x224 and 800x1344, unfused and fused, fp32 and fp16 (autocast), channels_last for the fused
network; a torchvision ResNet-50 for reference when torchvision is there.

    python benchmarks/gpu_backbones.py --out-dir benchmarks/results    # about 3 minutes

Writes gpu_backbones.{json,md}; the card's name is in both.
"""
import argparse
import copy
import json
import os
import os.path as osp

import torch
from mmdet_vanillanet.benchmark import machine_info, matmul_gflops, summarize, time_call
from mmdet_vanillanet.models import VanillaNet
from mmdet_vanillanet.synthetic import randomize

SIZES = [(224, 224), (800, 1344)]
ARCHS = [('13', 4), ('5', 3)]


def variants(arch, act_num):
    # The class itself, not the registry: the registry would import all of mmdet.models,
    # which needs mmcv's compiled ops.
    unfused = randomize(VanillaNet(arch=arch, act_num=act_num)).eval()
    fused = copy.deepcopy(unfused)
    fused.switch_to_deploy()
    fused_cl = copy.deepcopy(fused).to(memory_format=torch.channels_last)
    return dict(unfused=unfused, fused=fused, fused_channels_last=fused_cl)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out-dir', default=os.environ.get('OUT', 'benchmarks/results'))
    parser.add_argument('--iters', type=int, default=50)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    device = 'cuda'
    rows = []
    models = {f'VanillaNet-{a} (act_num {n})': variants(a, n) for a, n in ARCHS}
    try:
        import torchvision
        models['ResNet-50 (torchvision)'] = dict(
            reference=torchvision.models.resnet50().eval())
    except ImportError:
        pass
    for name, modes in models.items():
        for mode, model in modes.items():
            model = model.to(device)
            for h, w in SIZES:
                x = torch.randn(1, 3, h, w, device=device)
                if 'channels_last' in mode:
                    x = x.contiguous(memory_format=torch.channels_last)
                for precision in ('fp32', 'fp16'):
                    iters = args.iters if h < 500 else max(10, args.iters // 2)
                    result = summarize(time_call(lambda: model(x), iters, 10, device, precision,
                                                 progress=False))
                    rows.append(dict(model=name, mode=mode, shape=[h, w], precision=precision,
                                     **result))
                    print(f'{name:<26}{mode:<22}{h}x{w:<6}{precision:<6}'
                          f'{result["median_ms"]:8.2f} ms', flush=True)
            model.cpu()
    report = dict(machine=machine_info(device), matmul_fp32_gflop_s=matmul_gflops(device),
                  rows=rows)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(osp.join(args.out_dir, 'gpu_backbones.json'), 'w') as f:
        json.dump(report, f, indent=2)
    with open(osp.join(args.out_dir, 'gpu_backbones.md'), 'w') as f:
        f.write(markdown(report))
    print(markdown(report))


def markdown(report) -> str:
    m = report['machine']
    lines = [f'Backbones alone on {m["gpu"]}, torch {m["torch"]}, batch 1, median latency in ms '
             f'(cudnn.benchmark, synchronised, after 10 warm-up calls); random weights. Command: '
             f'`python benchmarks/gpu_backbones.py`. Dense fp32 matmul: '
             f'{report["matmul_fp32_gflop_s"]:.0f} GFLOP/s.', '',
             '| model | mode | 224x224 fp32 | 224x224 fp16 | 800x1344 fp32 | 800x1344 fp16 |',
             '|---|---|---|---|---|---|']
    table = {}
    for r in report['rows']:
        key = (r['model'], r['mode'])
        table.setdefault(key, {})[(tuple(r['shape']), r['precision'])] = r['median_ms']
    for (model, mode), cells in table.items():
        values = [cells.get((s, p)) for s in map(tuple, SIZES) for p in ('fp32', 'fp16')]
        lines.append(f'| {model} | {mode} | ' + ' | '.join(f'{v:.2f}' for v in values) + ' |')
    return '\n'.join(lines) + '\n'


if __name__ == '__main__':
    main()
