"""Backbones on a CUDA device: the fused VanillaNets with each act_impl beside ResNet-50 and
Swin-T, and the series-activation kernel against the card's own ceilings, in one run.

    python benchmarks/gpu_backbones.py          # about 5 minutes on an H100 or H200

1. Ceilings measured here: device-to-device copy bandwidth, and dense matrix-product rates
   (fp32 on the CUDA cores, tf32 and fp16 on the tensor cores).
2. Checks before any timing: the kernel against float64 PyTorch on awkward shapes, and the fused
   VanillaNet-13 with act_impl='triton' against act_impl='torch' (fp32 <= 1e-5 relative).
3. Backbone latency: VanillaNet-13 (act_num 4) and VanillaNet-5 fused, with act_impl torch,
   triton and auto, torchvision's ResNet-50 and Swin-T bodies; 224x224 and 800x1344,
   fp32/fp16/bf16 (the model and input cast to the type, as a deployed network runs), batch 1
   and 8. Median of triton.testing.do_bench (CUDA events, L2 flushed between calls).
4. Every activation layer of VanillaNet-13 at 800x1344, batch 1: PyTorch and kernel time, the
   kernel's bandwidth and FLOP rate against the ceilings, and the activations' share of the
   backbone's time with each implementation.
5. A training step of VanillaNet-13 (lean, plain, with_cp, lean + with_cp) and of ResNet-50 at
   800x1344, batch 2, fp32 and fp16 autocast: peak memory (torch.cuda.max_memory_allocated)
   and step time; and the lean path's gradients against the plain path's on the card.

Writes gpu_backbones_<card>.{json,md} under --out-dir (default $OUT, else benchmarks/results),
the JSON after every section, so that a failure late in the run keeps what was measured. A
failed check is recorded and printed, and the timings still run: where the run-time guard
refuses the kernel under act_impl='triton', the figure is NaN. The JSON's kernel_checks holds
what the guard found for each kernel variant (ops.activation_kernel.kernel_checks: its first call
compared with PyTorch, and, as cudnn.benchmark is on here, which implementation 'auto' timed
faster per input shape). (The figures before the kernel are kept in
benchmarks/results/gpu_backbones_h100_pytorch_activation.md.)
"""
import argparse
import copy
import json
import os
import os.path as osp
import re

import toolkit_path  # noqa: F401  (tools/ on the path, for vanillanet_toolkit)
import torch
import torch.nn as nn
import torch.nn.functional as F
from triton.testing import do_bench

from mmdet_vanillanet.config_error import ConfigError
from mmdet_vanillanet.deploy.equivalence import max_rel_diff, randomize
from mmdet_vanillanet.models import VanillaNet
from mmdet_vanillanet.models.series_activation import SeriesActivation
from mmdet_vanillanet.ops.activation_kernel import kernel_checks
from mmdet_vanillanet.ops.triton_activation import fused_series_activation
from vanillanet_toolkit.paths import REPO_ROOT

SIZES = [(224, 224), (800, 1344)]
BATCHES = [1, 8]
DTYPES = dict(fp32=torch.float32, fp16=torch.float16, bf16=torch.bfloat16)
ARCHS = [('13', 4), ('5', 3)]
IMPLS = ['torch', 'triton', 'auto']


def bench_ms(fn) -> float:
    return do_bench(fn, warmup=25, rep=200, return_mode='median')


def guarded(fn):
    """fn(), or NaN where the kernel's run-time guard refused it (printed; the run goes on)."""
    try:
        return fn()
    except ConfigError as err:
        print(f'KERNEL GUARD: {err}', flush=True)
        return float('nan')


# --- 1. ceilings ---------------------------------------------------------------------------

