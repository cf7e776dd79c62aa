"""Exporting a fused detector's backbone, neck or raw outputs to ONNX, and checking the file
with onnxruntime against PyTorch (``export_onnx``, what tools/export_onnx.py calls).

The parts: 'backbone' (the fused VanillaNet's maps), 'neck' (backbone + neck) and 'raw'
(backbone + neck + head: a single-stage detector's head outputs; for a two-stage one the neck
maps and the RPN head's outputs, which its RoI heads, run in PyTorch, start from). The legacy
(TorchScript) exporter is the default: its graphs are plain ONNX operators that TensorRT and
onnxruntime both take, and dynamic batch, height and width need no ranges; the dynamo exporter
(torch.export) is there as an option.

onnx and onnxruntime are the package's ``deploy`` extra, not runtime requirements: they are
imported when a function here needs them (``onnx_packages``), so that importing the deploy API
needs neither.
"""
import json
import os.path as osp
import warnings
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from mmengine.config import Config
from torch.onnx import _constants as onnx_constants

from mmdet_runsafe.class_order import config_classes
from mmdet_runsafe.config import load_config
from mmdet_runsafe.errors import Argument, InputError, output_exists
from mmdet_runsafe.memory import check_memory
from mmdet_runsafe.output_paths import check_output_file, new_file_for

from ..models.checkpoint.forms import count_params
from ..models.detector import fuse_detector, vanillanets_of
from .build import build_detector

PARTS = ('backbone', 'neck', 'raw')
OPSET = 17  # TensorRT 8.6+ and every current onnxruntime
# The 'weights' metadata of a file exported without a checkpoint.
GENERATED = 'generated: random, no checkpoint'


class ExportMismatchError(RuntimeError):
    """An exported file that does not compute what the PyTorch model does (it was removed)."""


class OnnxExport(NamedTuple):
    """What ``export_onnx`` wrote and how it was checked."""
    path: str
    part: str
    static: bool
    opset: int
    dynamo: bool
    parameters: int  # learned numbers of the exported modules
    checked_shapes: List[Tuple[int, ...]]  # the NCHW inputs onnxruntime ran
    max_rel_diff: float  # onnxruntime against PyTorch, relative to each output's magnitude
    checkpoint: Optional[str]  # None: generated (random) weights


def onnx_packages(needed_for: str = 'exporting'):
    """(onnx, onnxruntime), imported on first use; a one-line error when they are missing."""
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise InputError(f'{needed_for} needs onnx and onnxruntime ({err}); pip install onnx '
                         f'onnxruntime') from None
    return onnx, onnxruntime


@torch.no_grad()
def export_onnx(config: Union[str, Config], checkpoint: Optional[str], out: str,
                part: str = 'backbone', shape: Sequence[int] = (320, 480), static: bool = False,
                opset: int = OPSET, dynamo: bool = False, force: bool = False,
                cfg_options: Optional[dict] = None) -> OnnxExport:
    """Fuse the config's detector (with the checkpoint's weights; generated ones without a
    checkpoint) and write its ``part`` ('backbone', 'neck' or 'raw') to ``out``, with dynamic
    batch, height and width (``static``: fixed to one image of ``shape``), traced at ``shape``
    (H, W); write the arch, act_num, part and minimum input side into the file's metadata; then
    run the file in onnxruntime against PyTorch on the traced shape and another batch and size.
    A file that differs by more than 1e-4 of the outputs' magnitude is not written
    (ExportMismatchError), nor one onnxruntime cannot run; the file is written as
    ``out.partial`` and renamed into place when checked, so a failed export leaves no file and
    an existing ``out`` as it was. Bad input (an existing ``out`` without ``force``, a folder
    named ``out``, a missing folder, an opset the exporter does not support, a size below the
    backbone's minimum, a checkpoint saved before deep training finished) is an error before
    anything is written.

    Example::

        from mmdet_vanillanet.apis import export_onnx

        result = export_onnx('configs/retinanet_vanillanet13_coco.py', 'epoch_12.pth',
                             'retina.onnx', part='raw')
        result.max_rel_diff  # about 1e-6
    """
    onnx_packages()
    check_output_path(out, force, inputs=(checkpoint, config if isinstance(config, str) else None))
    check_opset(opset, dynamo)
    cfg = load_config(config, cfg_options)
    if cfg.model.backbone.get('type') != 'VanillaNet':
        raise InputError(f'{config if isinstance(config, str) else "the config"}: the backbone '
                         f'is {cfg.model.backbone.get("type")}, not a VanillaNet')
    detector = fuse_detector(build_detector(cfg, checkpoint))
    module = ExportedPart(detector, part).eval()
    side = detector.backbone.min_input_size
    if min(shape) < side:
        raise InputError(Argument('shape', tuple(shape)), f': each side must be at least '
                         f'{side} pixels for this backbone')
    h, w = shape
    shapes = [(1, 3, h, w)] if static else [(1, 3, h, w), (2, 3, h + 37, w + 65)]
    check_memory(module, shapes, Argument('shape', tuple(shape)), probe_side=2 * side)
    with new_file_for(out, replace=force) as partial:
        export(module, partial, shape, static=static, opset=opset, dynamo=dynamo)
        write_metadata(partial, module, checkpoint, config_classes(cfg))
        diff = check_with_onnxruntime(module, partial, shapes)
        if not diff <= 1e-4:
            raise ExportMismatchError(f'the exported file differs from PyTorch by {diff:.1e} '
                                      f'(above 1e-4); {out} was not written')
    return OnnxExport(out, part, static, opset, dynamo, module.parameter_count(), shapes, diff,
                      checkpoint)


