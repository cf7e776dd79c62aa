"""No silent partial loads: a detector checkpoint (``load_from``, ``--resume``, a test's
checkpoint) must fit the model as strictly as the backbone's ``init_cfg`` does.

MMEngine's Runner loads checkpoints with ``strict=False``: keys that do not fit only print
warnings, and a run then trains from, or is tested with, a partial load. This hook checks the
checkpoint before MMEngine loads it and stops with one line naming what does not fit.
"""
from typing import Sequence

from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.logging import print_log

from mmdet_runsafe.class_order import check_checkpoint_classes
from mmdet_runsafe.errors import InputError
from mmdet_runsafe.runner_state import load_source, resuming, run_classes

from ..models.checkpoint.detector_weights import check_detector_fits, check_detector_norm
from ..models.checkpoint.forms import adopt_meta_act_learn


@HOOKS.register_module()
class CheckpointFitHook(Hook):
    """Refuse a checkpoint that does not fit the model (missing, unexpected or reshaped
    tensors; the VanillaNet's act_num, arch or layout), whose classes
    (``meta.dataset_meta.classes``) differ in names or order from the run's, or whose recorded
    config trained the VanillaNet with another norm (type, eps) than the run's. Declared in
    ``configs/_base_/vanillanet_runtime.py``.

    Args:
        replaced (Sequence[str]): module names whose weights the model replaces on purpose,
            e.g. ``['roi_head.bbox_head.fc_cls', 'roi_head.bbox_head.fc_reg',
            'roi_head.mask_head.conv_logits']`` to fine-tune a COCO Mask R-CNN to another
            number of classes: their tensors may be missing from the checkpoint or of another
            shape, and then keep their initialisation; the checkpoint's classes may then
            differ from the run's. ``load_from`` only: ``--resume`` continues the run that
            wrote the checkpoint, which must fit exactly.

    Example (in a config)::

            default_hooks = dict(checkpoint_fit=dict(type='CheckpointFitHook',
                                                     replaced=['roi_head.bbox_head.fc_cls']))
    """

    priority = 'VERY_HIGH'

    def __init__(self, replaced: Sequence[str] = ()):
        if isinstance(replaced, str) or not all(isinstance(r, str) for r in replaced):
            raise InputError(f'CheckpointFitHook: replaced={replaced!r} must be a list of module '
                             f'names, e.g. [\'roi_head.bbox_head.fc_cls\']')
        self.replaced = tuple(replaced)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        adopt_meta_act_learn(checkpoint)
        # MMEngine loads checkpoint['state_dict'] when there is one, else the dict itself.
        state = checkpoint.get('state_dict', checkpoint)
        replaced = () if resuming(runner) else self.replaced
        source = load_source(runner) or 'the checkpoint'
        if not replaced:  # fine-tuning to other classes replaces the layers that name them
            check_checkpoint_classes(source, checkpoint, run_classes(runner))
        for key in check_detector_fits(runner.model, state, source, replaced):
            del state[key]  # left at its initialisation (MMEngine lists it as missing)
        if not any(name == 'backbone' or name.startswith('backbone.') for name in replaced):
            check_detector_norm(runner.model, checkpoint, source)
        if replaced:
            print_log(f'{source}: the weights of {", ".join(replaced)} were loaded only where '
                      f'present and of the same shape (CheckpointFitHook.replaced)',
                      logger='current')
