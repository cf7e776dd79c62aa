"""Write the fused (deploy-layout) version of a training-mode VanillaNet checkpoint.

    python tools/convert_checkpoint.py vanillanet_13_act_num_4_kd_pretrain.pth vn13_deploy.pth
    python tools/convert_checkpoint.py work_dirs/mask_rcnn/epoch_12.pth mask_rcnn_deploy.pth

The file's training network is built and fused, with the norm (type, eps) of the config it was
trained with: --config CONFIG, else the config the file records (MMEngine writes it into every
checkpoint), else for a backbone-only file (the authors' ImageNet files) their BatchNorm with
eps 1e-6. An ImageNet file becomes {'model': fused}, the released deploy layout; a detector
checkpoint keeps its neck and heads, to be tested with ``model.backbone.deploy=True``.
"""
if __name__ == '__main__':  # first: Ctrl-C and SIGTERM during the imports below (seconds)
    from mmdet_runsafe.start import start_tool  # end the tool in one line
    start_tool()
import argparse

from mmdet_runsafe.cli import interruptible, one_line_errors
from mmdet_runsafe.units import readable
from mmdet_vanillanet.deploy.convert import convert_checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', help='training-mode checkpoint (local path or URL)')
    parser.add_argument('dst', help='where to write the deploy checkpoint')
    parser.add_argument('--config', help='the config src was trained with (its model.backbone '
                        'gives the norm to fold); by default the one src records')
    parser.add_argument('--force', action='store_true', help='overwrite dst if it exists')
    parser.add_argument('--unsafe-load', action='store_true',
                        help='unpickle src without weights_only protection: only for files you '
                        'trust that hold other objects (checkpoints of our runs and of '
                        'MMEngine\'s own CheckpointHook load without it); what is written '
                        'holds plain tensors only')
    return parser


def main():
    args = build_parser().parse_args()
    with interruptible(), one_line_errors():
        before, after = convert_checkpoint(args.src, args.dst, args.force, args.unsafe_load,
                                           args.config)
    print(f'backbone parameters: {readable(before)} (training) -> {readable(after)} (deploy)')
    print(f'wrote {args.dst}')


if __name__ == '__main__':
    main()