class ExportedPart(nn.Module):
    """The part of a detector to export, returning a flat tuple of tensors."""

    def __init__(self, detector: nn.Module, part: str):
        super().__init__()
        if part not in PARTS:
            raise InputError(Argument('part', part), f': choose one of {list(PARTS)}')
        if part != 'backbone' and not getattr(detector, 'with_neck', False):
            raise InputError(Argument('part', part), f': {type(detector).__name__} has no neck')
        self.detector, self.part = detector, part
        # The head by name, not as a second submodule: the dynamo exporter names a weight by the
        # first path it meets (head.rpn_conv.weight), and every weight must be detector.<path>.
        self.head_name = None
        if part == 'raw':
            self.head_name = next((name for name in ('bbox_head', 'rpn_head')
                                   if getattr(detector, name, None) is not None), None)
            if self.head_name is None:
                raise InputError(Argument('part', part), f': {type(detector).__name__} has '
                                 f'neither a bbox_head nor an rpn_head')

    @property
    def head(self) -> Optional[nn.Module]:
        return getattr(self.detector, self.head_name) if self.head_name else None

    def parameter_count(self) -> int:
        """Learned numbers of the modules the export runs."""
        parts = [self.detector.backbone]
        if self.part != 'backbone':
            parts.append(self.detector.neck)
        if self.head is not None:
            parts.append(self.head)
        return sum(count_params(m.state_dict()) for m in parts)

    @property
    def two_stage(self) -> bool:
        return self.part == 'raw' and not hasattr(self.detector, 'bbox_head')

    def _named_groups(self, x: torch.Tensor) -> List[Tuple[str, Sequence[torch.Tensor]]]:
        """The part's outputs as (name prefix, maps) groups; each map is named prefix + index."""
        feats = self.detector.backbone(x)
        if self.part == 'backbone':
            return [('backbone', feats)]
        feats = self.detector.neck(feats)
        if self.part == 'neck':
            return [('neck', feats)]
        head = 'rpn_head' if self.two_stage else 'head'
        groups = [(f'{head}_out{j}_level', group) for j, group in enumerate(self.head(feats))]
        return [('neck', feats), *groups] if self.two_stage else groups

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(t for _, maps in self._named_groups(x) for t in maps)

    def output_names(self, x: torch.Tensor) -> List[str]:
        with torch.no_grad():
            return [f'{prefix}{i}' for prefix, maps in self._named_groups(x)
                    for i in range(len(maps))]


def export(module: ExportedPart, path: str, shape: Sequence[int], static: bool = False,
           opset: int = OPSET, dynamo: bool = False) -> List[str]:
    """Write ``module`` to ``path`` for inputs of (batch 1) ``shape`` (H, W), with dynamic
    batch, height and width unless ``static``; returns the output names."""
    x = torch.randn(1, 3, *shape)
    names = module.output_names(x)
    kwargs = dict(input_names=['input'], output_names=names, opset_version=opset)
    if not static:
        if dynamo:
            side = module.detector.backbone.min_input_size
            dims = {0: torch.export.Dim('batch', max=1024),
                    2: torch.export.Dim('height', min=side, max=16384),
                    3: torch.export.Dim('width', min=side, max=16384)}
            kwargs['dynamic_shapes'] = (dims, )
        else:
            kwargs['dynamic_axes'] = {'input': {0: 'batch', 2: 'height', 3: 'width'}}
    with torch.no_grad(), warnings.catch_warnings():
        # The backbone's input-size check is Python: the legacy tracer warns that the graph
        # will not keep it; the minimum size goes into the file's metadata instead.
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        torch.onnx.export(module, (x, ), path, dynamo=dynamo, **kwargs)
    return names


