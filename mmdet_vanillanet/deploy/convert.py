"""A training-mode checkpoint converted to the fused (deploy) layout. The training network the
file describes is built on the meta device, takes the file's tensors and fuses itself
(``switch_to_deploy``): the fusion of ``fuse_detector``, ``tools/test.py --deploy`` and the
exporters, by construction.

What the file describes: the arch and act_num (read off the tensors where no config says), and
the norm its BN layers computed with (type, eps), which no tensor holds and every fused weight
depends on. The norm comes from
- the config the caller gives (``config``), checked against the one the file records;
- else the config the file records (MMEngine's Runner writes it into every checkpoint's meta);
- else, for a backbone-only file (the authors' released ImageNet files): BatchNorm with eps 1e-6,
  the one normalisation the authors' code has (it builds every BN with eps=1e-6, no option).
A detector checkpoint that records no config, and is given none, is refused.
"""
import os.path as osp
from collections import OrderedDict
from typing import Tuple, Union

from mmengine.config import Config

from mmdet_runsafe.config import load_config
from mmdet_runsafe.errors import Argument, CheckpointError, InputError, output_exists
from mmdet_runsafe.output_paths import check_output_file, is_same_file, new_file_for
from mmdet_runsafe.serialization import load_trusted, safe_load, save

from ..models.arch_settings import ARCH_SETTINGS
from ..models.checkpoint.backbone_weights import (
    check_same_norm,
    fused_state,
    recorded_backbone,
    training_network,
    vanillanet_cfg,
)
from ..models.checkpoint.fit import check_fits
from ..models.checkpoint.forms import (
    act_num_of,
    adopt_meta_act_learn,
    backbone_state_dict,
    container_state,
    count_params,
    dims_of,
    layout_of,
)
from ..models.vanillanet import VanillaNet

# What the authors' code builds every norm layer with (nn.BatchNorm2d(dim, eps=1e-6)).
RELEASED_NORM = dict(type='BN', eps=1e-6)


def released_arch(dims: Tuple[int, ...]):
    """The released arch of these widths, or custom widths (the strides do not change the
    weights, and no file holds them: stride 1 stands in)."""
    names = [name for name, spec in ARCH_SETTINGS.items() if spec.dims == dims]
    return names[0] if names else dict(dims=dims, strides=(1, ) * (len(dims) - 1))


def training_backbone(checkpoint, state, source: str,
                      config: Union[str, Config, None] = None) -> VanillaNet:
    """The training-mode VanillaNet (meta device) that wrote ``state``: see the module's doc."""
    recorded = recorded_backbone(checkpoint, VanillaNet, source)
    if config is not None:
        cfg = vanillanet_cfg(load_config(config).get('model'))
        if cfg is None:
            raise InputError(Argument('config'), ': its model.backbone is not a VanillaNet')
        given = training_network(VanillaNet, cfg, 'the config')
        if recorded is not None:
            check_same_norm(recorded, given, source, 'the config')
        return given
    if recorded is not None:
        return recorded
    if any(k.startswith(('backbone.', 'module.backbone.')) for k in container_state(checkpoint)):
        raise CheckpointError(
            f'{source} records no config of the VanillaNet it trained, so the norm its BN layers '
            f'computed with (eps), which every fused weight depends on, is unknown: give the '
            f'config it was trained with (', Argument('config'), ')')
    return training_network(VanillaNet, dict(arch=released_arch(dims_of(state)),
                                             act_num=act_num_of(state), norm_cfg=RELEASED_NORM),
                            source)


def deploy_checkpoint(checkpoint, source: str = 'the checkpoint',
                      config: Union[str, Config, None] = None) -> Tuple[dict, int, int]:
    """A deploy-layout copy of a training-layout checkpoint, and the parameter counts of the
    backbone before and after. An ImageNet file becomes ``{'model': fused}`` (the released
    deploy container; the classifier is dropped, as detection has none); a detector checkpoint
    keeps its other weights (and its class names) under ``state_dict``, for a ``deploy=True``
    config."""
    adopt_meta_act_learn(checkpoint)
    backbone = backbone_state_dict(checkpoint)
    if layout_of(backbone) != 'training':
        raise CheckpointError(f'{source} is already in the deploy layout; nothing to fuse')
    training = training_backbone(checkpoint, backbone, source, config)
    check_fits(training.state_dict(), backbone, source)
    fused = fused_state(training, backbone, source)
    state = container_state(checkpoint)
    if any(k.startswith('backbone.') for k in state):
        rest = OrderedDict((k, v) for k, v in state.items() if not k.startswith('backbone.'))
        rest.update((f'backbone.{k}', v) for k, v in fused.items())
        meta = checkpoint.get('meta') or {}
        out = {'state_dict': rest}
        if 'dataset_meta' in meta:  # the class names, which inference tools read from here
            out['meta'] = {'dataset_meta': meta['dataset_meta']}
    else:
        out = {'model': fused}
    return out, count_params(backbone), count_params(fused)


def convert_checkpoint(src: str, dst: str, force: bool = False, unsafe_load: bool = False,
                       config: Union[str, Config, None] = None) -> Tuple[int, int]:
    """Write the fused (deploy-layout) version of the training-mode checkpoint ``src`` (a path,
    URL or model-zoo name; an ImageNet file or a whole detector's) to ``dst``, and return the
    backbone's parameter counts (training, deploy). ``config`` (a file or Config): the config
    the weights were trained with, whose ``model.backbone`` gives the norm (type, eps) that
    fusion folds in; without it, the config the file records, or for a backbone-only file that
    records none (the authors' ImageNet files) BatchNorm with eps 1e-6, the authors' one norm.
    A detector checkpoint that records no config needs ``config``. ``dst`` is never
    overwritten unless ``force``, never when it is ``src``, and never written through when it
    is a symbolic link; it is written as a new file, renamed into place when complete.
    ``unsafe_load``: unpickle ``src`` without weights_only protection (only for a file you
    trust; what is written holds plain tensors only).

    Example::

        from mmdet_vanillanet.apis import convert_checkpoint

        before, after = convert_checkpoint('vanillanet_13_act_num_4_kd_pretrain.pth',
                                           'vn13_deploy.pth')
        # a detector checkpoint of ours records its config; an older one needs it given:
        convert_checkpoint('epoch_12.pth', 'mask_rcnn_deploy.pth',
                           config='configs/mask_rcnn_vanillanet13_coco.py')
        # then load it with model.backbone.deploy=True (or init_cfg of a deploy=True backbone)
    """
    if is_same_file(src, dst):
        raise InputError(f'{dst} is the checkpoint being converted: writing the deploy file '
                         f'over it would lose the training checkpoint (its optimizer state and '
                         f'unfused weights); choose another destination')
    check_output_file(dst, 'the destination')
    if osp.lexists(dst) and not force:
        raise output_exists(dst)
    config = None if config is None else load_config(config)  # before the file is read
    checkpoint = (load_trusted if unsafe_load else safe_load)(src)
    out, before, after = deploy_checkpoint(checkpoint, src, config)
    with new_file_for(dst, replace=force) as partial:
        save(out, partial)
    return before, after
