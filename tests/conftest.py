"""Fixtures; the helpers the tests share are in helpers.py."""
import pytest
import torch

from helpers import build_backbone, narrow, randomize
from mmdet_vanillanet.toolkit.toy_data import make_toy_coco


@pytest.fixture(scope='session')
def data_root(tmp_path_factory):
    """A tiny toy COCO set: 16 training and 6 validation images of 96x96."""
    root = tmp_path_factory.mktemp('toy') / 'data'
    make_toy_coco(str(root), num_train=16, num_val=6, image_size=(96, 96))
    return f'{root}/'


@pytest.fixture
def image():
    return torch.randn(2, 3, 70, 100, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope='session')
def random_narrow13():
    """A narrow arch-13 (act_num 4) network with random weights and BN statistics."""
    return randomize(build_backbone(arch=narrow('13'), act_num=4)).eval()
