"""Stop training at the first step that damages the weights, before any checkpoint can save
them, instead of training on for hours: a step that leaves NaN or infinite values behind, or
that multiplies the weights' norm by more than a bound (a finite blow-up: at lr 1e30 one step
makes the weights 1e28, and only the next step turns them into NaN)."""
import math
import os.path as osp

import torch
from mmdet.registry import HOOKS
from mmengine.dist import all_reduce, is_distributed
from mmengine.hooks import Hook
from mmengine.logging import print_log

from ..errors import InputError
from ..models.detector import unwrap_model

# The bound on one step's growth of the parameters' L2 norm. Measured (python
# benchmarks/weight_growth.py): at most 1.00006 over a toy run from scratch (warm-up and deep
# training included), 1.00001 in a first step at each COCO config's full lr; a step of 10x is
# far beyond any training step, and the probe's blow-up (lr 1e30) grows it by about 1e28.
MAX_NORM_GROWTH = 10.0


class NonFiniteError(RuntimeError):
    pass


def weight_health(module: torch.nn.Module):
    """(names of the floating-point parameters and buffers (BN statistics) of ``module`` that
    hold a NaN or an infinity, the L2 norm of its parameters); one device synchronisation."""
    parameters = [(name, t) for name, t in module.named_parameters()
                  if t.is_floating_point() and t.numel()]
    named = parameters + [(name, t) for name, t in module.named_buffers()
                          if t.is_floating_point() and t.numel()]
    if not named:
        return [], 0.0
    # Each tensor's L2 norm in float64, one pass over the weights: the squares of weights near
    # 1e28 overflow float32, but no float32 (or half) value's square overflows float64, so a
    # tensor's norm is non-finite exactly when it holds a NaN or an infinity.
    norms = torch.stack(torch._foreach_norm([t.detach() for _, t in named], 2,
                                            dtype=torch.float64))
    total = norms[:len(parameters)].square().sum().sqrt()
    values = torch.cat([norms, total[None]]).tolist()
    bad = [named[i][0] for i, norm in enumerate(values[:-1]) if not math.isfinite(norm)]
    return bad, values[-1]


def _on_any_rank(bad: bool, runner) -> bool:
    """Whether any process found damage: all stop together, rather than one raising while the
    others wait for it in the next collective (a skipped AMP step, or one rank's own BN
    statistics, can make them disagree)."""
    if not is_distributed():
        return bad
    flag = torch.tensor(float(bad), device=next(unwrap_model(runner.model).parameters()).device)
    all_reduce(flag, op='max')
    return bool(flag.item())


@HOOKS.register_module()
class StopOnNonFiniteHook(Hook):
    """After every training iteration, check the loss terms and what a checkpoint would save
    (the weights and BN statistics the step left); stop at the first NaN or infinity, or at
    the first step that multiplies the parameters' L2 norm by more than ``max_norm_growth``,
    naming the iteration, what happened, and the last checkpoint that predates it. Runs before
    the checkpoint hook, so no checkpoint ever holds what such a step produced. Declared in
    ``configs/_base_/vanillanet_runtime.py``.

    Args:
        max_norm_growth (float): the largest factor by which one step may multiply the
            parameters' L2 norm (default 10: normal steps measure at most 1.0001).

    Example (in a config)::

            default_hooks = dict(non_finite=dict(type='StopOnNonFiniteHook',
                                                 max_norm_growth=10.0))
    """

    priority = 'HIGHEST'  # before checkpoint hooks can save what the bad step produced

    def __init__(self, max_norm_growth: float = MAX_NORM_GROWTH):
        if isinstance(max_norm_growth, bool) or not isinstance(max_norm_growth, (int, float)) \
                or not max_norm_growth > 1:
            raise InputError(f'StopOnNonFiniteHook: max_norm_growth={max_norm_growth!r} must '
                             f'be a number above 1 (default {MAX_NORM_GROWTH})')
        self.max_norm_growth = float(max_norm_growth)
        self.norm = None  # the parameters' norm after the previous step
        self.largest_growth = 1.0

    def before_train(self, runner) -> None:
        # After loading or resuming: the first step is checked too.
        _, self.norm = weight_health(unwrap_model(runner.model))

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        losses = {k: float(v.detach()) if torch.is_tensor(v) else float(v)
                  for k, v in (outputs or {}).items() if k.startswith('loss')}
        bad_losses = {k: v for k, v in losses.items() if not math.isfinite(v)}
        bad_tensors, norm = weight_health(unwrap_model(runner.model))
        growth = norm / self.norm if self.norm else 1.0
        self.norm = norm
        self.largest_growth = max(self.largest_growth, growth)
        blown_up = not growth <= self.max_norm_growth
        if not _on_any_rank(bool(bad_losses or bad_tensors or blown_up), runner):
            return
        found = []
        if bad_losses:
            found.append(f'loss {bad_losses}')
        if bad_tensors:
            names = ', '.join(bad_tensors[:3]) + (', ...' if len(bad_tensors) > 3 else '')
            found.append(f'{len(bad_tensors)} weight tensors ({names})')
        what = 'non-finite values' if found else 'the weights blew up'
        if blown_up and not bad_tensors:
            found.append(f'the step multiplied the weights\' L2 norm by {growth:.3g} (to '
                         f'{norm:.3g}; the bound is {self.max_norm_growth:g}, '
                         f'StopOnNonFiniteHook.max_norm_growth)')
        if not found:
            found.append('on another process')
        raise NonFiniteError(
            f'{what} at iteration {runner.iter + 1} (epoch {runner.epoch + 1}, batch '
            f'{batch_idx + 1}): {"; ".join(found)}. Training stopped; '
            f'{self._last_good_checkpoint(runner)} Lower the learning rate (a resumed run '
            f'takes the config\'s optim_wrapper.optimizer.lr: see ResumeLrFromConfigHook) or '
            f'enable gradient clipping (optim_wrapper.clip_grad).')

    def after_train(self, runner) -> None:
        print_log(f'the largest one-step growth of the weights\' L2 norm in this run: '
                  f'{self.largest_growth:.6g} (StopOnNonFiniteHook stops above '
                  f'{self.max_norm_growth:g})', logger='current')

    @staticmethod
    def _last_good_checkpoint(runner) -> str:
        # This hook runs before the checkpoint hook at every step, so every checkpoint the run
        # wrote was saved after a step that passed these checks, before the damaging one.
        last = runner.message_hub.get_info('last_ckpt')
        if last and osp.isfile(last):
            return (f'the last checkpoint, {last}, predates it (every step up to it passed '
                    f'these checks): resume from it (resume=True in the config).')
        return 'no checkpoint of this run predates it, so the run must start again.'
