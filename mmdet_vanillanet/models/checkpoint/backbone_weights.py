"""A released checkpoint into a VanillaNet backbone (``init_cfg=dict(type='Pretrained')``), and
the layout of the weights in a checkpoint file, asked before anything is built or loaded.

Every form of checkpoint_forms.py is accepted; a file that does not fit is an error that says
why (checkpoint_fit.py). A training-layout file loaded into a deploy backbone is fused on load
(fusion.py); a deploy-layout file cannot go into a training-mode backbone.
"""
from typing import Optional

from mmengine.logging import print_log

from ...errors import deploy_layout_error
from ...serialization import safe_load
from ..fusion import fuse_state_dict
from .fit import check_fits, expected_state
from .forms import (
    adopt_meta_act_learn,
    backbone_state_dict,
    describe_backbone,
    layout_of,
)


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
    check_fits(expected_state(model, layout) if fuse else model.state_dict(), state, filename)
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


def require_training_layout(filename: str, purpose: str, remedy: str):
    """Raise ``deploy_layout_error`` if ``filename`` holds a fused backbone."""
    if checkpoint_layout(filename) == 'deploy':
        raise deploy_layout_error(filename, purpose, remedy)
