"""Detections from an exported raw ONNX file (``tools/export_onnx.py ... --part raw``):
onnxruntime runs what the file holds and MMDetection's own code does the rest, so that the
detections are the PyTorch model's.

- Preprocessing: the config's test pipeline (images from paths or arrays, loaded as
  MMDetection's DetInferencer loads them) and the model's data preprocessor.
- A single-stage detector (RetinaNet, ...): the file holds the network up to the head's
  outputs; the head's own ``predict_by_feat`` decodes them (priors, box coder, NMS).
- A two-stage detector (Mask R-CNN, ...): the file holds backbone, neck and RPN head; the RPN
  head's ``predict_by_feat`` gives the proposals, and the RoI heads (box and mask) run in
  PyTorch on the file's neck maps, with their weights from the checkpoint.
"""
import copy
import json
from typing import Any, List, Optional, Sequence, Union

import cv2
import numpy as np
import torch
from mmcv.transforms import Compose
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import get_test_pipeline_cfg
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.logging import print_log
from mmengine.registry import init_default_scope

from mmdet_runsafe.class_order import check_saved_classes, config_classes
from mmdet_runsafe.config import load_config
from mmdet_runsafe.errors import Argument, InputError
from mmdet_runsafe.input_paths import check_input_file

from ..models.checkpoint.detector_weights import load_detector_weights
from .equivalence import max_rel_diff
from .onnx_export import (
    GENERATED,
    ExportedPart,
    backbone_metadata,
    group_outputs,
    onnxruntime_session,
)
from .quantized_file import preprocessing_differences, quantization_record, weight_mismatches

# A quantized file's RPN outputs differ from the checkpoint's by design (0.8 % of their
# magnitude on the demo model with every node int8): a loose second guard behind the weight
# check.
INT8_RPN_TOLERANCE = 0.1

Image = Union[str, np.ndarray]


# The largest minimum input side a file's metadata may give: far above any VanillaNet's (its
# total stride or a few times that); the file is checked on an input of twice the side, and a
# crafted '99999999999' made that a RuntimeError (storage size overflowed).
MAX_MIN_INPUT_SIZE = 4096

