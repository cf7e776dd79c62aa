"""tools/convert_checkpoint.py's work: a deploy-layout copy of a training-layout checkpoint,
through the plugin's tensor-level fusion."""
from collections import OrderedDict
from typing import Tuple

from ..errors import CheckpointError
from ..models.checkpoint_forms import (
    adopt_meta_act_learn,
    backbone_state_dict,
    container_state,
    count_params,
    layout_of,
)
from ..models.fusion import fuse_state_dict


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
