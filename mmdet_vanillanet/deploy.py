"""Fusing a whole detector for deployment: the one function the deploy hook, tools/test.py
--deploy and the benchmark use."""
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper

from .errors import InputError


def fuse_detector(model: nn.Module) -> nn.Module:
    """Fuse every VanillaNet inside ``model`` (wrapped or not) in place, and return it."""
    from .models import VanillaNet
    module = model.module if is_model_wrapper(model) else model
    backbones = [m for m in module.modules() if isinstance(m, VanillaNet)]
    if not backbones:
        raise InputError(f'{type(module).__name__} has no VanillaNet to fuse')
    for backbone in backbones:
        if not backbone.deploy:
            before = sum(p.numel() for p in backbone.parameters())
            backbone.switch_to_deploy()
            after = sum(p.numel() for p in backbone.parameters())
            print_log(f'fused VanillaNet-{backbone.arch_name}: {before / 1e6:.2f}M -> '
                      f'{after / 1e6:.2f}M parameters', logger='current')
    return model
