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

from mmdet_runsafe.errors import InputError

from ..models.detector import vanillanets_of

KEYS = ('decay_rate', 'num_layers')


def vanillanet_layer_id(name: str, num_layers: int) -> int:
    if name.startswith('backbone.stem'):
        return 0
    if name.startswith('backbone.stages.'):
        return int(name.split('.')[2]) // 2 + 1
    return num_layers + 1


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class VanillaNetLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Layer-wise lr decay over a VanillaNet detector's layer groups (module docstring).

    ``paramwise_cfg`` takes ``decay_rate`` (default 0.6) and ``num_layers`` (default 6, the
    authors' value for VanillaNet-13: stages two by two, then the stem); ``num_layers`` must
    cover every stage of the backbone. Other paramwise keys (custom_keys, bias_decay_mult, ...)
    are refused rather than silently ignored: this constructor sets every group itself.

    Example (in a config)::

            optim_wrapper = dict(
                type='OptimWrapper',
                constructor='VanillaNetLayerDecayOptimizerConstructor',
                paramwise_cfg=dict(decay_rate=0.6, num_layers=6),
                optimizer=dict(type='AdamW', lr=1.3e-4, weight_decay=0.05))
    """

    def add_params(self, params: List[dict], module: nn.Module, **kwargs) -> None:
        unknown = sorted(set(self.paramwise_cfg) - set(KEYS))
        if unknown:
            raise InputError(f'VanillaNetLayerDecayOptimizerConstructor: paramwise_cfg keys '
                             f'{unknown} are not supported; it takes {list(KEYS)}')
        num_layers = self.paramwise_cfg.get('num_layers', 6)
        decay_rate = self.paramwise_cfg.get('decay_rate', 0.6)
        needed = (vanillanets_of(module)[0].arch.num_stages - 1) // 2 + 1
        if not isinstance(num_layers, int) or num_layers < needed:
            raise InputError(f'paramwise_cfg.num_layers={num_layers!r}: this backbone\'s stages '
                             f'fall into layer groups 1..{needed}, so num_layers must be an '
                             f'integer >= {needed}')
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
