"""What a training step of the backbone keeps for its backward pass, and what its forward and
backward passes cost on the CPU: VanillaNet 5/9/11/13/13-1.5x as the COCO configs train them,
with each training switch, beside ResNet-50 and Swin-T as MMDetection's Mask R-CNN configs set
them.

    python benchmarks/train_memory.py                  # about 6 minutes on 2 cores
    python benchmarks/train_memory.py --archs 13 --repeats 5

Memory: the bytes of every distinct storage autograd keeps
(tools/vanillanet_toolkit/saved_tensors.py), counted on the meta device at the memory size
(800x1344, batch 1), exact and the same on any device; ``activations`` leaves out the parameters
and buffers, which a model holds anyway, ``saved`` counts them too (the count
``saved_tensors_hooks`` gives directly). Time: forward and backward
of the backbone in training mode on the CPU at the time size (256x384, batch 1), every variant
in turn in one process, best of ``--repeats`` rounds, so that their ratios share the machine's
state.

VanillaNet variants (the config's backbone with):
- lean: ``lean_training=True``, the default;
- plain: ``lean_training=False``, plain autograd (the authors' network's graph);
- 0.4.0: plain autograd that also computes the deep-training leaky_relu at slope 1, as 0.4.0 did
  (act_learn set just below 1, which runs the same ops; its memory figure is 0.4.0's);
- with_cp, lean + with_cp: gradient checkpointing of each stage.
Writes benchmarks/results/train_memory.{json,md,png}.
"""
import argparse
import json
import os.path as osp
import time

import mmdet
import toolkit_path  # noqa: F401  (tools/ on the path, for vanillanet_toolkit)
import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config

import mmdet_vanillanet  # noqa: F401
from vanillanet_toolkit.machine import machine_info
from vanillanet_toolkit.paths import CONFIGS, REPO_ROOT
from vanillanet_toolkit.saved_tensors import model_tensors, saved_for_backward

MMDET_CONFIGS = osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs')
ARCHS = {'5': 'mask_rcnn_vanillanet5_coco.py', '9': 'mask_rcnn_vanillanet9_coco.py',
         '11': 'mask_rcnn_vanillanet11_coco.py', '13': 'mask_rcnn_vanillanet13_coco.py',
         '13_x1_5': 'mask_rcnn_vanillanet13_x1_5_coco.py'}
OTHERS = {'ResNet-50': osp.join(MMDET_CONFIGS, 'mask_rcnn', 'mask-rcnn_r50_fpn_1x_coco.py'),
          'Swin-T': osp.join(MMDET_CONFIGS, 'swin', 'mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py')}
VARIANTS = {  # name: changes to the config's backbone
    'lean': dict(),
    'plain': dict(lean_training=False),
    '0.4.0': dict(lean_training=False, act_learn=1 - 2 ** -24),
    'with_cp': dict(lean_training=False, with_cp=True),
    'lean + with_cp': dict(with_cp=True),
}
GIB = 2 ** 30


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--archs', nargs='+', default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument('--memory-shape', type=int, nargs=2, default=[800, 1344],
                        metavar=('H', 'W'))
    parser.add_argument('--time-shape', type=int, nargs=2, default=[256, 384],
                        metavar=('H', 'W'))
    parser.add_argument('--recipe-shape', type=int, nargs=2, default=[1024, 1344],
                        metavar=('H', 'W'), help="the paper's largest training size (padded)")
    parser.add_argument('--recipe-batch', type=int, default=4, help="the paper's images per GPU")
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--out-dir', default=osp.join(REPO_ROOT, 'benchmarks', 'results'))
    return parser.parse_args()


def backbone(config: str, changes: dict = None, device: str = 'cpu'):
    """The config's backbone in training mode, with ``changes``; no pretrained weights."""
    cfg = Config.fromfile(config).model.backbone
    cfg.init_cfg = None
    changes = dict(changes or {})
    act_learn = changes.pop('act_learn', None)
    cfg.update(changes)
    model = MODELS.build(cfg).to(device)  # built on the CPU: Swin's builder reads tensors
    if act_learn is not None:
        model.act_learn = act_learn
    model.train()
    return model


def memory(model_fn, shape, recipe_shape, recipe_batch) -> dict:
    """What a step keeps at ``shape`` (batch 1), and the backbone's share of a step at the
    paper's recipe: its activations for ``recipe_batch`` images of ``recipe_shape``, and its
    weights, gradients and AdamW's two moments (4 x its parameters)."""
    model = model_fn('meta')
    x = torch.empty(1, 3, *shape, device='meta')
    counted = saved_for_backward(lambda: model(x), model_tensors(model))
    x = torch.empty(recipe_batch, 3, *recipe_shape, device='meta')
    recipe = saved_for_backward(lambda: model(x), model_tensors(model))['activations']
    state = 4 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return dict(activations_gib=counted['activations'] / GIB,
                saved_gib=(counted['activations'] + counted['held']) / GIB,
                recipe_activations_gib=recipe / GIB, recipe_share_gib=(recipe + state) / GIB)


def step(model, x):
    outs = model(x)
    sum(out.float().mean() for out in outs).backward()


