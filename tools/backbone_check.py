"""Build real-width VanillaNets, load a generated checkpoint in the released layout, fuse, and
print how exactly the fused network reproduces the unfused one.

    python tools/backbone_check.py                      # VanillaNet-13, act_num 4 (detection)
    python tools/backbone_check.py --arch all --act-num 3 --size 224

No released file is needed: each network gets random weights and BN statistics (a fresh BN
would hide folding errors), is saved as {'model_ema': ...} like the authors' files, and is
loaded back through ``init_cfg=dict(type='Pretrained')``, once into a training-mode backbone
and once into a deploy=True one (which fuses on load). The check is
tools/vanillanet_toolkit/backbone_check.py.
"""
if __name__ == '__main__':  # first: Ctrl-C and SIGTERM during the imports below (seconds)
    from mmdet_runsafe.start import start_tool  # end the tool in one line
    start_tool()
import argparse
import tempfile

import torch

import mmdet_vanillanet  # noqa: F401
from mmdet_vanillanet.models import ARCH_SETTINGS
from vanillanet_toolkit.backbone_check import check_backbone


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--arch', default='13', help=f"one of {list(ARCH_SETTINGS)} or 'all'")
    parser.add_argument('--act-num', type=int, default=4)
    parser.add_argument('--size', type=int, default=224, help='input side in pixels')
    return parser


def main():
    args = build_parser().parse_args()
    archs = list(ARCH_SETTINGS) if args.arch == 'all' else [args.arch]
    print(f'act_num={args.act_num}, input 1x3x{args.size}x{args.size}, '
          f'{torch.get_num_threads()} threads')
    print(f'{"arch":<18}{"params train M":>15}{"params deploy M":>16}{"max rel diff":>14}'
          f'{"unfused s":>11}{"fused s":>9}')
    with tempfile.TemporaryDirectory() as workdir:
        for arch in archs:
            result = check_backbone(arch, args.act_num, args.size, workdir)
            rel, (p_train, p_deploy), t_unfused, t_fused = result
            print(f'{arch:<18}{p_train:>15.2f}{p_deploy:>16.2f}{rel:>14.2e}'
                  f'{t_unfused:>11.3f}{t_fused:>9.3f}', flush=True)
            if rel > 1e-4:
                raise SystemExit(f'fused output differs from unfused by {rel:.2e} (> 1e-4)')
    print('fused == unfused (max abs difference <= 1e-4 of the output magnitude)')


if __name__ == '__main__':
    main()
