"""Fuse the detector before testing, so that tools/test.py measures the deployed network."""
from mmdet.registry import HOOKS
from mmengine.hooks import Hook

from mmdet_runsafe.errors import InputError

from ..models.detector import fuse_detector


@HOOKS.register_module()
class VanillaNetDeployHook(Hook):
    """Fuse every VanillaNet of the model before testing (``tools/test.py --deploy`` adds it).

    Fuses in ``before_test`` only. Validation during training runs on the unfused model:
    fusing the model being trained would end its training, and before deep training has
    raised act_learn to 1 the fusion would not even be exact. (Fused and unfused outputs agree
    to 1e-4 of their magnitude, so validation AP stands for the deployed AP.)

    Example (in a config)::

            custom_hooks = [dict(type='VanillaNetDeployHook')]
    """

    priority = 'VERY_LOW'

    def before_test(self, runner) -> None:
        if any(type(hook).__name__ == 'EMAHook' for hook in runner.hooks):
            # EMAHook swaps its averaged weights in parameter by parameter, which no longer
            # line up once the backbone is fused.
            raise InputError('VanillaNetDeployHook cannot fuse a model whose weights EMAHook '
                             'swaps in for testing; convert the checkpoint first '
                             '(convert_checkpoint, tools/convert_checkpoint.py) and test the '
                             'converted file with model.backbone.deploy=True')
        fuse_detector(runner.model)