def ceilings() -> dict:
    src = torch.randn(256 * 2 ** 20, device='cuda')  # 1 GiB
    dst = torch.empty_like(src)
    copy_gb_s = 2 * src.numel() * 4 / bench_ms(lambda: dst.copy_(src)) / 1e6
    rates = {}
    n = 8192
    for name, dtype, tf32 in (('fp32', torch.float32, False), ('tf32', torch.float32, True),
                              ('fp16', torch.float16, False)):
        a, b = (torch.randn(n, n, device='cuda', dtype=dtype) for _ in range(2))
        torch.backends.cuda.matmul.allow_tf32 = tf32
        rates[f'{name}_gflop_s'] = 2 * n ** 3 / bench_ms(lambda: a @ b) / 1e6
    torch.backends.cuda.matmul.allow_tf32 = False
    return dict(copy_gb_s=copy_gb_s, **rates)


# --- 2. checks -------------------------------------------------------------------------------

def check_kernel() -> list:
    """Relative L2 error against float64 on fresh random inputs of awkward shapes."""
    rows = []
    gen = torch.Generator(device='cuda').manual_seed(0)
    for k in (3, 7, 9):
        for pool in (1, 2):
            for shape in ((1, 3, 5, 6), (2, 5, 37, 130), (8, 64, 101, 171)):
                for name, dtype in DTYPES.items():
                    x = torch.randn(shape, device='cuda', generator=gen).to(dtype)
                    w = torch.randn(shape[1], 1, k, k, device='cuda', generator=gen) / k
                    b = torch.randn(shape[1], device='cuda', generator=gen)
                    got = fused_series_activation(x, w, b, pool).double()
                    xr = F.max_pool2d(x.double(), pool) if pool > 1 else x.double()
                    ref = F.conv2d(F.relu(xr), w.to(dtype).double(), b.double(),
                                   padding=k // 2, groups=shape[1])
                    err = ((got - ref).norm() / ref.norm()).item()
                    rows.append(dict(k=k, pool=pool, shape=list(shape), dtype=name, rel_err=err))
    bound = dict(fp32=1e-5, fp16=2e-3, bf16=1e-2)
    for row in rows:
        row['ok'] = row['rel_err'] <= bound[row['dtype']]
        if not row['ok']:
            print(f'KERNEL CHECK FAILED: {row}', flush=True)
    return rows


def check_network(model, x) -> dict:
    """The fused network with the kernel against PyTorch, fp32 without TF32, and half types."""
    result = {}
    torch.backends.cudnn.allow_tf32 = False
    for name, dtype in DTYPES.items():
        net, inp = copy.deepcopy(model).to(dtype), x.to(dtype)
        net.act_impl = 'torch'
        expected = [t.float() for t in net(inp)]
        net.act_impl = 'triton'
        result[name] = guarded(lambda: max_rel_diff(expected, [t.float() for t in net(inp)]))
    torch.backends.cudnn.allow_tf32 = True
    with torch.autocast('cuda', dtype=torch.float16):
        model.act_impl = 'torch'
        expected = [t.float() for t in model(x)]
        model.act_impl = 'triton'
        result['fp16_autocast'] = guarded(
            lambda: max_rel_diff(expected, [t.float() for t in model(x)]))
    result['ok'] = result['fp32'] <= 1e-5
    if not result['ok']:
        print(f'NETWORK CHECK FAILED (fp32 above 1e-5): {result}', flush=True)
    return result


# --- 3. backbones ----------------------------------------------------------------------------

def vanillanets() -> dict:
    models = {}
    for arch, act_num in ARCHS:
        fused = randomize(VanillaNet(arch=arch, act_num=act_num)).eval()
        fused.switch_to_deploy()
        models[f'VanillaNet-{arch} (act_num {act_num}), fused'] = fused
    return models


def references() -> dict:
    import torchvision
    resnet = torchvision.models.resnet50()
    return {'ResNet-50 (torchvision)': nn.Sequential(*list(resnet.children())[:-2]).eval(),
            'Swin-T (torchvision)': torchvision.models.swin_t().features.eval()}


def time_backbones(vns: dict, refs: dict) -> list:
    rows = []
    runs = [(name, model, impl) for name, model in vns.items() for impl in IMPLS]
    runs += [(name, model, '-') for name, model in refs.items()]
    for name, model, impl in runs:
        if impl != '-':
            model.act_impl = impl
        for pname, dtype in DTYPES.items():
            net = model.to('cuda', dtype)
            for batch in BATCHES:
                for h, w in SIZES:
                    x = torch.randn(batch, 3, h, w, device='cuda', dtype=dtype)
                    ms = guarded(lambda: bench_ms(lambda: net(x)))
                    rows.append(dict(model=name, act_impl=impl, precision=pname, batch=batch,
                                     shape=[h, w], median_ms=ms))
                    print(f'{name:<36}{impl:<8}{pname:<6}{batch:>3} {h}x{w:<6}{ms:9.3f} ms',
                          flush=True)
        model.to('cpu', torch.float32)
    return rows


# --- 4. activation layers --------------------------------------------------------------------

def activation_layers(model, x, ceil: dict) -> dict:
    """Each activation of ``model`` on its real input: time with each implementation, bytes
    moved (input read once, output written once) and FLOPs (2 per multiply-add)."""
    inputs = []
    hooks = [m.register_forward_pre_hook(
        lambda m, args: inputs.append((m, args[0].clone(), m.pool)))
        for m in model.modules() if isinstance(m, SeriesActivation)]
    model.act_impl = 'torch'
    model(x)
    for hook in hooks:
        hook.remove()
    layers = []
    for i, (module, inp, pool) in enumerate(inputs):
        n, c, h, w = inp.shape
        out = n * c * (h // pool) * (w // pool)
        k = module.weight.shape[-1]
        row = dict(layer=i, input_shape=list(inp.shape), pool=pool, k=k,
                   bytes=(inp.numel() + out) * inp.element_size(), flops=2 * k * k * out)
        for impl in ('torch', 'triton'):
            module.act_impl = impl
            row[f'{impl}_ms'] = guarded(lambda: bench_ms(lambda: module(inp)))
        row['gb_s'] = row['bytes'] / row['triton_ms'] / 1e6
        row['gflop_s'] = row['flops'] / row['triton_ms'] / 1e6
        row['of_copy_bw'] = row['gb_s'] / ceil['copy_gb_s']
        row['of_fp32_rate'] = row['gflop_s'] / ceil['fp32_gflop_s']
        layers.append(row)
    result = dict(layers=layers)
    for impl in ('torch', 'triton'):
        model.act_impl = impl
        backbone = guarded(lambda: bench_ms(lambda: model(x)))
        activations = sum(r[f'{impl}_ms'] for r in layers)
        result[impl] = dict(backbone_ms=backbone, activations_ms=activations,
                            share=activations / backbone)
    total = dict(bytes=sum(r['bytes'] for r in layers), flops=sum(r['flops'] for r in layers))
    ms = result['triton']['activations_ms']
    result['kernel_total'] = dict(
        **total, ms=ms, of_copy_bw=total['bytes'] / ms / 1e6 / ceil['copy_gb_s'],
        of_fp32_rate=total['flops'] / ms / 1e6 / ceil['fp32_gflop_s'])
    return result


# --- 5. a training step ---------------------------------------------------------------------

TRAIN_VARIANTS = {'lean': dict(), 'plain': dict(lean_training=False),
                  'with_cp': dict(lean_training=False, with_cp=True),
                  'lean + with_cp': dict(with_cp=True)}


def training_steps(batch: int = 2, shape=(800, 1344)) -> dict:
    """VanillaNet-13 (act_num 4, training layout) with each training switch and torchvision's
    ResNet-50 body (every layer trained): one forward and backward pass at ``shape``, fp32 and
    under fp16 autocast. Peak memory above the model and its gradients
    (torch.cuda.max_memory_allocated), median step ms; and the lean path's gradients against the
    plain path's on this card (relative to the largest gradient)."""
    x = torch.randn(batch, 3, *shape, device='cuda')
    models = {f'VanillaNet-13 {name}': VanillaNet(arch='13', act_num=4, **cfg)
              for name, cfg in TRAIN_VARIANTS.items()}
    plain_state = randomize(models['VanillaNet-13 plain']).state_dict()
    for model in models.values():
        model.load_state_dict(plain_state)
    models['ResNet-50 (torchvision)'] = next(iter(references().values()))
    rows, grads = [], {}
    for name, model in models.items():
        model.cuda().train()

        def step():
            outs = model(x)
            outs = outs if isinstance(outs, (tuple, list)) else [outs]
            sum(out.float().mean() for out in outs).backward()

        for pname in ('fp32', 'fp16'):
            with torch.autocast('cuda', dtype=torch.float16, enabled=pname == 'fp16'):
                model.zero_grad(set_to_none=False)
                step()  # gradients allocated, cuDNN's search done
                torch.cuda.synchronize()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                step()
                torch.cuda.synchronize()
                peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 30
                ms = bench_ms(step)
            rows.append(dict(model=name, precision=pname, batch=batch, shape=list(shape),
                             peak_gib=peak, step_ms=ms))
            print('training:', json.dumps(rows[-1]), flush=True)
        if name in ('VanillaNet-13 lean', 'VanillaNet-13 plain'):
            model.zero_grad(set_to_none=True)
            step()
            grads[name] = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.cpu()
        torch.cuda.empty_cache()
    lean, plain = grads['VanillaNet-13 lean'], grads['VanillaNet-13 plain']
    scale = max(g.abs().max().item() for g in plain.values())
    diff = max((lean[n] - plain[n]).abs().max().item() for n in plain) / scale
    return dict(rows=rows, lean_vs_plain_grad_diff=diff)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out-dir', default=os.environ.get(
        'OUT', osp.join(REPO_ROOT, 'benchmarks', 'results')))
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    gpu = torch.cuda.get_device_name()
    card = re.sub(r'\W+', '_', gpu.lower().replace('nvidia', '').strip()).split('_')[0]
    os.makedirs(args.out_dir, exist_ok=True)
    stem = osp.join(args.out_dir, f'gpu_backbones_{card}')
    report = dict(gpu=gpu, torch=torch.__version__, triton=__import__('triton').__version__)

    def save():
        report['kernel_checks'] = kernel_checks()
        with open(f'{stem}.json', 'w') as f:
            json.dump(report, f, indent=2)

    with torch.inference_mode():
        report['ceilings'] = ceil = ceilings()
        print('ceilings:', json.dumps(ceil), flush=True)
        report['kernel_check'] = check_kernel()
        save()
        vns = vanillanets()
        vn13 = next(iter(vns.values()))
        big = torch.randn(1, 3, 800, 1344, device='cuda')
        report['network_check'] = check_network(vn13.cuda(), big)
        print('network check (max rel diff):', json.dumps(report['network_check']), flush=True)
        save()
        report['activations'] = {}
        for pname in ('fp32', 'fp16'):
            dtype = DTYPES[pname]
            report['activations'][pname] = activation_layers(vn13.to(dtype), big.to(dtype),
                                                             ceil)
            save()
        vn13.to('cpu', torch.float32)
        report['backbones'] = time_backbones(vns, references())
    save()
    report['training'] = training_steps()
    save()
    with open(f'{stem}.md', 'w') as f:
        f.write(markdown(report))
    print(markdown(report))