class OnnxDetector:
    """A detector whose network runs in onnxruntime from a raw ONNX file, decoded by the
    config's MMDetection heads.

    Args:
        config: the config (path or Config) the file was exported from; it gives the test
            pipeline, the data preprocessor and the heads' decoding settings (``test_cfg``).
        onnx_file: written by ``tools/export_onnx.py CONFIG [CKPT] OUT.onnx --part raw``,
            or its INT8 version by ``tools/quantize_onnx.py`` (decoded the same way).
        checkpoint: the checkpoint the file was exported from. A two-stage detector needs it
            (its RoI heads run in PyTorch); a single-stage one has every weight in the file.
        device: where onnxruntime ('cuda' needs onnxruntime-gpu) and the PyTorch heads run.
        threads: onnxruntime's intra-op threads (default: onnxruntime's choice).

    A file that does not fit the config (another arch or act_num, not the raw part, another
    detector's outputs, another number of classes or anchors per location; a quantized file
    calibrated with another data preprocessor's mean, std, channel order or padding) or, for a
    two-stage detector, whose RPN head differs from the checkpoint's (for a quantized file:
    whose neck and RPN weights are not the checkpoint's to within a quantization step), and a
    checkpoint whose classes differ from the config's, are refused with an
    :class:`InputError`, as are inputs it cannot take (see ``predict``). A file exported
    without a checkpoint (random weights) is run with a warning.

    Example::

        from mmdet_vanillanet.apis import OnnxDetector

        # toy.onnx: tools/export_onnx.py configs/mask_rcnn_vanillanet_toy.py epoch_40.pth
        #           toy.onnx --part raw (or export_onnx(..., part='raw'))
        detector = OnnxDetector('configs/mask_rcnn_vanillanet_toy.py', 'toy.onnx',
                                'epoch_40.pth', threads=2)
        samples = detector.predict(['a.jpg', 'b.jpg'])  # or an array, or a dataloader batch
        samples[0].pred_instances  # bboxes, scores, labels (and masks)
    """

    def __init__(self, config: Union[str, Config], onnx_file: str,
                 checkpoint: Optional[str] = None, device: str = 'cpu',
                 threads: Optional[int] = None):
        cfg = load_config(config)
        init_default_scope(cfg.get('default_scope', 'mmdet'))
        check_input_file(onnx_file, 'ONNX file')
        self.onnx_file = onnx_file
        # Built without init_weights: the heads get the checkpoint's weights, decoding needs
        # none, and the backbone runs only once, to name the outputs the file must have.
        self.model = MODELS.build(cfg.model).to(device).eval()
        self.part = ExportedPart(self.model, 'raw')  # a one-line error without neck or head
        self.session = onnxruntime_session(onnx_file, device, threads,
                                           needed_for='running an ONNX file')
        self.min_input_size = self._check_metadata(cfg)
        if checkpoint:
            load_detector_weights(self.model, checkpoint, device, classes=config_classes(cfg))
        elif self.part.two_stage:
            raise InputError(f'{type(self.model).__name__} runs its RoI heads in PyTorch: give '
                             f'the checkpoint {onnx_file} was exported from')
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._check_outputs()
        self.pipeline = Compose(image_pipeline(cfg))

    @torch.no_grad()
    def predict(self, inputs: Union[Image, Sequence[Image], dict]) -> List[DetDataSample]:
        """Detections for an image (path or HWC BGR uint8 array), a non-empty list of images
        (run as one padded batch) or a data batch from the config's dataloader; one
        DetDataSample per image with ``pred_instances`` as ``model.test_step`` gives them
        (rescaled to the original image). Anything else (an empty list, a file that is not an
        image, a tensor, an array that is not HxWx3, an image the test pipeline cannot resize)
        is an :class:`InputError` naming it."""
        if not isinstance(inputs, dict):
            inputs = pseudo_collate([self._prepare(image, i) for i, image
                                     in enumerate(_image_list(inputs))])
        data = self.model.data_preprocessor(inputs, False)
        images, samples = data['inputs'], data['data_samples']
        if min(images.shape[-2:]) < self.min_input_size:
            raise InputError(f'input {images.shape[-2]}x{images.shape[-1]}: {self.onnx_file} '
                             f'needs each side at least {self.min_input_size} pixels (its graph '
                             f'does not check it); resize the image larger')
        neck, head_outputs = self._run(images)
        metas = [sample.metainfo for sample in samples]
        # The calls model.predict makes, from the head's outputs on.
        if self.part.two_stage:
            proposals = self.part.head.predict_by_feat(*head_outputs, batch_img_metas=metas,
                                                       rescale=False)
            results = self.model.roi_head.predict(neck, proposals, samples, rescale=True)
        else:
            results = self.part.head.predict_by_feat(*head_outputs, batch_img_metas=metas,
                                                     rescale=True)
        return self.model.add_pred_to_datasample(samples, results)

    def _prepare(self, image: Image, index: int) -> dict:
        """One image through the test pipeline; its problems as one-line errors."""
        if isinstance(image, str):
            check_input_file(image, 'image')
            if not cv2.haveImageReader(image):
                raise InputError(f'{image} is not an image file OpenCV can read')
            # img_id is one of PackDetInputs' meta keys; an image outside a dataset has none.
            data, what = dict(img_path=image, img_id=index), image
        else:
            data, what = dict(img=image, img_id=index), f'image {index}'
        try:
            return self.pipeline(data)
        except cv2.error as err:  # a resize to 0 pixels, above all
            size = 'x'.join(map(str, (cv2.imread(image) if isinstance(image, str)
                                      else image).shape[1::-1]))
            raise InputError(f'{what} ({size}, width x height): the config\'s test pipeline '
                             f'cannot resize it ({str(err).strip().splitlines()[-1]}); an image '
                             f'this elongated must be cropped first') from None

    def _run(self, images: torch.Tensor):
        """The file's outputs on ``images``: (neck maps or None, the head's output groups)."""
        values = self.session.run(None, {'input': images.cpu().numpy()})
        groups = group_outputs(self.output_names,
                               [torch.from_numpy(v).to(images.device) for v in values])
        return (tuple(groups[0]), groups[1:]) if self.part.two_stage else (None, groups)

    def _check_metadata(self, cfg: Config) -> int:
        """Refuse a file that is not the config's raw part, one exported with other classes
        (or in another order) than the config's, and a quantized file calibrated on
        tensors another preprocessing made (its int8 ranges would not fit them); warn of a file
        without trained weights. Sets
        ``quantization`` (the record, or None) and returns the file's minimum input side."""
        meta = self.session.get_modelmeta().custom_metadata_map
        if 'part' not in meta:
            raise InputError(f'{self.onnx_file} has no VanillaNet metadata: write it with '
                             f'export_onnx (tools/export_onnx.py) and ', Argument('part', 'raw'))
        if meta['part'] != 'raw':
            raise InputError(f'{self.onnx_file} holds the {meta["part"]} part; decoding '
                             f'detections needs the head outputs: export it with ',
                             Argument('part', 'raw'))
        wrong = [f'{key} {meta.get(key)} where the config has {value}' for key, value
                 in backbone_metadata(self.part.detector.backbone).items()
                 if meta.get(key) != value]
        if wrong:
            raise InputError(f'{self.onnx_file} does not fit the config: {"; ".join(wrong)}; '
                             f'export it from this config')
        check_saved_classes(f'{self.onnx_file} was exported with', self._recorded_classes(meta),
                            config_classes(cfg))
        if meta.get('weights') == GENERATED:
            print_log(f'{self.onnx_file} was exported without a checkpoint: its weights are '
                      f'random, and so are its detections', logger='current', level=30)
        self.quantization = quantization_record(meta, self.onnx_file)
        if self.quantization is not None:
            self._check_preprocessing(cfg)
        side = meta.get('min_input_size', '')
        if not (side.isdigit() and 1 <= int(side) <= MAX_MIN_INPUT_SIZE):
            raise InputError(f'{self.onnx_file}: its metadata min_input_size {side!r} is not a '
                             f'positive whole number up to {MAX_MIN_INPUT_SIZE} (the config\'s '
                             f'backbone needs {self.part.detector.backbone.min_input_size}); '
                             f'export the file again')
        return int(side)

    def _recorded_classes(self, meta: dict) -> Optional[List[str]]:
        """The classes the file was exported with (None: a file of before they were
        recorded)."""
        if 'classes' not in meta:
            return None
        try:
            classes = json.loads(meta['classes'])
        except ValueError:
            classes = None
        if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
            raise InputError(f'{self.onnx_file}: its metadata classes {meta["classes"][:80]!r} '
                             f'is not a JSON list of names; export the file again')
        return classes

    def _check_preprocessing(self, cfg: Config):
        recorded = self.quantization.get('preprocessing')
        if recorded is None:  # quantized before the record was written
            print_log(f'{self.onnx_file} does not record the preprocessing it was calibrated '
                      f'with: make sure the config\'s data preprocessor (mean, std, channel '
                      f'order, padding) is the one it was quantized with, or quantize it again',
                      logger='current', level=30)
            return
        wrong = preprocessing_differences(recorded, cfg)
        if wrong:
            raise InputError(f'{self.onnx_file} was calibrated on tensors of another '
                             f'preprocessing than the config\'s data preprocessor: '
                             f'{"; ".join(wrong)}; its int8 ranges would not fit what it is '
                             f'given. Use the config it was quantized with, or quantize it again '
                             f'with this one')

    @torch.no_grad()
    def _check_outputs(self):
        """The file must give the outputs the config's detector gives (same heads and levels)
        and, for a two-stage detector, its RPN head must be the checkpoint's, or the RoI heads
        would decode maps of another network: checked once on a small input."""
        side = 2 * self.min_input_size
        x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))
        x = x.to(self.model.data_preprocessor.device)
        expected = self.part.output_names(x)
        if self.output_names != expected:
            raise InputError(f'{self.onnx_file} gives {len(self.output_names)} outputs '
                             f'({", ".join(self.output_names[:3])}, ...) where the config\'s '
                             f'{type(self.model).__name__} gives {len(expected)} '
                             f'({", ".join(expected[:3])}, ...); export it from this config')
        neck, head_outputs = self._run(x)
        self._check_shapes(x, [*(neck or ()), *(t for group in head_outputs for t in group)])
        if self.part.two_stage:
            tolerance = 1e-3
            if self.quantization is not None:
                self._check_quantized_weights()
                tolerance = INT8_RPN_TOLERANCE
            flat = [t for group in head_outputs for t in group]
            diff = max_rel_diff([t for group in self.part.head(neck) for t in group], flat)
            if not diff <= tolerance:
                raise InputError(f'the RPN head in {self.onnx_file} differs from the '
                                 f'checkpoint\'s (by {diff:.2g} of its outputs\' magnitude): '
                                 f'give the checkpoint the file was exported from')

    def _check_quantized_weights(self):
        """A quantized file's neck and RPN head weights, dequantized, must be the
        checkpoint's to within rounding: its outputs cannot tell a neighbouring checkpoint
        of the same run from the right one (quantized_file.py says why)."""
        compared, wrong = weight_mismatches(self.onnx_file, self.model.state_dict(),
                                            ('neck.', 'rpn_head.'))
        if not compared:
            raise InputError(f'{self.onnx_file}: none of its weights is named as the config\'s '
                             f'neck or RPN head; quantize a file tools/export_onnx.py wrote')
        if wrong:
            raise InputError(f'the weights in {self.onnx_file} are not the checkpoint\'s '
                             f'({len(wrong)} of {compared} differ, e.g. {wrong[0]}): give the '
                             f'checkpoint the file was exported from')

    def _check_shapes(self, x: torch.Tensor, outputs: list):
        """The file's outputs on ``x`` must have the shapes of the config's: a head's channels
        are its anchors per location times its classes (or box deltas), and a file of another
        num_classes would otherwise decode into wrong labels, or fail deep inside MMDetection."""
        head = self.part.head
        for name, e, g in zip(self.output_names, self.part(x), outputs):
            if tuple(e.shape) != tuple(g.shape):
                raise InputError(
                    f'{self.onnx_file}: output {name} has shape {tuple(g.shape)} where the '
                    f'config\'s {type(head).__name__} ({getattr(head, "num_classes", "?")} '
                    f'classes, {getattr(head, "num_base_priors", "?")} anchors per location) '
                    f'gives {tuple(e.shape)}: the file was exported from a config with another '
                    f'number of classes or anchors; export it from this config')


