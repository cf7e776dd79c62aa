"""Layer-wise learning-rate decay for VanillaNet detectors (the authors' detection setting).

Layers are numbered from the input: the stem is 0, stage i is i // 2 + 1 (two stages per group),
and the neck and heads come last at num_layers + 1. Each group's lr is scaled by
decay_rate ** (num_layers + 2 - layer_id - 1), so the pretrained early layers move least.
Biases and 1-D parameters (BN, activation biases) get no weight decay.
"""
from typing import List

import torch.nn as nn
from mmdet.registry import OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor


def vanillanet_layer_id(name: str, num_layers: int) -> int:
    if name.startswith('backbone.stem'):
        return 0
    if name.startswith('backbone.stages.'):
        return int(name.split('.')[2]) // 2 + 1
    return num_layers + 1


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class VanillaNetLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """``paramwise_cfg=dict(decay_rate=0.6, num_layers=6)`` as in the authors' configs."""

    def add_params(self, params: List[dict], module: nn.Module, **kwargs) -> None:
        num_layers = self.paramwise_cfg.get('num_layers', 6)
        decay_rate = self.paramwise_cfg.get('decay_rate', 0.6)
        groups = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            no_decay = param.ndim == 1 or name.endswith('.bias')
            layer_id = vanillanet_layer_id(name, num_layers)
            key = (layer_id, no_decay)
            if key not in groups:
                scale = decay_rate ** (num_layers + 2 - layer_id - 1)
                groups[key] = dict(params=[], param_names=[], lr_scale=scale,
                                   lr=scale * self.base_lr,
                                   weight_decay=0. if no_decay else self.base_wd,
                                   group_name=f'layer_{layer_id}_'
                                   f'{"no_decay" if no_decay else "decay"}')
            groups[key]['params'].append(param)
            groups[key]['param_names'].append(name)
        for key in sorted(groups):
            group = groups[key]
            print_log(f'{group["group_name"]}: lr_scale {group["lr_scale"]:.4g}, '
                      f'weight_decay {group["weight_decay"]}, {len(group["params"])} params',
                      logger='current')
            params.append(group)
