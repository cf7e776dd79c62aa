"""Write the synthetic "toy COCO" shapes set that the demo trains a small Mask R-CNN on.

    python tools/make_toy_coco.py                              # data/toy_coco, 200 + 50 images
    python tools/make_toy_coco.py --out /tmp/toy --num-train 20 --num-val 8 --size 96 96

The same arguments always give byte-identical files, so a demo result can be reproduced from
the command line alone. An existing non-empty output dir is refused unless --force is given.
"""
if __name__ == '__main__':  # first: Ctrl-C and SIGTERM during the imports below (seconds)
    from mmdet_runsafe.start import start_tool  # end the tool in one line
    start_tool()
import argparse

from mmdet_runsafe.cli import one_line_errors
from mmdet_runsafe.toy_data import (
    MAX_IMAGE_SIDE,
    MIN_IMAGE_SIDE,
    SPLITS,
    describe_split,
    make_toy_coco,
)

# make_toy_coco's arguments whose flags are named otherwise.
FLAGS = dict(out_dir='--out', image_size='--size', overwrite='--force')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='data/toy_coco', help='output directory')
    parser.add_argument('--num-train', type=int, default=200, help='training images')
    parser.add_argument('--num-val', type=int, default=50, help='validation images')
    parser.add_argument('--size', type=int, nargs=2, default=(160, 160),
                        metavar=('HEIGHT', 'WIDTH'),
                        help=f'image size in pixels, each side {MIN_IMAGE_SIDE} to '
                        f'{MAX_IMAGE_SIDE}')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--force', action='store_true',
                        help='write into a non-empty --out, replacing the toy files there')
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    with one_line_errors(flags=FLAGS):
        paths = make_toy_coco(args.out, num_train=args.num_train, num_val=args.num_val,
                              image_size=tuple(args.size), seed=args.seed, overwrite=args.force)
    print(f'wrote toy COCO (seed {args.seed}, {args.size[0]}x{args.size[1]} HxW) to {args.out}')
    for split in SPLITS:
        print(describe_split(split, paths[f'{split}_img'], paths[f'{split}_ann']))


if __name__ == '__main__':
    main()
