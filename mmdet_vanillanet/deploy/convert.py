"""A training-mode checkpoint converted to the fused (deploy) layout, on its tensors: the
plugin's fusion math (``fusion.fuse_state_dict``) applied to the file, no network built."""
import os.path as osp
from collections import OrderedDict
from typing import Tuple

import torch

from ..errors import CheckpointError, InputError
from ..models.checkpoint_forms import (
    adopt_meta_act_learn,
    backbone_state_dict,
    container_state,
    count_params,
    layout_of,
)
from ..models.fusion import fuse_state_dict
from ..output_paths import check_output_file, is_same_file, new_file_for
from ..serialization import load_trusted, safe_load


def deploy_checkpoint(checkpoint) -> Tuple[dict, int, int]:
    """A deploy-layout copy of a training-layout checkpoint, and the parameter counts of the
    backbone before and after. An ImageNet file becomes ``{'model': fused}`` (the released
    deploy container; the classifier is dropped, as detection has none); a detector checkpoint
    keeps its other weights (and its class names) under ``state_dict``, for a ``deploy=True``
    config."""
    adopt_meta_act_learn(checkpoint)
    backbone = backbone_state_dict(checkpoint)
    if layout_of(backbone) != 'training':
        raise CheckpointError('this checkpoint is already in the deploy layout; nothing to fuse')
    fused = fuse_state_dict(backbone)
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


def convert_checkpoint(src: str, dst: str, force: bool = False,
                       unsafe_load: bool = False) -> Tuple[int, int]:
    """Write the fused (deploy-layout) version of the training-mode checkpoint ``src`` (a path,
    URL or model-zoo name; an ImageNet file or a whole detector's) to ``dst``, and return the
    backbone's parameter counts (training, deploy). The arch and act_num are read off the
    weights. ``dst`` is never overwritten unless ``force``, never when it is ``src``, and
    never written through when it is a symbolic link; it is written as a new file, renamed into
    place when complete.
    ``unsafe_load``: unpickle ``src`` without weights_only protection (only for a file you
    trust; what is written holds plain tensors only).

    Example::

        from mmdet_vanillanet.apis import convert_checkpoint

        before, after = convert_checkpoint('vanillanet_13_act_num_4_kd_pretrain.pth',
                                           'vn13_deploy.pth')
        # then load it with model.backbone.deploy=True (or init_cfg of a deploy=True backbone)
    """
    if is_same_file(src, dst):
        raise InputError(f'{dst} is the checkpoint being converted: writing the deploy file '
                         f'over it would lose the training checkpoint (its optimizer state and '
                         f'unfused weights); choose another destination')
    check_output_file(dst, 'the destination')
    if osp.lexists(dst) and not force:
        raise FileExistsError(f'{dst} exists; pass --force to overwrite it')
    out, before, after = deploy_checkpoint((load_trusted if unsafe_load else safe_load)(src))
    with new_file_for(dst, replace=force) as partial:
        torch.save(out, partial)
    return before, after
