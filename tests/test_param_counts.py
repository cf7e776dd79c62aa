"""Real-width parameter counts against the reference table (built on the meta device: no memory).

The table counts the ImageNet classifier, which a detection backbone has not got. We add it
back: deploy mode has one 1x1 conv dims[-1] -> 1000 (``cls.2``); training mode has that conv
with a BN (``cls1``) and a 1000 -> 1000 conv (``cls2``).
"""
import pytest
import torch

from helpers import build_backbone
from mmdet_vanillanet.models import ARCH_SETTINGS
from mmdet_vanillanet.models.checkpoint.forms import count_params

CLASSES = 1000
DEPLOY_M = {'5': 15.5, '6': 32.5, '7': 32.8, '8': 37.1, '9': 41.4, '10': 45.7, '11': 50.0,
            '12': 54.3, '13': 58.6, '13_x1_5': 127.8, '13_x1_5_ada_pool': 127.8}
TRAINING_M = {'5': 22.3, '13': 107.7}


def _params(arch, deploy):
    with torch.device('meta'):
        model = build_backbone(arch=arch, act_num=3, deploy=deploy)
    return count_params(model.state_dict())


@pytest.mark.parametrize('arch', list(DEPLOY_M))
def test_deploy_params_match_the_table(arch):
    classifier = ARCH_SETTINGS[arch].dims[-1] * CLASSES + CLASSES
    assert round((_params(arch, True) + classifier) / 1e6, 1) == DEPLOY_M[arch]


@pytest.mark.parametrize('arch', list(TRAINING_M))
def test_training_params_match_the_table(arch):
    classifier = (ARCH_SETTINGS[arch].dims[-1] * CLASSES + CLASSES + 2 * CLASSES
                  + CLASSES * CLASSES + CLASSES)
    assert round((_params(arch, False) + classifier) / 1e6, 1) == TRAINING_M[arch]
