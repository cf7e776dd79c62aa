"""Stop training at the first NaN or infinite loss, instead of training on for hours."""
import math

import torch
from mmdet.registry import HOOKS
from mmengine.hooks import Hook


class NonFiniteLossError(RuntimeError):
    pass


@HOOKS.register_module()
class StopOnNonFiniteLossHook(Hook):
    """Stop training after the iteration whose loss is NaN or infinite, naming it.

    The checkpoints already written predate it, so ``--resume`` (after lowering the lr or
    enabling gradient clipping) continues from weights that were still sound. Declared in
    ``configs/_base_/vanillanet_runtime.py``.

    Example (in a config)::

            default_hooks = dict(non_finite_loss=dict(type='StopOnNonFiniteLossHook'))
    """

    priority = 'HIGHEST'  # before checkpoint hooks can save what the bad step produced

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        losses = {k: float(v.detach()) if torch.is_tensor(v) else float(v)
                  for k, v in (outputs or {}).items() if k.startswith('loss')}
        bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
        if bad:
            raise NonFiniteLossError(
                f'non-finite loss at iteration {runner.iter + 1} (epoch {runner.epoch + 1}, '
                f'batch {batch_idx + 1}): {bad}. Training stopped; the last checkpoint in '
                f'{runner.work_dir} predates it. Lower the learning rate or enable gradient '
                f'clipping (optim_wrapper.clip_grad), then --resume.')
