"""Test (and evaluate) a detector: MMDetection's tools/test.py, with the same flags, plus
--deploy, which tests the fused (deployed) network:
- a training-mode checkpoint is loaded as usual and the backbone is fused before testing;
- a deploy-layout checkpoint (tools/convert_checkpoint.py) is loaded into a deploy backbone.
A deploy-layout checkpoint without --deploy is an error rather than a silent partial load, as
is any checkpoint that does not fit (the config's CheckpointFitHook).

An exported raw file (tools/export_onnx.py --part raw, fp32, or INT8 from
tools/quantize_onnx.py) in place of the checkpoint is tested as it runs in onnxruntime, decoded
by the config's heads (OnnxDetector), with the same dataloader, evaluator and outputs (--out,
--show-dir, --work-dir); --checkpoint names the checkpoint it was exported from, which a
two-stage detector's RoI heads need (and which the file's weights are checked against):

    python tools/test.py configs/mask_rcnn_vanillanet_toy.py raw_int8.onnx --checkpoint epoch_40.pth

The Runner is built by tools/vanillanet_toolkit/runs.py (build_test_runner).
"""
if __name__ == '__main__':  # first: Ctrl-C and SIGTERM during the imports below (seconds)
    from mmdet_runsafe.start import start_tool  # end the tool in one line
    start_tool()
import argparse

from mmdet_runsafe.cli import (
    TEST_INTERRUPTED,
    add_runner_args,
    force_weights_only_loading,
    interruptible,
    one_line_errors,
    parse,
)
from vanillanet_toolkit.runs import build_test_runner


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file, or an exported raw ONNX file')
    parser.add_argument('--checkpoint', dest='onnx_checkpoint', metavar='CKPT',
                        help='with an ONNX file: the checkpoint it was exported from (a '
                        'two-stage detector runs its RoI heads with its weights)')
    parser.add_argument('--work-dir',
                        help='the directory to save the file containing evaluation metrics')
    parser.add_argument('--out', type=str,
                        help='dump predictions to a pickle file for offline evaluation')
    parser.add_argument('--deploy', action='store_true',
                        help='test the deployed network: fuse the VanillaNet backbone')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir',
                        help='directory where painted images will be saved (under '
                        'work_dir/timestamp/)')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    add_runner_args(parser)
    return parser


def main():
    args = parse(build_parser())
    force_weights_only_loading()
    with interruptible(TEST_INTERRUPTED), one_line_errors():
        return build_test_runner(
            args.config, args.checkpoint, work_dir=args.work_dir, cfg_options=args.cfg_options,
            out=args.out, deploy=args.deploy, show=args.show, show_dir=args.show_dir,
            wait_time=args.wait_time, launcher=args.launcher,
            onnx_checkpoint=args.onnx_checkpoint).test()


if __name__ == '__main__':
    main()
