"""Fuse the detector before testing, so that tools/test.py measures the deployed network."""
from mmdet.registry import HOOKS
from mmengine.hooks import Hook

from ..deploy import fuse_detector


@HOOKS.register_module()
class VanillaNetDeployHook(Hook):
    """Fuses in ``before_test`` only. Validation during training runs on the unfused model:
    fusing the model being trained would end its training, and before deep training has
    raised act_learn to 1 the fusion would not even be exact. (Fused and unfused outputs agree
    to 1e-4 of their magnitude, so validation AP stands for the deployed AP.)"""

    priority = 'VERY_LOW'  # after every hook that may load or swap weights (EMA)

    def before_test(self, runner) -> None:
        fuse_detector(runner.model)