def time_all(models: dict, shape, repeats: int) -> dict:
    """Best seconds of forward + backward per model, the models taken in turn each round."""
    x = torch.randn(1, 3, *shape)
    for model in models.values():
        step(model, x)  # warm-up: allocator, oneDNN's kernels for these shapes
    best = {name: float('inf') for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            step(model, x)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def table(report) -> str:
    mem, time_shape = report['memory_shape'], report['time_shape']
    lines = [f'| backbone | variant | activations kept, GiB ({mem[0]}x{mem[1]}) | with weights, '
             f'GiB | fwd+bwd s ({time_shape[0]}x{time_shape[1]}, CPU) | time vs plain |',
             '|---|---|---|---|---|---|']
    for row in report['rows']:
        ratio = row.get('time_vs_plain')
        lines.append(f'| {row["backbone"]} | {row["variant"]} | {row["activations_gib"]:.2f} | '
                     f'{row["saved_gib"]:.2f} | {row["seconds"]:.2f} | '
                     + (f'{ratio:.2f}x |' if ratio is not None else '- |'))
    return '\n'.join(lines)


def recipe_table(report) -> str:
    """The backbone's share of a step at the paper's recipe, and what each card has left."""
    shape, batch = report['recipe_shape'], report['recipe_batch']
    cards = (16, 24, 40, 80)
    lines = [f'| backbone | variant | activations, {batch} x {shape[0]}x{shape[1]}, GiB | '
             f'+ weights, gradients, AdamW, GiB | '
             + ' | '.join(f'left on {c} GiB' for c in cards) + ' |',
             '|---|---|---|---|' + '---|' * len(cards)]
    for row in report['rows']:
        share = row['recipe_share_gib']
        lines.append(f'| {row["backbone"]} | {row["variant"]} | '
                     f'{row["recipe_activations_gib"]:.1f} | {share:.1f} | '
                     + ' | '.join(f'{c - share:.1f}' if share < c else 'does not fit'
                                  for c in cards) + ' |')
    return '\n'.join(lines)


def plot(report, path):
    """Per backbone, 0.4.0's and the lean path's activations side by side; the others alone."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    kept = {(r['backbone'], r['variant']): r['activations_gib'] for r in report['rows']}
    vanillanets = [b for b, v in kept if v == 'lean']
    others = [b for b, v in kept if v == '-']
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for i, name in enumerate(vanillanets):
        ax.bar(i - 0.2, kept[(name, '0.4.0')], 0.4, color='tab:gray',
               label='0.4.0 (plain autograd)' if i == 0 else None)
        ax.bar(i + 0.2, kept[(name, 'lean')], 0.4, color='tab:green',
               label='lean (default)' if i == 0 else None)
    for j, name in enumerate(others):
        ax.bar(len(vanillanets) + j, kept[(name, '-')], 0.4, color='tab:blue',
               label='MMDetection Mask R-CNN setting' if j == 0 else None)
    labels = [n.replace('VanillaNet-', 'VN-').replace('_x1_5', ' 1.5x') for n in vanillanets]
    ax.set_xticks(range(len(labels) + len(others)), labels + others)
    ax.set_ylabel('GiB kept for backward')
    shape = report['memory_shape']
    ax.set_title(f'Activations a training step of the backbone keeps, batch 1 at '
                 f'{shape[0]}x{shape[1]}')
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    args = parse_args()
    register_all_modules()
    torch.manual_seed(0)
    rows, seconds = [], {}
    sizes = args.memory_shape, args.recipe_shape, args.recipe_batch
    # Timed one arch at a time (its variants in turn), ResNet-50 and Swin-T with VanillaNet-13
    # (or the last arch): one group's models and gradients in memory at a time.
    with_others = '13' if '13' in args.archs else args.archs[-1]
    for arch in args.archs:
        config = osp.join(CONFIGS, ARCHS[arch])
        group = {}
        for variant, changes in VARIANTS.items():
            rows.append(dict(backbone=f'VanillaNet-{arch}', variant=variant, **memory(
                lambda device: backbone(config, changes, device), *sizes)))
            group[(rows[-1]['backbone'], variant)] = backbone(config, changes)
        if arch == with_others:
            for name, other in OTHERS.items():
                rows.append(dict(backbone=name, variant='-', **memory(
                    lambda device: backbone(other, device=device), *sizes)))
                group[(name, '-')] = backbone(other)
        seconds.update(time_all(group, args.time_shape, args.repeats))
        del group
    for row in rows:
        row['seconds'] = seconds[(row['backbone'], row['variant'])]
        plain = seconds.get((row['backbone'], 'plain'))
        if plain is not None:
            row['time_vs_plain'] = row['seconds'] / plain
    report = dict(machine=machine_info(), memory_shape=args.memory_shape,
                  time_shape=args.time_shape, recipe_shape=args.recipe_shape,
                  recipe_batch=args.recipe_batch, repeats=args.repeats, rows=rows)
    print(table(report))
    print(recipe_table(report))
    stem = osp.join(args.out_dir, 'train_memory')
    with open(f'{stem}.json', 'w') as f:
        json.dump(report, f, indent=2)
    with open(f'{stem}.md', 'w') as f:
        machine = report['machine']
        f.write(f'Written by `python benchmarks/train_memory.py` on {machine["cpu"]} '
                f'({machine["threads"]} threads), torch {machine["torch"]}. Time: best of '
                f'{report["repeats"]} rounds, the variants of an arch in turn.\n\n'
                + table(report) + '\n\nThe backbone\'s share of a training step at the paper\'s '
                f'recipe ({report["recipe_batch"]} images of up to 1024x1333 per GPU, padded to '
                f'{report["recipe_shape"][0]}x{report["recipe_shape"][1]}), fp32, and what a card '
                'has left for the rest (FPN, heads, workspaces: not counted here):\n\n'
                + recipe_table(report) + '\n')
    plot(report, f'{stem}.png')


if __name__ == '__main__':
    main()
