"""What each choice in the deployed VanillaNet buys on CPU: the fused VanillaNet-13 backbone
(act_num 4) at detection resolution, in one process, against the unfused network and the
machine's dense matmul rate.

    python benchmarks/ablation_cpu.py                 # about 3 minutes on 2 cores

Variants of the same fused weights:
- non-contiguous: the merged 1x1 weights left in the transposed layout that a merge by
  matmul-and-transpose produces (the authors' deploy code does this, their issue #17);
- contiguous (our default): the fusion writes contiguous weights;
- channels_last: weights and input in NHWC (tools/benchmark.py --channels-last).
Writes benchmarks/results/cpu_ablation.{json,md}.
"""
import argparse
import copy
import json
import os.path as osp

import toolkit_path  # noqa: F401  (tools/ on the path, for vanillanet_toolkit)
import torch
from mmdet.registry import MODELS
from mmengine.analysis import get_model_complexity_info

import mmdet_vanillanet  # noqa: F401
from mmdet_vanillanet.deploy.equivalence import randomize
from vanillanet_toolkit.machine import machine_info, matmul_gflops
from vanillanet_toolkit.paths import REPO_ROOT
from vanillanet_toolkit.timing import summarize, time_call


def non_contiguous(fused):
    """The same values, stored transposed (out and in channels swapped in memory)."""
    model = copy.deepcopy(fused)
    for stage in model.stages:
        weight = stage.conv.weight.data
        stage.conv.weight.data = weight.transpose(0, 1).contiguous().transpose(0, 1)
    assert not model.stages[0].conv.weight.is_contiguous()
    return model


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--shape', type=int, nargs=2, default=[800, 1216], metavar=('H', 'W'))
    parser.add_argument('--iters', type=int, default=3)
    args = parser.parse_args()
    unfused = randomize(MODELS.build(dict(type='VanillaNet', arch='13', act_num=4))).eval()
    fused = copy.deepcopy(unfused)
    fused.switch_to_deploy()
    x = torch.randn(1, 3, *args.shape)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    variants = [
        ('unfused', unfused, x),
        ('unfused, channels_last', copy.deepcopy(unfused).to(memory_format=torch.channels_last),
         x_cl),
        ('fused, non-contiguous weights', non_contiguous(fused), x),
        ('fused (default)', fused, x),
        ('fused, channels_last', copy.deepcopy(fused).to(memory_format=torch.channels_last),
         x_cl),
    ]
    rate = matmul_gflops()
    macs = {name: get_model_complexity_info(model, inputs=(x, ), show_table=False,
                                            show_arch=False)['flops']
            for name, model in (('unfused', unfused), ('fused', fused))}
    rows = []
    for name, model, inp in variants:
        result = summarize(time_call(lambda: model(inp), args.iters, 1, progress=False))
        flops = 2 * macs['unfused' if name.startswith('unfused') else 'fused']
        result.update(name=name, gflop_s=flops / (result['median_ms'] / 1e3) / 1e9)
        result['of_matmul'] = result['gflop_s'] / rate
        rows.append(result)
        print(f'{name:<32}{result["median_ms"]:9.0f} ms{result["of_matmul"]:7.2f}', flush=True)
    base = rows[0]['median_ms']
    report = dict(machine=machine_info(), shape=args.shape, matmul_gflop_s=rate, rows=rows)
    m = report['machine']
    lines = [f'Fused VanillaNet-13 backbone (act_num 4), batch 1, {args.shape[0]}x{args.shape[1]}'
             f', on {m.get("cpu")} ({m["threads"]} threads), torch {m["torch"]}; dense fp32 '
             f'matmul {rate:.0f} GFLOP/s; median of {args.iters}. Command: '
             f'`python benchmarks/ablation_cpu.py`.', '',
             '| variant | ms | GFLOP/s | of matmul | speed-up over unfused |',
             '|---|---|---|---|---|']
    lines += [f'| {r["name"]} | {r["median_ms"]:.0f} | {r["gflop_s"]:.0f} | '
              f'{r["of_matmul"]:.2f} | {base / r["median_ms"]:.2f}x |' for r in rows]
    stem = osp.join(REPO_ROOT, 'benchmarks', 'results', 'cpu_ablation')
    with open(stem + '.json', 'w') as f:
        json.dump(report, f, indent=2)
    with open(stem + '.md', 'w') as f:
        f.write('\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
