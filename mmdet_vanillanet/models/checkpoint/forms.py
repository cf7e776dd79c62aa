"""The forms the released VanillaNet checkpoints come in, and what their tensors say.

The authors' files hold the ImageNet weights under ``model_ema``, ``model`` or ``state_dict`` or
bare, in training-mode layout (``stem1``, ``stages.i.conv1`` ...) or deploy layout (``stem``,
``stages.i.conv``), with classifier keys (``cls1``, ``cls2``, ``cls``); detector checkpoints
carry the backbone's keys under ``backbone.`` (and ``module.`` when saved from DDP). This module
finds the backbone's tensors in any of them and reads off the layout, act_num and widths, from
the tensors alone, and counts parameters.

A backbone saved before deep training ends also holds the scalar ``act_learn`` (see
vanillanet.py): no weight of the released layouts, so the fit checks pass over it, and fusion
refuses weights saved at any value but 1.
"""
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch

from mmdet_runsafe.errors import CheckpointError

from ..arch_settings import ARCH_SETTINGS

StateDict = Dict[str, torch.Tensor]

CONTAINER_KEYS = ('model_ema', 'state_dict', 'model')
CLASSIFIER = re.compile(r'^(cls|cls1|cls2)\.')
PREFIXES = ('module.', 'backbone.')
ACT_LEARN = 'act_learn'  # the state-dict key of a backbone saved at act_learn != 1


def adopt_meta_act_learn(checkpoint) -> None:
    """Checkpoints written by 0.2.0 in the middle of deep training hold act_learn in their meta
    rather than their state dict: it is moved there (in place), so that they compute, and are
    refused by fusion, as they were trained."""
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get('state_dict'), dict):
        return
    value = (checkpoint.get('meta') or {}).get('act_learn')
    state = checkpoint['state_dict']
    if value is None or value == 1 or any(k.endswith(ACT_LEARN) for k in state):
        return
    prefix = 'module.' if any(k.startswith('module.backbone.') for k in state) else ''
    state[f'{prefix}backbone.{ACT_LEARN}'] = torch.tensor(float(value), dtype=torch.float64)


def container_state(checkpoint) -> StateDict:
    """The state dict inside any released container (or the bare state dict itself)."""
    state = checkpoint
    for key in CONTAINER_KEYS:
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            state = checkpoint[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f'no state dict found: expected tensors under one of {CONTAINER_KEYS} or at the top '
            f'level, found keys {list(state)[:8] if isinstance(state, dict) else type(state)}')
    return state


def backbone_state_dict(checkpoint, prefix: Optional[str] = None) -> StateDict:
    """The backbone's tensors from any released container, prefixes and classifier removed."""
    state = container_state(checkpoint)
    for p in (prefix, ) if prefix else PREFIXES:
        if any(k.startswith(p) for k in state):
            state = OrderedDict((k[len(p):], v) for k, v in state.items() if k.startswith(p))
    return OrderedDict((k, v) for k, v in state.items() if not CLASSIFIER.match(k))


def layout_of(state: StateDict) -> str:
    """'training' or 'deploy': the key layout of a backbone's state dict."""
    if 'stem1.0.weight' in state:
        return 'training'
    if 'stem.0.weight' in state:
        return 'deploy'
    raise CheckpointError(f'not a VanillaNet checkpoint: neither stem1.0.weight (training '
                          f'layout) nor stem.0.weight (deploy layout) among its keys '
                          f'{list(state)[:8]}')


def activation_keys(state: StateDict) -> List[str]:
    """The keys of the series activations' kernels (stem and every stage), either layout."""
    return [k for k in state if k in ('stem2.2.weight', 'stem.1.weight')
            or re.fullmatch(r'stages\.\d+\.act\.weight', k)]


def act_num_of(state: StateDict) -> int:
    kernels = {state[k].shape[-1] for k in activation_keys(state)}
    if len(kernels) != 1:
        raise CheckpointError(f'activation kernels of mixed sizes {sorted(kernels)}')
    return (kernels.pop() - 1) // 2


def dims_of(state: StateDict) -> Tuple[int, ...]:
    """Stem width, then each stage's output width, read off the weight shapes."""
    deploy = layout_of(state) == 'deploy'
    dims = [state['stem.0.weight' if deploy else 'stem1.0.weight'].shape[0]]
    i = 0
    while f'stages.{i}.act.weight' in state:
        dims.append(state[f'stages.{i}.act.weight'].shape[0])
        i += 1
    return tuple(dims)


def describe_backbone(state: StateDict) -> str:
    """'arch 13 (training layout, act_num 4)' or the widths when no released arch matches."""
    try:
        dims, act_num, layout = dims_of(state), act_num_of(state), layout_of(state)
    except (CheckpointError, KeyError):
        return 'an unrecognised layout'
    names = [name for name, spec in ARCH_SETTINGS.items() if spec.dims == dims]
    arch = f'arch {" or ".join(names)}' if names else f'custom widths {dims}'
    return f'{arch} ({layout} layout, act_num {act_num})'


def count_params(state: StateDict) -> int:
    """Learned numbers in a state dict (BN running statistics are not parameters); the one
    count every tool and test uses, for modules through their ``state_dict()``."""
    return sum(v.numel() for k, v in state.items()
               if not k.endswith(('running_mean', 'running_var', 'num_batches_tracked',
                                  ACT_LEARN)))
