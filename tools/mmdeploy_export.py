"""Export a VanillaNet detector with mmdeploy 1.3.1 under torch >= 2.9, and compare the exported
model's detections with PyTorch's.

    python tools/mmdeploy_export.py DEPLOY_CFG MODEL_CFG CKPT IMG [--work-dir DIR] [--test-img ...]
    python tools/mmdeploy_export.py \\
        $MMDEPLOY/configs/mmdet/instance-seg/instance-seg_onnxruntime_dynamic.py \\
        configs/mask_rcnn_vanillanet13_coco.py epoch_12.pth demo.jpg --work-dir work_dirs/ort

It is mmdeploy's own export step (mmdeploy.apis.torch2onnx, what its tools/torch2onnx.py and
tools/deploy.py run first; the same positional arguments): mmdeploy builds the detector, fuses
the backbone itself (``switch_to_deploy``, which refuses a checkpoint saved before deep training
finished), traces it on IMG with its rewriters (post-processing inside the graph) and writes
WORK_DIR/end2end.onnx (the deploy config's ``save_file``). mmdeploy 1.3.1 predates torch 2.9 and
relies on two things torch no longer has; this tool restores them in its own process, so that
mmdeploy's files stay as installed:

- ``torch.onnx.export`` uses the dynamo exporter unless told ``dynamo=False`` (torch >= 2.9);
  mmdeploy's rewriters and symbolics drive the TorchScript one, so its calls get dynamo=False;
- ``torch.onnx.symbolic_opset9._cast_Long`` is gone; mmdeploy's RoIAlign symbolic for
  onnxruntime (two-stage detectors) imports it: it is defined again, a Cast to int64.

The checkpoint must fit the config exactly (mmdeploy alone loads a partial one with a warning).
With an onnxruntime deploy config, the file then runs in mmdeploy's onnxruntime backend beside
the unfused PyTorch model on IMG (and --test-img), and the tool prints how many of PyTorch's
detections the file gives (same label, IoU > 0.99) and how far their boxes, scores and masks
are apart. A single-stage detector gives them all; a two-stage one keeps partly other
detections, as mmdeploy rewrites the post-processing (its RPN runs one NMS over all levels,
MMDetection one per level): compare the AP with mmdeploy's tools/test.py. Other backends
(TensorRT, ...) are built from end2end.onnx by mmdeploy's own tools (tools/onnx2tensorrt.py),
which do not go through torch.onnx.
"""
import argparse
import functools
import inspect
import os.path as osp
import sys

import torch
import torch.onnx.symbolic_opset9 as opset9
from mmdet.structures.bbox import bbox_overlaps
from mmdet.utils import register_all_modules
from mmengine.config import DictAction

from mmdet_vanillanet.errors import InputError
from mmdet_vanillanet.toolkit.build import build_detector
from mmdet_vanillanet.toolkit.cli import force_weights_only_loading, load_config, one_line_errors

try:
    import aenum  # noqa: F401  (mmdeploy needs it to register the mmdet codebase)
    from mmdeploy.apis import torch2onnx
    from mmdeploy.apis.utils import build_task_processor
    from mmdeploy.apis.utils.utils import check_backend_device
    from mmdeploy.utils import Backend, get_backend, get_input_shape, get_ir_config
    from mmdeploy.utils import load_config as load_deploy_config
except ImportError as err:  # mmdeploy is no dependency: its pins conflict with onnx's
    sys.exit(f'error: this tool needs mmdeploy ({err}); install it with pip install --no-deps '
             f'mmdeploy==1.3.1 aenum (README, Deployment: mmdeploy)')


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the model config (key=value)')
    return parser.parse_args()


def legacy_exporter_by_default():
    """torch >= 2.9: a torch.onnx.export call without ``dynamo`` gets the TorchScript exporter,
    the one mmdeploy's rewriters were written for (as before torch 2.9)."""
    export = torch.onnx.export
    dynamo = inspect.signature(export).parameters.get('dynamo')
    if dynamo is None or dynamo.default is not True:
        return  # torch < 2.9 exports with TorchScript already

    @functools.wraps(export)
    def legacy_export(*args, **kwargs):
        kwargs.setdefault('dynamo', False)
        return export(*args, **kwargs)

    torch.onnx.export = legacy_export


