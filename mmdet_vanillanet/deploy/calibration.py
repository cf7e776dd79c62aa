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

from ..errors import Argument, InputError

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
def calibration_inputs(cfg: Config, split: str = 'val', num: int = 64, seed: int = 0,
                       static_shape: Optional[Sequence[int]] = None) -> List[np.ndarray]:
    """``num`` inputs (NCHW float32, batch 1; every image of the split if it has fewer) as the
    exported file takes them. ``static_shape`` (H, W): a file with a fixed input size gets each
    tensor padded to it with zeros, as the preprocessor pads a batch."""
    if num < 1:
        raise InputError(Argument('num_images', num), ': calibrate on at least one image')
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    dataset = DATASETS.build(split_dataset_cfg(cfg, split))
    preprocessor = MODELS.build(copy.deepcopy(cfg.model.data_preprocessor))
    order = np.random.default_rng(seed).permutation(len(dataset))[:num]
    inputs = []
    for index in order:
        tensor = preprocessor(pseudo_collate([dataset[int(index)]]), False)['inputs']
        inputs.append(pad_to(tensor.float().numpy(), static_shape))
    return inputs


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
    onnxruntime.quantization.CalibrationDataReader) over prepared inputs."""

    def __init__(self, inputs: Sequence[np.ndarray], name: str = 'input'):
        self.inputs, self.name, self.position = list(inputs), name, 0

    def get_next(self):
        if self.position >= len(self.inputs):
            return None
        self.position += 1
        return {self.name: self.inputs[self.position - 1]}

    def rewind(self):
        self.position = 0