def markdown(report) -> str:
    ceil = report['ceilings']
    lines = [
        f'Backbones on {report["gpu"]}, torch {report["torch"]}, Triton {report["triton"]}; '
        f'median ms of triton.testing.do_bench, random weights, model and input in the named '
        f'type. Command: `python benchmarks/gpu_backbones.py`. Measured ceilings: copy '
        f'{ceil["copy_gb_s"]:.0f} GB/s, dense fp32 {ceil["fp32_gflop_s"] / 1e3:.1f} TFLOP/s, '
        f'tf32 {ceil["tf32_gflop_s"] / 1e3:.0f}, fp16 {ceil["fp16_gflop_s"] / 1e3:.0f}.', '']
    header = [f'{h}x{w} {p}' for h, w in SIZES for p in DTYPES]
    for batch in BATCHES:
        lines += [f'Batch {batch}:', '', '| backbone | act_impl | ' + ' | '.join(header) + ' |',
                  '|---|---|' + '---|' * len(header)]
        cells = {}
        for r in report['backbones']:
            if r['batch'] == batch:
                cells.setdefault((r['model'], r['act_impl']), {})[
                    (tuple(r['shape']), r['precision'])] = r['median_ms']
        for (model, impl), c in cells.items():
            values = [c[(s, p)] for s in SIZES for p in DTYPES]
            lines.append(f'| {model} | {impl} | ' + ' | '.join(f'{v:.2f}' for v in values) + ' |')
        lines.append('')
    check = dict(report['network_check'])
    failed = [r for r in report['kernel_check'] if not r['ok']]
    lines += ['Fused VanillaNet-13 at 800x1344, act_impl triton against torch, max abs difference '
              'relative to the largest output: '
              + ', '.join(f'{k} {v:.1e}' for k, v in check.items() if k != 'ok')
              + ('' if check['ok'] else ' (FAILED: fp32 above 1e-5)')
              + f'. Kernel against float64 on {len(report["kernel_check"])} cases: '
              + (f'{len(failed)} FAILED' if failed else 'all within bounds') + '.',
              '', guard_line(report['kernel_checks']), '']
    if 'training' in report:
        train = report['training']
        lines += [f'A training step at 800x1344, batch {train["rows"][0]["batch"]}: peak memory '
                  f'above the model and its gradients, median ms. Lean path gradients against the '
                  f'plain path: {train["lean_vs_plain_grad_diff"]:.1e} of the largest.', '',
                  '| backbone | precision | peak GiB | step ms |', '|---|---|---|---|']
        lines += [f'| {r["model"]} | {r["precision"]} | {r["peak_gib"]:.2f} | '
                  f'{r["step_ms"]:.1f} |' for r in train['rows']]
        lines.append('')
    for pname, act in report['activations'].items():
        total = act['kernel_total']
        lines += [
            f'VanillaNet-13 activations at 800x1344, batch 1, {pname}: backbone '
            f'{act["torch"]["backbone_ms"]:.2f} ms with PyTorch activations '
            f'({act["torch"]["share"]:.0%} of it in them), {act["triton"]["backbone_ms"]:.2f} ms '
            f'with the kernel ({act["triton"]["share"]:.0%}). All kernels: {total["ms"]:.3f} ms, '
            f'{total["of_copy_bw"]:.0%} of copy bandwidth, {total["of_fp32_rate"]:.0%} of the '
            f'fp32 rate.', '',
            '| layer | input | pool | k | torch ms | kernel ms | GB/s | of copy | GFLOP/s | '
            'of fp32 |', '|---|---|---|---|---|---|---|---|---|---|']
        for r in act['layers']:
            lines.append(
                f'| {r["layer"]} | {"x".join(map(str, r["input_shape"]))} | {r["pool"]} | '
                f'{r["k"]} | {r["torch_ms"]:.3f} | {r["triton_ms"]:.3f} | {r["gb_s"]:.0f} | '
                f'{r["of_copy_bw"]:.0%} | {r["gflop_s"]:.0f} | {r["of_fp32_rate"]:.0%} |')
        lines.append('')
    return '\n'.join(lines)


def guard_line(checks: dict) -> str:
    failed = {name: c['failure'] for name, c in checks.items() if c['failure']}
    return (f'Run-time guard: {len(checks)} kernel variants compared with PyTorch on their first '
            f'call; ' + ('; '.join(f'{name} FAILED: {why}' for name, why in failed.items())
                         if failed else 'all passed') + '.')


if __name__ == '__main__':
    main()
