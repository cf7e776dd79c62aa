"""The main job on the bundled toy dataset, end to end, with the real tools:

    generate data -> tools/train.py -> tools/test.py (box and mask AP) -> tools/test.py --deploy
    (fused) -> painted predictions -> summary

    python tools/demo.py [--work-dir work_dirs/toy_demo/TIMESTAMP] [--data data/toy_coco]

Each run trains in a new work dir, so nothing from an earlier run is overwritten.
"""
import argparse
import os
import os.path as osp
import runpy
import sys
import time

from mmdet_vanillanet.toolkit.paths import CONFIGS, TOOLS
from mmdet_vanillanet.toolkit.toy_data import make_toy_coco

CONFIG = osp.join(CONFIGS, 'mask_rcnn_vanillanet_toy.py')


def run_tool(name, *argv):
    """Run tools/NAME.py's main() in this process, as its command line would."""
    tool = runpy.run_path(osp.join(TOOLS, f'{name}.py'), run_name=f'tools.{name}')
    sys.argv = [f'tools/{name}.py', *argv]
    return tool['main']()


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work-dir', default=osp.join(
        'work_dirs', 'toy_demo', time.strftime('%Y%m%d_%H%M%S')))
    parser.add_argument('--data', default='data/toy_coco', help='toy dataset folder')
    parser.add_argument('--cfg-options', nargs='+', default=[],
                        help='passed on to train.py and test.py')
    return parser.parse_args()


def main():
    args = parse_args()
    data_root = args.data.rstrip('/') + '/'
    if not osp.isdir(args.data):
        make_toy_coco(args.data)
        print(f'generated the toy dataset in {args.data}')
    options = [f'train_dataloader.dataset.data_root={data_root}',
               f'val_dataloader.dataset.data_root={data_root}',
               f'test_dataloader.dataset.data_root={data_root}',
               f'val_evaluator.ann_file={data_root}annotations/instances_val.json',
               f'test_evaluator.ann_file={data_root}annotations/instances_val.json',
               *args.cfg_options]

    start = time.perf_counter()
    runner = run_tool('train', CONFIG, '--work-dir', args.work_dir, '--cfg-options', *options)
    train_minutes = (time.perf_counter() - start) / 60
    checkpoint = osp.join(args.work_dir, f'epoch_{runner.max_epochs}.pth')

    results = {}
    for name, extra in (('unfused', []), ('fused', ['--deploy', '--show-dir', 'predictions'])):
        metrics = run_tool('test', CONFIG, checkpoint, '--work-dir',
                           osp.join(args.work_dir, f'test_{name}'), *extra,
                           '--cfg-options', *options)
        results[name] = (metrics['coco/bbox_mAP'], metrics['coco/segm_mAP'])

    shown = [osp.join(dirpath, d) for dirpath, dirs, _ in
             os.walk(osp.join(args.work_dir, 'test_fused')) for d in dirs if d == 'predictions']
    (box, mask), (fbox, fmask) = results['unfused'], results['fused']
    print('\nVanillaNet Mask R-CNN on the toy COCO val split')
    print(f'{"":<22}{"box AP":>8}{"mask AP":>9}')
    print(f'{"unfused":<22}{box:>8.3f}{mask:>9.3f}')
    print(f'{"fused (deploy)":<22}{fbox:>8.3f}{fmask:>9.3f}')
    print(f'{"difference":<22}{fbox - box:>8.3f}{fmask - mask:>9.3f}')
    print(f'training: {train_minutes:.1f} min, checkpoint {checkpoint}')
    if shown:
        print(f'painted predictions: {shown[0]}')
    if abs(fbox - box) > 1e-3 or abs(fmask - mask) > 1e-3:
        raise SystemExit('fused AP differs from unfused AP by more than 0.001')


if __name__ == '__main__':
    main()