def group_outputs(names: Sequence[str], values: Sequence) -> List[list]:
    """A file's outputs grouped as the part returned them (the inverse of ``output_names``:
    the maps named one prefix + index form a group), in order."""
    groups: Dict[str, list] = {}
    for name, value in zip(names, values):
        groups.setdefault(name.rstrip('0123456789'), []).append(value)
    return list(groups.values())


def backbone_metadata(backbone: nn.Module) -> Dict[str, str]:
    """The metadata a config must match to use the file: its VanillaNet's arch and act_num."""
    return dict(vanillanet_arch=backbone.arch_name,
                vanillanet_dims=','.join(map(str, backbone.arch.dims)),
                act_num=str(backbone.act_num))


def write_metadata(path: str, module: ExportedPart, checkpoint: Optional[str],
                   classes: Sequence[str]):
    """What a consumer of the file needs to know that the graph cannot say: where its weights
    come from (``checkpoint``'s file name, or ``GENERATED``: None) and what its labels mean
    (``classes``, the config's, which a checkpoint's were checked against; a JSON list)."""
    onnx, _ = onnx_packages()
    backbone = vanillanets_of(module.detector)[0]
    model = onnx.load(path)
    weights = f'checkpoint {osp.basename(checkpoint)}' if checkpoint else GENERATED
    for key, value in dict(**backbone_metadata(backbone), part=module.part,
                           min_input_size=str(backbone.min_input_size), weights=weights,
                           input='RGB-normalised NCHW float32 (the data preprocessor\'s output), '
                                 'each side at least min_input_size',
                           **(dict(classes=json.dumps(list(classes))) if classes else {})).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, path)


def check_with_onnxruntime(module: ExportedPart, path: str,
                           shapes: Sequence[Tuple[int, ...]]) -> float:
    """Largest difference of any output, relative to that output's largest magnitude, between
    onnxruntime running ``path`` and PyTorch, over inputs of the given NCHW shapes."""
    session = onnxruntime_session(path)
    worst = 0.0
    for shape in shapes:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = [t.numpy() for t in module(x)]
        got = session.run(None, {'input': x.numpy()})
        for e, g in zip(expected, got):
            if e.shape != g.shape:
                raise InputError(f'{path}: onnxruntime gave an output of shape {g.shape} where '
                                 f'PyTorch gives {e.shape} for input {tuple(shape)}')
            worst = max(worst, float(np.abs(e - g).max() / max(np.abs(e).max(), 1e-12)))
    return worst


def onnxruntime_session(path: str, device: str = 'cpu', threads: Optional[int] = None,
                        needed_for: str = 'exporting'):
    """An onnxruntime InferenceSession for ``path`` on the CPU (``threads`` intra-op threads)
    or, where onnxruntime-gpu is installed, on CUDA."""
    _, onnxruntime = onnx_packages(needed_for)
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    provider = 'CUDAExecutionProvider' if device.startswith('cuda') else 'CPUExecutionProvider'
    if provider not in onnxruntime.get_available_providers():
        raise InputError(f'onnxruntime has no {provider} here (install onnxruntime-gpu for '
                         f'CUDA); available: {onnxruntime.get_available_providers()}')
    try:
        return onnxruntime.InferenceSession(path, options, providers=[provider])
    except Exception as err:  # onnxruntime's errors (InvalidProtobuf, Fail, ...) share no base
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f'onnxruntime cannot load {path} ({reason}): give an ONNX file '
                         f'written by export_onnx (tools/export_onnx.py) at its default opset '
                         f'{OPSET}') from None


def supported_opsets(dynamo: bool = False) -> range:
    """The opsets torch's exporter writes (the legacy one stops below the newest)."""
    newest = onnx_constants.ONNX_MAX_OPSET if dynamo else getattr(
        onnx_constants, 'ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET', onnx_constants.ONNX_MAX_OPSET)
    return range(onnx_constants.ONNX_MIN_OPSET, newest + 1)


def check_opset(opset: int, dynamo: bool = False):
    """Before any work: an opset the chosen exporter supports (onnxruntime's own limits are
    met when the file is checked: a file it cannot run is not written)."""
    opsets = supported_opsets(dynamo)
    if opset not in opsets:
        raise InputError(Argument('opset', opset), f': the {"dynamo" if dynamo else "legacy"} '
                         f'exporter writes opsets {opsets.start} to {opsets.stop - 1} (default '
                         f'{OPSET})')


def check_output_path(path: str, force: bool, inputs: Sequence[Optional[str]] = ()):
    """Before any work: the file must be new (or ``force``), not a link, a folder or one of
    ``inputs`` (even with ``force``), and its folder writable."""
    check_output_file(path, 'the output file', inputs)  # first: a folder is named as a folder
    if not path.endswith('.onnx'):
        raise InputError(f'{path}: the output file must end in .onnx')
    if osp.lexists(path) and not force:
        raise output_exists(path)
