"""Build real-width VanillaNets, load a generated checkpoint in the released layout, fuse, and
print how exactly the fused network reproduces the unfused one.

    python tools/backbone_check.py                      # VanillaNet-13, act_num 4 (detection)
    python tools/backbone_check.py --arch all --act-num 3 --size 224

No released file is needed: each network gets random weights and BN statistics (a fresh BN
would hide folding errors), is saved as {'model_ema': ...} like the authors' files, and is
loaded back through ``init_cfg=dict(type='Pretrained')``, once into a training-mode backbone
and once into a deploy=True one (which fuses on load).
"""
import argparse
import os
import tempfile
import time

import torch
from mmdet.registry import MODELS

import mmdet_vanillanet  # noqa: F401
from mmdet_vanillanet.comparison import max_rel_diff, randomize
from mmdet_vanillanet.models import ARCH_SETTINGS
from mmdet_vanillanet.models.checkpoint_forms import count_params


def timed(model, x):
    start = time.perf_counter()
    with torch.no_grad():
        out = model(x)
    return out, time.perf_counter() - start


def check(arch, act_num, size, workdir):
    source = MODELS.build(dict(type='VanillaNet', arch=arch, act_num=act_num)).eval()
    randomize(source)
    path = os.path.join(workdir, f'vanillanet_{arch}.pth')
    torch.save({'model_ema': source.state_dict()}, path)
    del source
    pretrained = dict(type='Pretrained', checkpoint=path)
    unfused = MODELS.build(dict(type='VanillaNet', arch=arch, act_num=act_num,
                                init_cfg=pretrained))
    unfused.init_weights()
    unfused.eval()
    deployed = MODELS.build(dict(type='VanillaNet', arch=arch, act_num=act_num, deploy=True,
                                 init_cfg=pretrained))
    deployed.init_weights()
    deployed.eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    timed(deployed, x)  # warm-up
    ref, t_unfused = timed(unfused, x)
    out, t_fused = timed(deployed, x)
    rel = max_rel_diff(ref, out)
    params = [count_params(m.state_dict()) / 1e6 for m in (unfused, deployed)]
    return rel, params, t_unfused, t_fused


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--arch', default='13', help=f"one of {list(ARCH_SETTINGS)} or 'all'")
    parser.add_argument('--act-num', type=int, default=4)
    parser.add_argument('--size', type=int, default=224, help='input side in pixels')
    args = parser.parse_args()
    archs = list(ARCH_SETTINGS) if args.arch == 'all' else [args.arch]
    print(f'act_num={args.act_num}, input 1x3x{args.size}x{args.size}, '
          f'{torch.get_num_threads()} threads')
    print(f'{"arch":<18}{"params train M":>15}{"params deploy M":>16}{"max rel diff":>14}'
          f'{"unfused s":>11}{"fused s":>9}')
    with tempfile.TemporaryDirectory() as workdir:
        for arch in archs:
            result = check(arch, args.act_num, args.size, workdir)
            rel, (p_train, p_deploy), t_unfused, t_fused = result
            print(f'{arch:<18}{p_train:>15.2f}{p_deploy:>16.2f}{rel:>14.2e}'
                  f'{t_unfused:>11.3f}{t_fused:>9.3f}', flush=True)
            if rel > 1e-4:
                raise SystemExit(f'fused output differs from unfused by {rel:.2e} (> 1e-4)')
    print('fused == unfused (max abs difference <= 1e-4 of the output magnitude)')


if __name__ == '__main__':
    main()
