"""The VanillaNet inside a detector: finding it through model wrappers, and fusing it for
deployment (the one function the deploy hook, tools/test.py --deploy, the exporters and the
benchmark use). A detector checkpoint is checked and loaded by checkpoint/detector_weights.py."""
import copy
from typing import List

import torch.nn as nn
from mmengine.logging import print_log

from mmdet_runsafe.errors import InputError
from mmdet_runsafe.runner_state import unwrap_model

from .checkpoint.forms import count_params
from .vanillanet import VanillaNet


def vanillanets_of(model: nn.Module) -> List[VanillaNet]:
    """Every VanillaNet inside ``model`` (wrapped or not); an error when there is none."""
    module = unwrap_model(model)
    found = [m for m in module.modules() if isinstance(m, VanillaNet)]
    if not found:
        raise InputError(f'{type(module).__name__} has no VanillaNet backbone')
    return found


def fuse_detector(model: nn.Module, inplace: bool = True) -> nn.Module:
    """Fuse every VanillaNet inside ``model`` (a detector, wrapped or not, or a bare backbone)
    for deployment, and return the fused model: ``model`` itself, or with ``inplace=False`` a
    fused deep copy, ``model`` untouched (as timm's ``reparameterize_model``). A backbone
    saved before deep training ended (act_learn < 1) is refused: fusing it would change what
    it computes.

    Example::

        from mmdet.apis import init_detector
        from mmdet_vanillanet.apis import fuse_detector

        model = init_detector('configs/mask_rcnn_vanillanet13_coco.py', 'epoch_12.pth')
        deployed = fuse_detector(model, inplace=False)  # model itself stays trainable
        deployed.backbone.deploy  # True: every block is one 1x1 conv and one activation
    """
    if not inplace:
        model = copy.deepcopy(model)
    for backbone in vanillanets_of(model):
        if not backbone.deploy:
            before = count_params(backbone.state_dict())
            backbone.switch_to_deploy()
            after = count_params(backbone.state_dict())
            print_log(f'fused VanillaNet-{backbone.arch_name}: {before / 1e6:.2f}M -> '
                      f'{after / 1e6:.2f}M parameters', logger='current')
    return model
