"""The VanillaNet inside a detector: finding it through model wrappers, and fusing it for
deployment (the one function the deploy hook, tools/test.py --deploy and the benchmark use)."""
from typing import List

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper

from ..errors import InputError
from .checkpoint import count_params
from .vanillanet import VanillaNet


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a DDP/FSDP (or other MMEngine) wrapper, or the model itself."""
    return model.module if is_model_wrapper(model) else model


def vanillanets_of(model: nn.Module) -> List[VanillaNet]:
    """Every VanillaNet inside ``model`` (wrapped or not); an error when there is none."""
    module = unwrap_model(model)
    found = [m for m in module.modules() if isinstance(m, VanillaNet)]
    if not found:
        raise InputError(f'{type(module).__name__} has no VanillaNet backbone')
    return found


def fuse_detector(model: nn.Module) -> nn.Module:
    """Fuse every VanillaNet inside ``model`` (wrapped or not) in place, and return it."""
    for backbone in vanillanets_of(model):
        if not backbone.deploy:
            before = count_params(backbone.state_dict())
            backbone.switch_to_deploy()
            after = count_params(backbone.state_dict())
            print_log(f'fused VanillaNet-{backbone.arch_name}: {before / 1e6:.2f}M -> '
                      f'{after / 1e6:.2f}M parameters', logger='current')
    return model
