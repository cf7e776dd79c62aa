"""Loading the released VanillaNet checkpoints, unchanged, and checking that they fit.

The authors' files come in several forms: the ImageNet weights under ``model_ema``, ``model``
or ``state_dict`` or bare, in training-mode layout (``stem1``, ``stages.i.conv1`` ...) or deploy
layout (``stem``, ``stages.i.conv``), with classifier keys (``cls1``, ``cls2``, ``cls``); and
detector checkpoints whose backbone keys carry the ``backbone.`` prefix. All are accepted; a
file that does not fit the model is an error that says why, never a silent partial load.

A backbone saved before deep training ends also holds the scalar ``act_learn`` (see
vanillanet.py); it is no weight of the released layouts, so the fit checks pass over it, and
fusion refuses weights saved at any value but 1.

Everything here works on tensors: the shapes a model expects come from its ArchSpec
(``expected_state``), and conversion to the deploy layout applies fusion.py's math to the
file's tensors (``fuse_state_dict``); no network is built.
"""
import re
from collections import OrderedDict
from typing import Dict, Optional, Tuple

import torch
from mmengine.logging import print_log

from ..errors import CheckpointError, deploy_layout_error
from ..serialization import safe_load
from .arch_settings import ARCH_SETTINGS, ArchSpec
from .fusion import BN, fold_bn, merge_1x1

StateDict = Dict[str, torch.Tensor]

CONTAINER_KEYS = ('model_ema', 'state_dict', 'model')
CLASSIFIER = re.compile(r'^(cls|cls1|cls2)\.')
PREFIXES = ('module.', 'backbone.')
# Tensors a fitting file may lack: BN's counters are absent from files of old torch versions.
OPTIONAL_KEYS = re.compile(r'.*num_batches_tracked$')
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
    if 'stem1.0.weight' in state:
        return 'training'
    if 'stem.0.weight' in state:
        return 'deploy'
    raise CheckpointError(f'not a VanillaNet checkpoint: neither stem1.0.weight (training '
                          f'layout) nor stem.0.weight (deploy layout) among its keys '
                          f'{list(state)[:8]}')


def _activation_keys(state: StateDict):
    return [k for k in state if k in ('stem2.2.weight', 'stem.1.weight')
            or re.fullmatch(r'stages\.\d+\.act\.weight', k)]


def act_num_of(state: StateDict) -> int:
    kernels = {state[k].shape[-1] for k in _activation_keys(state)}
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


def key_problems(wrong, missing, unexpected):
    """'shape mismatches (2): a, b; missing keys (7): c, d, e, f, ...' for each non-empty list."""
    return [f'{label} ({len(items)}): {", ".join(items[:4])}' + (', ...' if len(items) > 4 else '')
            for label, items in (('shape mismatches', wrong), ('missing keys', missing),
                                 ('unexpected keys', unexpected)) if items]


def check_fits(model_state: StateDict, state: StateDict, filename: str):
    """Raise a CheckpointError naming what differs, the act_num first (the common case)."""
    kernels = [state[k].shape[-1] for k in _activation_keys(model_state) if k in state]
    model_kernel = model_state[_activation_keys(model_state)[0]].shape[-1]
    if kernels and model_kernel not in kernels:
        kernel = kernels[0]
        file_act_num = (kernel - 1) // 2
        raise CheckpointError(
            f'{filename} was trained with act_num={file_act_num} ({kernel}x{kernel} activation '
            f'kernels) but the model has act_num={(model_kernel - 1) // 2}: set '
            f'act_num={file_act_num} in the backbone config')
    # act_learn is no tensor to fit: the load sets it from the file, 1 where the file has none.
    missing = [k for k in model_state if k not in state and not OPTIONAL_KEYS.match(k)
               and k != ACT_LEARN]
    unexpected = [k for k in state if k not in model_state and k != ACT_LEARN]
    wrong = [f'{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}'
             for k, v in model_state.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f'{filename} does not fit this VanillaNet ({describe_backbone(model_state)}); the '
            f'file holds {describe_backbone(state)}. '
            + '; '.join(key_problems(wrong, missing, unexpected)))


def _bn(state: StateDict, prefix: str, eps: float) -> BN:
    return BN(state[f'{prefix}.weight'], state[f'{prefix}.bias'],
              state[f'{prefix}.running_mean'], state[f'{prefix}.running_var'], eps)


def _conv_bn(state: StateDict, prefix: str, eps: float):
    """A released (conv, BN) pair, keys ``prefix.0.*`` and ``prefix.1.*``, folded."""
    return fold_bn(state[f'{prefix}.0.weight'], state[f'{prefix}.0.bias'],
                   _bn(state, f'{prefix}.1', eps))


