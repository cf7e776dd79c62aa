"""The images a quantization calibrates on: N images of one of the config's dataset splits, drawn
at random (seeded), read through the config's test pipeline and the model's data preprocessor,
so that the ranges onnxruntime measures are those of the tensors the exported file takes
(normalised RGB, padded to the preprocessor's multiple). Images read another way (unnormalised,
random noise) give the file ranges it never sees in use and cost AP.
"""
import copy
from typing import List, Optional, Sequence

import numpy as np
import torch
from mmdet.registry import DATASETS, MODELS
from mmdet.utils import get_test_pipeline_cfg
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.registry import init_default_scope
from mmengine.utils import ProgressBar

from mmdet_runsafe.errors import Argument, InputError
from mmdet_runsafe.input_paths import check_input_file

SPLITS = ('train', 'val', 'test')


def split_dataset_cfg(cfg: Config, split: str) -> Config:
    """The dataset of ``split``'s dataloader with the config's test pipeline, in test mode (no
    empty-image filtering: a calibration image needs no annotation); a dataset wrapper
    (RepeatDataset, ClassBalancedDataset) is unwrapped."""
    if split not in SPLITS:
        raise InputError(Argument('split', split), f': choose one of {list(SPLITS)}')
    loader = cfg.get(f'{split}_dataloader')
    if not loader or not loader.get('dataset'):
        raise InputError(Argument('split', split),
                         f': the config has no {split}_dataloader.dataset')
    dataset = copy.deepcopy(loader.dataset)
    while 'pipeline' not in dataset and 'dataset' in dataset:
        dataset = dataset.dataset
    dataset.pipeline = copy.deepcopy(get_test_pipeline_cfg(cfg))
    dataset.test_mode = True
    return dataset


@torch.no_grad()
def calibration_inputs(cfg: Config, split: str = 'train', num: int = 64, seed: int = 0,
                       static_shape: Optional[Sequence[int]] = None,
                       progress: bool = False) -> List[np.ndarray]:
    """``num`` inputs (NCHW float32, batch 1; every image of the split if it has fewer) as the
    exported file takes them. ``static_shape`` (H, W): a file with a fixed input size gets each
    tensor padded to it with zeros, as the preprocessor pads a batch. An annotation file or
    image that is not a regular file (a FIFO would block the read), or an image the pipeline
    cannot read, is an InputError naming it."""
    if num < 1:
        raise InputError(Argument('num_images', num), ': calibrate on at least one image')
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    dataset = DATASETS.build(dict(split_dataset_cfg(cfg, split), lazy_init=True))
    if isinstance(getattr(dataset, 'ann_file', None), str) and '://' not in dataset.ann_file:
        check_input_file(dataset.ann_file, f'the annotation file of the {split} split')
    dataset.full_init()
    preprocessor = MODELS.build(copy.deepcopy(cfg.model.data_preprocessor))
    order = np.random.default_rng(seed).permutation(len(dataset))[:num]
    bar = None
    if progress:
        print(f'reading {len(order)} calibration images of the {split} split')
        bar = ProgressBar(len(order))
    inputs = []
    try:
        for index in order:
            data = read_image(dataset, int(index), split)
            tensor = preprocessor(pseudo_collate([data]), False)['inputs']
            inputs.append(pad_to(tensor.float().numpy(), static_shape))
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:  # the bar's line ends, also before an error's line
            print(flush=True)
    return inputs


def read_image(dataset, index: int, split: str) -> dict:
    """The dataset's item ``index`` through the test pipeline; a problem with its image file
    is an InputError naming it."""
    path = dataset.get_data_info(index).get('img_path')
    if isinstance(path, str) and '://' not in path:
        check_input_file(path, f'the image of the {split} split')
    try:
        return dataset[index]
    except Exception as err:  # mmcv's reading and decoding raise many types (AssertionError)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ''
        raise InputError(f'the image {path} of the {split} split cannot be read through the '
                         f'config\'s test pipeline ({type(err).__name__}{": " if reason else ""}'
                         f'{reason}); restore or remove it, or calibrate on another ',
                         Argument('split')) from None


def pad_to(array: np.ndarray, shape: Optional[Sequence[int]]) -> np.ndarray:
    """``array`` (NCHW) zero-padded at the bottom and right to ``shape`` (H, W), if given."""
    if shape is None:
        return array
    h, w = array.shape[-2:]
    if h > shape[0] or w > shape[1]:
        raise InputError(f'a calibration image is {h}x{w} after the test pipeline, larger than '
                         f'the file\'s fixed input {shape[0]}x{shape[1]}: export the file with '
                         f'dynamic shapes, or with a larger fixed input size')
    return np.pad(array, [(0, 0), (0, 0), (0, shape[0] - h), (0, shape[1] - w)])


class CalibrationReader:
    """onnxruntime's calibration data reader (the get_next/rewind protocol of
    onnxruntime.quantization.CalibrationDataReader) over prepared inputs; with ``progress``, a
    progress bar of the inputs onnxruntime has taken (it runs the file on each as it takes it),
    ended by ``done``."""

    def __init__(self, inputs: Sequence[np.ndarray], name: str = 'input', progress: bool = False):
        self.inputs, self.name, self.position = list(inputs), name, 0
        self.bar = None
        if progress:
            print(f'measuring the activations\' ranges on {len(self.inputs)} images')
            self.bar = ProgressBar(len(self.inputs))

    def get_next(self):
        if self.position >= len(self.inputs):
            return None
        self.position += 1
        if self.bar is not None and self.bar.completed < len(self.inputs):
            self.bar.update()
        return {self.name: self.inputs[self.position - 1]}

    def rewind(self):
        self.position = 0

    def done(self):
        if self.bar is not None:
            print()
