"""Fixtures; the helpers the tests share are in helpers.py."""
import os

# The Triton kernel's tests run in Triton's interpreter (CI has no GPU). Triton reads this when
# it is first imported, and torch may import it early, so it is set here, before any test
# module is collected. Subprocesses (helpers.run) do not inherit it.
os.environ['TRITON_INTERPRET'] = '1'

import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import build_backbone, narrow, randomize  # noqa: E402
from mmdet_vanillanet.toolkit.toy_data import make_toy_coco  # noqa: E402


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