def _image_list(inputs) -> list:
    """``predict``'s images as a non-empty list of paths and HxWx3 arrays."""
    images = [inputs] if isinstance(inputs, (str, np.ndarray, torch.Tensor)) else inputs
    if not isinstance(images, (list, tuple)) or not images:
        raise InputError(f'predict: give an image path, an HxWx3 BGR array, a non-empty list '
                         f'of them, or a data batch (got {type(images).__name__} '
                         f'{images!r:.40})')
    for i, image in enumerate(images):
        if isinstance(image, torch.Tensor):
            raise InputError(f'predict: image {i} is a torch tensor; give an HxWx3 BGR uint8 '
                             f'numpy array (as cv2.imread gives), a path, or a data batch')
        if isinstance(image, np.ndarray) and (image.ndim != 3 or image.shape[2] != 3):
            raise InputError(f'predict: image {i} is an array of shape {image.shape}; give an '
                             f'HxWx3 BGR array (as cv2.imread gives)')
        if not isinstance(image, (str, np.ndarray)):
            raise InputError(f'predict: image {i} is of type {type(image).__name__}; give a '
                             f'path or an HxWx3 BGR array')
    return list(images)


def image_pipeline(cfg: Config) -> List[Any]:
    """The config's test pipeline, loading a path or an array as DetInferencer does."""
    pipeline = copy.deepcopy(get_test_pipeline_cfg(cfg))
    loaders = [t for t in pipeline if t['type'].split('.')[-1] == 'LoadImageFromFile']
    if not loaders:
        raise InputError('the config\'s test pipeline has no LoadImageFromFile to replace')
    loaders[0]['type'] = 'mmdet.InferencerLoader'
    return pipeline