def fuse_state_dict(state: StateDict, norm_eps: float = 1e-6) -> StateDict:
    """Deploy-layout weights from training-layout ones: the fusion of ``switch_to_deploy``,
    applied to the tensors (every BN folded, each block's two 1x1 convs merged)."""
    act_learn = float(state.get(ACT_LEARN, 1.0))
    if act_learn != 1.0:
        raise CheckpointError(
            f'these weights were saved at act_learn={act_learn}, before deep training finished: '
            'their 1x1 conv pairs merge into one conv only at act_learn=1, so fusing them would '
            'change what they compute; use a checkpoint from the end of the schedule')
    fused = OrderedDict()
    fused['stem.0.weight'], fused['stem.0.bias'] = merge_1x1(
        *_conv_bn(state, 'stem1', norm_eps), *_conv_bn(state, 'stem2', norm_eps))
    fused['stem.1.weight'], fused['stem.1.bias'] = fold_bn(
        state['stem2.2.weight'], None, _bn(state, 'stem2.2.bn', norm_eps))
    for i in range(len(dims_of(state)) - 1):
        stage = f'stages.{i}'
        fused[f'{stage}.conv.weight'], fused[f'{stage}.conv.bias'] = merge_1x1(
            *_conv_bn(state, f'{stage}.conv1', norm_eps),
            *_conv_bn(state, f'{stage}.conv2', norm_eps))
        fused[f'{stage}.act.weight'], fused[f'{stage}.act.bias'] = fold_bn(
            state[f'{stage}.act.weight'], None, _bn(state, f'{stage}.act.bn', norm_eps))
    return fused


def expected_state(arch: ArchSpec, act_num: int, layout: str) -> StateDict:
    """The released key layout of a backbone, as tensors on the meta device (shapes only)."""
    k = 2 * act_num + 1
    shapes = OrderedDict()

    def conv(prefix, out_c, in_c, size=1):
        shapes[f'{prefix}.weight'] = (out_c, in_c, size, size)
        shapes[f'{prefix}.bias'] = (out_c, )

    def bn(prefix, c):
        for name in ('weight', 'bias', 'running_mean', 'running_var'):
            shapes[f'{prefix}.{name}'] = (c, )
        shapes[f'{prefix}.num_batches_tracked'] = ()

    def act(prefix, c):
        shapes[f'{prefix}.weight'] = (c, 1, k, k)
        if layout == 'deploy':
            shapes[f'{prefix}.bias'] = (c, )
        else:
            bn(f'{prefix}.bn', c)

    d = arch.dims
    if layout == 'deploy':
        conv('stem.0', d[0], 3, 4)
        act('stem.1', d[0])
    else:
        conv('stem1.0', d[0], 3, 4)
        bn('stem1.1', d[0])
        conv('stem2.0', d[0], d[0])
        bn('stem2.1', d[0])
        act('stem2.2', d[0])
    for i in range(arch.num_stages):
        stage = f'stages.{i}'
        if layout == 'deploy':
            conv(f'{stage}.conv', d[i + 1], d[i])
        else:
            conv(f'{stage}.conv1.0', d[i], d[i])
            bn(f'{stage}.conv1.1', d[i])
            conv(f'{stage}.conv2.0', d[i + 1], d[i])
            bn(f'{stage}.conv2.1', d[i + 1])
        act(f'{stage}.act', d[i + 1])
    return OrderedDict((key, torch.empty(shape, device='meta', dtype=torch.int64
                                         if key.endswith('num_batches_tracked') else None))
                       for key, shape in shapes.items())


def require_training_layout(filename: str, purpose: str, remedy: str):
    """Raise ``deploy_layout_error`` if ``filename`` holds a fused backbone."""
    if checkpoint_layout(filename) == 'deploy':
        raise deploy_layout_error(filename, purpose, remedy)


def load_pretrained(model, filename: str, prefix: Optional[str] = None):
    """Load a released checkpoint (any form above) into a VanillaNet backbone, or fail loudly."""
    checkpoint = safe_load(filename)
    adopt_meta_act_learn(checkpoint)
    state = backbone_state_dict(checkpoint, prefix)
    layout = layout_of(state)
    if layout == 'deploy' and not model.deploy:
        raise deploy_layout_error(
            filename, 'be loaded into a training-mode VanillaNet',
            'set deploy=True in the backbone config for inference, or start from the '
            'training-mode checkpoint to train')
    fuse = model.deploy and layout == 'training'
    check_fits(expected_state(model.arch, model.act_num, layout) if fuse
               else model.state_dict(), state, filename)
    source = describe_backbone(state)
    if fuse:
        state = fuse_state_dict(state, model.norm_cfg.get('eps', 1e-5))
    # check_fits has proved every key and shape, bar the optional num_batches_tracked.
    model.load_state_dict(state, strict=False)
    print_log(f'VanillaNet-{model.arch_name}: loaded {len(state)} tensors from {filename} '
              f'({source}{", fused on load" if fuse else ""})', logger='current')


def checkpoint_layout(filename: str) -> str:
    """'training' or 'deploy': the layout of the VanillaNet weights in a checkpoint file.

    Memory-mapped, so that asking costs no read of the whole file."""
    return layout_of(backbone_state_dict(safe_load(filename, mmap=True)))


def count_params(state: StateDict) -> int:
    """Learned numbers in a state dict (BN running statistics are not parameters); the one
    count every tool and test uses, for modules through their ``state_dict()``."""
    return sum(v.numel() for k, v in state.items()
               if not k.endswith(('running_mean', 'running_var', 'num_batches_tracked',
                                  ACT_LEARN)))
