"""Write the synthetic "toy COCO" shapes set that the demo trains a small Mask R-CNN on.

    python tools/make_toy_coco.py                              # data/toy_coco, 200 + 50 images
    python tools/make_toy_coco.py --out /tmp/toy --num-train 20 --num-val 8 --size 96 96

The same arguments always give byte-identical files, so a demo result can be reproduced from
the command line alone. An existing non-empty output dir is refused unless --force is given.
"""
import argparse
import collections
import json

from mmdet_vanillanet.toolkit.cli import one_line_errors
from mmdet_vanillanet.toolkit.toy_data import CLASSES, make_toy_coco


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='data/toy_coco', help='output directory')
    parser.add_argument('--num-train', type=int, default=200, help='training images')
    parser.add_argument('--num-val', type=int, default=50, help='validation images')
    parser.add_argument('--size', type=int, nargs=2, default=(160, 160),
                        metavar=('HEIGHT', 'WIDTH'), help='image size in pixels')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--force', action='store_true',
                        help='write into a non-empty --out, replacing the toy files there')
    return parser.parse_args(argv)


def summarize_split(split, img_dir, ann_file):
    """One line per split, so a wrong count is visible before a long training run."""
    with open(ann_file, encoding='utf-8') as f:
        coco = json.load(f)
    names = {c['id']: c['name'] for c in coco['categories']}
    counts = collections.Counter(names[a['category_id']] for a in coco['annotations'])
    per_class = ', '.join(f'{name} {counts[name]}' for name in CLASSES)
    return (f'  {split}: {len(coco["images"])} images, {len(coco["annotations"])} instances '
            f'({per_class})\n    images in {img_dir}\n    annotations in {ann_file}')


def main(argv=None):
    args = parse_args(argv)
    with one_line_errors():
        paths = make_toy_coco(args.out, num_train=args.num_train, num_val=args.num_val,
                              image_size=tuple(args.size), seed=args.seed, overwrite=args.force)
    print(f'wrote toy COCO (seed {args.seed}, {args.size[0]}x{args.size[1]} HxW) to {args.out}')
    for split in ('train', 'val'):
        print(summarize_split(split, paths[f'{split}_img'], paths[f'{split}_ann']))


if __name__ == '__main__':
    main()
