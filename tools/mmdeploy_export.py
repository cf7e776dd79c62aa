"""Export a VanillaNet detector with mmdeploy 1.3.1 under torch >= 2.9, and compare the exported
model's detections with PyTorch's.

    python tools/mmdeploy_export.py DEPLOY_CFG MODEL_CFG CKPT IMG [--work-dir DIR] [--test-img ...]
    python tools/mmdeploy_export.py \\
        $MMDEPLOY/configs/mmdet/instance-seg/instance-seg_onnxruntime_dynamic.py \\
        configs/mask_rcnn_vanillanet13_coco.py epoch_12.pth demo.jpg --work-dir work_dirs/ort

mmdeploy's own export step (mmdeploy.apis.torch2onnx, what its tools/torch2onnx.py and
tools/deploy.py run first; the same positional arguments), with the two things mmdeploy 1.3.1
needs of torch < 2.9 restored in this process only (mmdet_vanillanet/deploy/mmdeploy_compat.py).
mmdeploy fuses the backbone itself, which refuses a checkpoint saved before deep training
finished; the checkpoint must fit the config exactly. With an onnxruntime deploy config, the
file then runs in mmdeploy's onnxruntime backend beside the unfused PyTorch model on IMG (and
--test-img), and the tool prints how many of PyTorch's detections the file gives (same label,
IoU > 0.99) and how far their boxes, scores and masks are apart (a two-stage detector keeps
partly other detections, as mmdeploy rewrites the post-processing: compare the AP with
mmdeploy's tools/test.py). Other backends (TensorRT, ...) are built from end2end.onnx by
mmdeploy's own tools (tools/onnx2tensorrt.py).
"""
if __name__ == '__main__':  # first: Ctrl-C and SIGTERM during the imports below (seconds)
    from mmdet_runsafe.start import start_tool  # end the tool in one line
    start_tool()
import argparse
import sys

from mmdet.utils import register_all_modules

from mmdet_runsafe.cli import CfgOptions, force_weights_only_loading, one_line_errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('deploy_cfg', help="mmdeploy's deploy config (from its repository's "
                        'configs/mmdet/)')
    parser.add_argument('model_cfg', help='the detector config')
    parser.add_argument('checkpoint', help='its checkpoint, at the end of deep training')
    parser.add_argument('img', help='an image to trace the model on (and to compare)')
    parser.add_argument('--test-img', nargs='+', default=[],
                        help='more images to compare the exported model on')
    parser.add_argument('--work-dir', default='work_dirs/mmdeploy',
                        help='where to write the file (default work_dirs/mmdeploy)')
    parser.add_argument('--device', default='cpu', help='device to export and compare on')
    parser.add_argument('--force', action='store_true', help='overwrite an existing file')
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptions,
                        help='override settings of the model config (key=value)')
    return parser


def main():
    args = build_parser().parse_args()
    try:
        from mmdet_vanillanet.deploy.mmdeploy_export import export_with_mmdeploy, next_step
    except ImportError as err:  # mmdeploy is no dependency: its pins conflict with onnx's
        sys.exit(f'error: this tool needs mmdeploy ({err}); install it with pip install '
                 f'--no-deps mmdeploy==1.3.1 aenum (docs/deployment.md, mmdeploy)')
    force_weights_only_loading()
    register_all_modules()
    images = [args.img, *args.test_img]
    with one_line_errors():
        exported = export_with_mmdeploy(
            args.deploy_cfg, args.model_cfg, args.checkpoint, args.img, args.work_dir,
            args.device, args.force, args.cfg_options, test_images=args.test_img)
    print(f'wrote {exported.path} (mmdeploy, {exported.backend.value} deploy config)')
    for line in next_step(exported, args.deploy_cfg, images):
        print(line)


if __name__ == '__main__':
    main()
