"""Stop training at the first step that leaves NaN or infinite values behind, before any
checkpoint can save them, instead of training on for hours."""
import math
import os.path as osp

import torch
from mmdet.registry import HOOKS
from mmengine.dist import all_reduce, is_distributed
from mmengine.hooks import Hook

from ..models.detector import unwrap_model


class NonFiniteError(RuntimeError):
    pass


def non_finite_tensors(module: torch.nn.Module):
    """Names of the floating-point parameters and buffers (BN statistics) of ``module`` that
    hold a NaN or an infinity; one device synchronisation for all of them."""
    named = [(name, t) for name, t in (*module.named_parameters(), *module.named_buffers())
             if t.is_floating_point() and t.numel()]
    if not named:
        return []
    # The largest magnitude of each tensor: NaN and inf survive it, and it cannot overflow
    # the way a sum of squares can.
    peaks = torch.stack(torch._foreach_norm([t.detach() for _, t in named], float('inf')))
    bad = (~torch.isfinite(peaks)).nonzero().flatten().tolist()
    return [named[i][0] for i in bad]


def _on_any_rank(bad: bool, runner) -> bool:
    """Whether any process found something non-finite: all stop together, rather than one
    raising while the others wait for it in the next collective (a skipped AMP step, or one
    rank's own BN statistics, can make them disagree)."""
    if not is_distributed():
        return bad
    flag = torch.tensor(float(bad), device=next(unwrap_model(runner.model).parameters()).device)
    all_reduce(flag, op='max')
    return bool(flag.item())


@HOOKS.register_module()
class StopOnNonFiniteHook(Hook):
    """After every training iteration, check the loss terms and what a checkpoint would save
    (the weights and BN statistics the step left); stop at the first NaN or infinity, naming
    the iteration, what is non-finite, and the last checkpoint that predates it. Runs before
    the checkpoint hook, so no checkpoint ever holds a non-finite value. Declared in
    ``configs/_base_/vanillanet_runtime.py``.

    Example (in a config)::

            default_hooks = dict(non_finite=dict(type='StopOnNonFiniteHook'))
    """

    priority = 'HIGHEST'  # before checkpoint hooks can save what the bad step produced

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        losses = {k: float(v.detach()) if torch.is_tensor(v) else float(v)
                  for k, v in (outputs or {}).items() if k.startswith('loss')}
        bad_losses = {k: v for k, v in losses.items() if not math.isfinite(v)}
        bad_tensors = non_finite_tensors(unwrap_model(runner.model))
        if not _on_any_rank(bool(bad_losses or bad_tensors), runner):
            return
        found = []
        if bad_losses:
            found.append(f'loss {bad_losses}')
        if bad_tensors:
            names = ', '.join(bad_tensors[:3]) + (', ...' if len(bad_tensors) > 3 else '')
            found.append(f'{len(bad_tensors)} weight tensors ({names})')
        if not found:
            found.append('on another process')
        raise NonFiniteError(
            f'non-finite values at iteration {runner.iter + 1} (epoch {runner.epoch + 1}, '
            f'batch {batch_idx + 1}): {"; ".join(found)}. Training stopped; '
            f'{self._last_good_checkpoint(runner)} Lower the learning rate (with --resume, '
            f'--cfg-options optim_wrapper.optimizer.lr=... takes effect: see '
            f'ResumeLrFromConfigHook) or enable gradient clipping (optim_wrapper.clip_grad).')

    @staticmethod
    def _last_good_checkpoint(runner) -> str:
        # Every checkpoint the run wrote was checked by this hook first (this hook runs
        # before the checkpoint hook), so the last one holds finite weights.
        last = runner.message_hub.get_info('last_ckpt')
        if last and osp.isfile(last):
            return (f'the last checkpoint, {last}, predates it and holds finite weights: '
                    f'continue from it with --resume.')
        return 'no checkpoint of this run predates it, so the run must start again.'
