"""A checkpoint's weights into a VanillaNet backbone (``init_cfg=dict(type='Pretrained')``), a
training-mode file fused into the deploy layout, and the layout of the weights in a file, asked
before anything is built or loaded.

Every form of forms.py is accepted; a file that does not fit is an error that says why (fit.py);
a deploy-layout file cannot go into a training-mode backbone. Fusing a file is fusing a network:
the training network the file describes is built on the meta device, takes the file's tensors
and fuses itself (``switch_to_deploy``), so a converted or fused-on-load file and a network
fused in memory are one computation, whatever norm the run trained with. That norm (type, eps)
cannot be read off the tensors: it comes from the backbone's config, checked against the one the
file records (recorded_config.py) where it records one.
"""
from typing import Optional

import torch
import torch.nn as nn
from mmengine.logging import print_log
from torch.nn.modules.batchnorm import _BatchNorm

from mmdet_runsafe.errors import CheckpointError, InputError
from mmdet_runsafe.serialization import safe_load

from ...config_error import ConfigError
from .fit import check_fits
from .forms import (
    StateDict,
    adopt_meta_act_learn,
    backbone_state_dict,
    describe_backbone,
    layout_of,
)
from .recorded_config import recorded_model_cfg


def training_network(backbone_type: type, cfg: dict, what: str) -> nn.Module:
    """The training-mode backbone ``cfg`` describes (a backbone config; its ``type``, ``deploy``
    and ``init_cfg`` are set here), of class ``backbone_type``, built on the meta device: keys
    and shapes, no memory, no initialisation, until it is given tensors (``fused_state``).
    ``what`` names the config in errors."""
    kwargs = {k: v for k, v in cfg.items() if k not in ('type', 'deploy', 'init_cfg')}
    try:
        with torch.device('meta'):
            return backbone_type(**kwargs, deploy=False, init_cfg=None)
    except (ConfigError, TypeError) as err:
        raise InputError(f'{what}: its backbone config does not build a {backbone_type.__name__} '
                         f'({err})') from None


def _norm_layer(backbone: nn.Module) -> nn.Module:
    """A norm layer of the backbone (one norm_cfg builds them all)."""
    return next(m for m in backbone.modules() if hasattr(m, 'eps'))


def norm_of(backbone: nn.Module) -> str:
    """The normalisation a backbone's layers compute with, e.g. 'BatchNorm2d(eps=1e-06)'."""
    layer = _norm_layer(backbone)
    return f'{type(layer).__name__}(eps={layer.eps:g})'


def same_norm(a: nn.Module, b: nn.Module) -> bool:
    """Whether two backbones normalise alike for fusion: the same eps, and both BatchNorm or
    both not (BN and SyncBN fold alike)."""
    return len({(isinstance(layer, _BatchNorm), layer.eps)
                for layer in map(_norm_layer, (a, b))}) == 1


def vanillanet_cfg(model_cfg) -> Optional[dict]:
    """``backbone`` of a model config (a dict) where it is a VanillaNet's, else None."""
    cfg = model_cfg.get('backbone') if isinstance(model_cfg, dict) else None
    if isinstance(cfg, dict) and str(cfg.get('type')).split('.')[-1] == 'VanillaNet':
        return cfg
    return None


def recorded_backbone(checkpoint, backbone_type: type, source: str) -> Optional[nn.Module]:
    """The training-mode backbone (meta device) of the config ``checkpoint`` records, where it
    records one whose ``model.backbone`` is a VanillaNet; else None."""
    cfg = vanillanet_cfg(recorded_model_cfg(checkpoint))
    return None if cfg is None else training_network(backbone_type, cfg,
                                                     f'the config {source} records')


def check_same_norm(recorded: nn.Module, given: nn.Module, source: str, given_what: str):
    """Refuse a norm that differs from the one the run that wrote ``source`` recorded: every
    BN divides by sqrt(var + eps), and fusing folds that into every weight, so the wrong eps
    changes every output."""
    if not same_norm(recorded, given):
        raise CheckpointError(
            f'{source} was trained with {norm_of(recorded)} (norm_cfg={recorded.norm_cfg!r} in '
            f'the config it records), but {given_what} gives {norm_of(given)}: with another '
            f'eps every output differs, fused or not; give the norm_cfg it was trained with')


def fused_state(training: nn.Module, state: StateDict, source: str) -> StateDict:
    """Deploy-layout weights of ``state``, a training-layout backbone state dict that fits
    ``training`` (``training_network``): the network takes the tensors themselves and fuses
    itself by its own ``switch_to_deploy``. Weights saved before deep training ended
    (act_learn < 1) are refused by it, as fusing them would change what they compute."""
    training.load_state_dict(state, strict=False, assign=True)
    try:
        training.switch_to_deploy()
    except ConfigError as err:
        raise CheckpointError(f'{source}: {err}') from None
    fused = training.state_dict()
    # Every tensor the fused network holds was computed from the file's (the BN counters a
    # file may lack were folded away with their layers).
    assert not any(t.is_meta for t in fused.values()), 'a fused tensor was not given a value'
    return fused


def load_pretrained(model, filename: str, prefix: Optional[str] = None):
    """Load a released checkpoint (any form above) into a VanillaNet backbone, or fail loudly.
    A training-layout file into a deploy backbone is fused on load with the backbone's
    norm_cfg, which must be the one the file's recorded config gives, where it records one."""
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
    source = describe_backbone(state)
    if fuse:
        training = training_network(
            type(model), dict(arch=model.arch, act_num=model.act_num, norm_cfg=model.norm_cfg),
            'the backbone')
        recorded = recorded_backbone(checkpoint, type(model), filename)
        if recorded is not None:
            check_same_norm(recorded, training, filename, "this backbone's norm_cfg")
        check_fits(training.state_dict(), state, filename)
        state = fused_state(training, state, filename)
    else:
        check_fits(model.state_dict(), state, filename)
    # check_fits has proved every key and shape, bar the optional num_batches_tracked.
    configured = model.slopes
    model.load_state_dict(state, strict=False)
    print_log(f'VanillaNet-{model.arch_name}: loaded {len(state)} tensors from {filename} '
              f'({source}{", fused on load" if fuse else ""})', logger='current')
    if model.slopes != configured:  # the file's are the slopes its weights were saved at
        print_log(f'VanillaNet-{model.arch_name}: act_learn={min(configured):g} of the config is '
                  f'replaced by the value {filename} was saved at ({model.act_learn:g})',
                  logger='current', level=30)


def checkpoint_layout(filename: str) -> str:
    """'training' or 'deploy': the layout of the VanillaNet weights in a checkpoint file.

    Memory-mapped, so that asking costs no read of the whole file."""
    return layout_of(backbone_state_dict(safe_load(filename, mmap=True)))


def require_training_layout(filename: str, purpose: str, remedy: str):
    """Raise ``deploy_layout_error`` if ``filename`` holds a fused backbone."""
    if checkpoint_layout(filename) == 'deploy':
        raise deploy_layout_error(filename, purpose, remedy)


def deploy_layout_error(filename: str, purpose: str, remedy: str) -> CheckpointError:
    """The one message for a fused checkpoint where training-layout weights are needed."""
    return CheckpointError(
        f'{filename} holds a fused (deploy-layout) VanillaNet, whose BN statistics and separate '
        f'1x1 convs were merged away, so it cannot {purpose}; {remedy}')