def cast_long_symbolic():
    """What ``symbolic_opset9._cast_Long(g, x, non_blocking)`` was, for mmdeploy's RoIAlign."""
    if not hasattr(opset9, '_cast_Long'):
        opset9._cast_Long = lambda g, x, non_blocking: g.op(
            'Cast', x, to_i=torch.onnx.TensorProtoDataType.INT64)


def matches(want, got):
    """(i, j) pairs: PyTorch's detection i and the exported model's j of the same label that
    overlaps it most, where that IoU is above 0.99."""
    if not (len(want) and len(got)):
        return []
    iou = bbox_overlaps(want.bboxes, got.bboxes.to(want.bboxes))
    iou[want.labels[:, None] != got.labels.to(want.labels)[None, :]] = 0
    best, match = iou.max(1)
    return [(i, match[i].item()) for i in torch.nonzero(best > 0.99).flatten().tolist()]


@torch.no_grad()
def compare(reference, onnx_file, deploy_cfg, model_cfg, images, device):
    """The exported file in mmdeploy's onnxruntime backend against ``reference`` (the unfused
    PyTorch detector), both on the input mmdeploy prepares from each image."""
    task = build_task_processor(model_cfg, deploy_cfg, device)
    backend = task.build_backend_model(
        [onnx_file], data_preprocessor_updater=task.update_data_preprocessor)
    found = total = given = mask_pixels = mask_diff = 0
    box = score = 0.0
    with_masks = False
    for image in images:
        data, _ = task.create_input(image, get_input_shape(deploy_cfg))
        want = reference.test_step(data)[0].pred_instances
        got = backend.test_step(data)[0].pred_instances
        total, given = total + len(want), given + len(got)
        for i, j in matches(want, got):
            found += 1
            box = max(box, (want.bboxes[i] - got.bboxes[j].to(want.bboxes)).abs().max().item())
            score = max(score, abs(want.scores[i].item() - got.scores[j].item()))
            if 'masks' in want:
                with_masks = True
                mask_pixels += int(want.masks[i].sum())
                mask_diff += int((want.masks[i].bool() != got.masks[j].bool()).sum())
    masks = f', mask pixels differing {mask_diff} of {mask_pixels}' if with_masks else ''
    print(f'mmdeploy onnxruntime vs PyTorch on {len(images)} image(s): PyTorch {total} '
          f'detections, onnxruntime {given}; {found} of PyTorch\'s found (same label, IoU > '
          f'0.99), max box difference {box:.1e} px, max score difference {score:.1e}{masks}')
    if found < total:
        print("(mmdeploy's own post-processing, its rewrites and the deploy config's settings, "
              'may keep other detections than the model\'s test_cfg: compare the AP with '
              "mmdeploy's tools/test.py)")


def main():
    args = parse_args()
    force_weights_only_loading()
    register_all_modules()
    images = [args.img, *args.test_img]
    with one_line_errors():
        for label, path in (('deploy config', args.deploy_cfg), ('checkpoint', args.checkpoint),
                            *(('image', image) for image in images)):
            if not osp.isfile(path):
                raise FileNotFoundError(f'{label} not found: {path}')
        model_cfg = load_config(args.model_cfg, args.cfg_options)
        deploy_cfg = load_deploy_config(args.deploy_cfg)[0]
        try:  # TensorRT exports on a GPU, OpenVINO on the CPU
            check_backend_device(deploy_cfg, args.device)
        except ValueError as err:
            raise InputError(f'--device {args.device}: {err}; choose the device the backend '
                             f'runs on') from None
        save_file = get_ir_config(deploy_cfg)['save_file']
        out = osp.join(args.work_dir, save_file)
        if osp.exists(out) and not args.force:
            raise FileExistsError(f'{out} exists; pass --force to overwrite it')
        reference = build_detector(model_cfg, args.checkpoint).to(args.device)  # fits exactly
        legacy_exporter_by_default()
        cast_long_symbolic()
        torch2onnx(args.img, args.work_dir, save_file, deploy_cfg, model_cfg, args.checkpoint,
                   device=args.device)
    backend = get_backend(deploy_cfg)
    print(f'wrote {out} (mmdeploy, {backend.value} deploy config)')
    if backend == Backend.ONNXRUNTIME:
        compare(reference, out, deploy_cfg, model_cfg, images, args.device)
    else:
        print(f'build the {backend.value} model from it with mmdeploy\'s tools (TensorRT: '
              f'tools/onnx2tensorrt.py {args.deploy_cfg} {out} PREFIX)')


if __name__ == '__main__':
    main()
