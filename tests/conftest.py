"""Shared helpers: narrow archs (same depth and strides, widths / 64) and non-trivial weights."""
import copy

import pytest
import torch
from mmdet.registry import MODELS

import mmdet_vanillanet  # noqa: F401  (registers VanillaNet)
from mmdet_vanillanet.models import ARCH_SETTINGS
from mmdet_vanillanet.synthetic import max_rel_diff, randomize  # noqa: F401

ARCHS = list(ARCH_SETTINGS)


def narrow(arch: str, divisor: int = 64) -> dict:
    """The released arch with every width divided by ``divisor``: same depth, strides, pools."""
    spec = ARCH_SETTINGS[arch]
    return dict(dims=[d // divisor for d in spec.dims], strides=list(spec.strides),
                ada_pool=spec.ada_pool, stem_stride=spec.stem_stride,
                stem_padding=spec.stem_padding)


def build_backbone(**cfg):
    """Build through mmdet's registry, as a config would."""
    return MODELS.build(dict(type='VanillaNet', **cfg))


@pytest.fixture(scope='session')
def data_root(tmp_path_factory):
    """A tiny toy COCO set: 16 training and 6 validation images of 96x96."""
    from mmdet_vanillanet.toy_data import make_toy_coco
    root = tmp_path_factory.mktemp('toy') / 'data'
    make_toy_coco(str(root), num_train=16, num_val=6, image_size=(96, 96))
    return f'{root}/'


@pytest.fixture
def image():
    return torch.randn(2, 3, 70, 100, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope='session')
def trained_narrow13():
    """A narrow arch-13 (act_num 4) network with random weights and BN statistics."""
    return randomize(build_backbone(arch=narrow('13'), act_num=4)).eval()


class RunsCode:
    """Pickles as a call of open(marker, 'w'): a checkpoint holding it would create the marker
    file when unpickled without weights_only protection."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def fused_copy(model):
    fused = copy.deepcopy(model)
    fused.switch_to_deploy()
    return fused
