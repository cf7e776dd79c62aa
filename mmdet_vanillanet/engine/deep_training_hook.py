"""Deep training: raise the backbone's act_learn from ``start`` to 1 over the first part of
training, then keep 1 (so that the network can be fused for deployment).

During training act_learn is a function of the runner's epoch or iteration, so a resumed run
takes the value the uninterrupted run would have had. Checkpoints need nothing from this hook:
the backbone's state dict carries an act_learn below 1 (see models/vanillanet.py), so whoever
loads a checkpoint from the middle of the schedule computes with the act_learn it was trained at
(and cannot fuse it), with or without this hook in the config.

The duration is the config's, also when the run is shortened (``train_cfg.max_epochs=4`` on the
command line): a schedule that rose faster in a short run would train another network than the
config describes, so that a quick trial would not show what the full run does. Where the run
ends before act_learn reaches 1, the hook says so before training starts, with the value the
last checkpoint will hold: that network cannot be fused for deployment.
"""
import logging
import math

from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.logging import print_log

from mmdet_runsafe.errors import InputError
from mmdet_runsafe.runner_state import unwrap_model

from ..models.series_activation import check_bool


@HOOKS.register_module()
class VanillaNetDeepTrainingHook(Hook):
    """Raise the backbone's ``act_learn`` from ``start`` to 1 (the authors' deep training).

    Args:
        start (float): act_learn at the beginning (0: a plain ReLU between each block's 1x1
            convs).
        duration (int): epochs (``by_epoch=True``, stepping once per epoch like the authors')
            or iterations over which act_learn rises to 1.
        by_epoch (bool): count ``duration`` in epochs, else in iterations.
        schedule (str): 'linear' (start + (1 - start) * t) or 'cosine' (the authors'
            alternative).

    Example:
        >>> custom_hooks = [dict(type='VanillaNetDeepTrainingHook', start=0.0, duration=100)]
        >>> VanillaNetDeepTrainingHook(start=0.0, duration=4).value_at(1)
        0.25
    """

    priority = 'NORMAL'

    def __init__(self, start: float = 0.0, duration: int = 1, by_epoch: bool = True,
                 schedule: str = 'linear'):
        if schedule not in ('linear', 'cosine'):
            raise InputError(f"schedule must be 'linear' or 'cosine', got {schedule!r}")
        check_bool('by_epoch', by_epoch)
        if not 0.0 <= start <= 1.0 or duration < 1:
            raise InputError(f'need 0 <= start <= 1 and duration >= 1, got start={start}, '
                             f'duration={duration}')
        self.start, self.duration, self.by_epoch, self.schedule = (start, duration, by_epoch,
                                                                   schedule)

    def value_at(self, step: int) -> float:
        t = min(step / self.duration, 1.0)
        if self.schedule == 'cosine':
            t = 0.5 * (1 - math.cos(math.pi * t))
        return self.start + (1.0 - self.start) * t

    @staticmethod
    def backbone(runner):
        # Called every iteration: the detector's attribute, not a walk over its modules.
        return unwrap_model(runner.model).backbone

    def before_train(self, runner) -> None:
        """Warn where the run ends before act_learn reaches 1 (its last epoch or iteration
        trains at ``value_at(length - 1)``)."""
        unit, length = ('epochs', runner.max_epochs) if self.by_epoch else ('iterations',
                                                                           runner.max_iters)
        final = self.value_at(length - 1)
        if final < 1.0:
            shorter = (f"Set the hook's duration to at most {length - 1} {unit} "
                       f'(custom_hooks.N.duration), or train longer' if length > 1 else
                       f'Train for more than {self.duration} {unit}')
            print_log(f'VanillaNetDeepTrainingHook: act_learn reaches 1 after {self.duration} '
                      f'{unit}, but training stops after {length}, at act_learn={final:g}: the '
                      f'last checkpoint cannot be fused for deployment. {shorter}',
                      logger='current', level=logging.WARNING)

    def before_train_epoch(self, runner) -> None:
        if self.by_epoch:
            self.backbone(runner).act_learn = self.value_at(runner.epoch)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        backbone = self.backbone(runner)
        if not self.by_epoch:
            backbone.act_learn = self.value_at(runner.iter)
        runner.message_hub.update_scalar('train/act_learn', backbone.act_learn)
