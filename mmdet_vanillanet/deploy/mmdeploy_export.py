"""A VanillaNet detector exported by mmdeploy 1.3.1 under torch >= 2.9, and the exported
model's detections compared with PyTorch's (tools/mmdeploy_export.py).

It is mmdeploy's own export step (``mmdeploy.apis.torch2onnx``, what its tools/torch2onnx.py
and tools/deploy.py run first): mmdeploy builds the detector, fuses the backbone itself
(``switch_to_deploy``, which refuses a checkpoint saved before deep training finished), traces
it on an image with its rewriters (post-processing inside the graph) and writes
WORK_DIR/end2end.onnx (the deploy config's ``save_file``), with torch restored for it in this
process (mmdeploy_compat.py). The checkpoint must fit the config exactly (mmdeploy alone loads
a partial one with a warning).

With an onnxruntime deploy config, the file can then run in mmdeploy's onnxruntime backend
beside the unfused PyTorch model (``compare_with_pytorch``): how many of PyTorch's detections
the file gives (same label, IoU > 0.99) and how far their boxes, scores and masks are apart. A
single-stage detector gives them all; a two-stage one keeps partly other detections, as mmdeploy
rewrites the post-processing (its RPN runs one NMS over all levels, MMDetection one per level).
Other backends (TensorRT, ...) are built from end2end.onnx by mmdeploy's own tools.

mmdeploy is no dependency (its pins conflict with onnx's): importing this module needs it
(pip install --no-deps mmdeploy==1.3.1 aenum).
"""
import os.path as osp
from typing import List, NamedTuple, Optional, Sequence

import aenum  # noqa: F401  (mmdeploy needs it to register the mmdet codebase)
import torch
from mmdeploy.apis import torch2onnx
from mmdeploy.apis.utils import build_task_processor
from mmdeploy.apis.utils.utils import check_backend_device
from mmdeploy.utils import Backend, get_backend, get_input_shape, get_ir_config
from mmdeploy.utils import load_config as load_deploy_config
from mmdet.structures.bbox import bbox_overlaps
from mmengine.config import Config

from mmdet_runsafe.config import load_config
from mmdet_runsafe.errors import Argument, InputError, output_exists

from .build import build_detector
from .mmdeploy_compat import restore_torch_for_mmdeploy


class MmdeployExport(NamedTuple):
    """What ``export_with_mmdeploy`` wrote, and what comparing it needs."""
    path: str
    backend: Backend
    deploy_cfg: Config
    model_cfg: Config
    reference: torch.nn.Module  # the unfused PyTorch detector, with the checkpoint's weights
    device: str


def export_with_mmdeploy(deploy_cfg: str, model_cfg: str, checkpoint: str, image: str,
                         work_dir: str = 'work_dirs/mmdeploy', device: str = 'cpu',
                         force: bool = False, cfg_options: Optional[dict] = None,
                         test_images: Sequence[str] = ()) -> MmdeployExport:
    """mmdeploy's torch2onnx of the detector, traced on ``image``, into ``work_dir``; every
    file (``test_images`` too, for a later comparison) is checked before any work."""
    for label, path in (('deploy config', deploy_cfg), ('checkpoint', checkpoint),
                        *(('image', i) for i in (image, *test_images))):
        if not osp.isfile(path):
            raise FileNotFoundError(f'{label} not found: {path}')
    model = load_config(model_cfg, cfg_options)
    deploy = load_deploy_config(deploy_cfg)[0]
    try:  # TensorRT exports on a GPU, OpenVINO on the CPU
        check_backend_device(deploy, device)
    except ValueError as err:
        raise InputError(Argument('device', device), f': {err}; choose the device the '
                         f'backend runs on') from None
    save_file = get_ir_config(deploy)['save_file']
    out = osp.join(work_dir, save_file)
    if osp.exists(out) and not force:
        raise output_exists(out)
    reference = build_detector(model, checkpoint).to(device)  # fits exactly
    restore_torch_for_mmdeploy()
    torch2onnx(image, work_dir, save_file, deploy, model, checkpoint, device=device)
    return MmdeployExport(out, get_backend(deploy), deploy, model, reference, device)


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
def compare_with_pytorch(exported: MmdeployExport, images: Sequence[str]) -> List[str]:
    """The exported file in mmdeploy's onnxruntime backend against the unfused PyTorch
    detector, both on the input mmdeploy prepares from each image: the lines that say how
    far their detections are apart."""
    task = build_task_processor(exported.model_cfg, exported.deploy_cfg, exported.device)
    backend = task.build_backend_model(
        [exported.path], data_preprocessor_updater=task.update_data_preprocessor)
    found = total = given = mask_pixels = mask_diff = 0
    box = score = 0.0
    with_masks = False
    for image in images:
        data, _ = task.create_input(image, get_input_shape(exported.deploy_cfg))
        want = exported.reference.test_step(data)[0].pred_instances
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
    lines = [f'mmdeploy onnxruntime vs PyTorch on {len(images)} image(s): PyTorch {total} '
             f'detections, onnxruntime {given}; {found} of PyTorch\'s found (same label, IoU > '
             f'0.99), max box difference {box:.1e} px, max score difference {score:.1e}{masks}']
    if found < total:
        lines.append("(mmdeploy's own post-processing, its rewrites and the deploy config's "
                     "settings, may keep other detections than the model's test_cfg: compare "
                     "the AP with mmdeploy's tools/test.py)")
    return lines


def next_step(exported: MmdeployExport, deploy_cfg: str, images: Sequence[str]) -> List[str]:
    """After the export: the comparison for onnxruntime, or how to build another backend."""
    if exported.backend == Backend.ONNXRUNTIME:
        return compare_with_pytorch(exported, images)
    return [f'build the {exported.backend.value} model from it with mmdeploy\'s tools '
            f'(TensorRT: tools/onnx2tensorrt.py {deploy_cfg} {exported.path} PREFIX)']
