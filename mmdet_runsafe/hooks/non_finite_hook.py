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
from ..runner_state import unwrap_model

# The bound on one step's growth of the parameters' L2 norm. Measured (python
# benchmarks/weight_growth.py): at most 1.00006 over a toy run from scratch (warm-up and deep
# training included), 1.00001 in a first step at each COCO config's full lr; a step of 10x is
# far beyond any training step, and the probe's blow-up (lr 1e30) grows it by about 1e28.
MAX_NORM_GROWTH = 10.0
# A checkpoint is healthy when, since the healthy checkpoint before it (or the run's start), the
# parameters' norm grew by at most HEALTHY_GROWTH, and the mean loss of the steps before it is at
# most HEALTHY_LOSS times the lowest such mean of the healthy checkpoints before it. A slow
# divergence (SGD at lr 0.5) stays under the one-step bound for many steps: its last checkpoint
# had weights grown 4.7x and a loss tripled, and was named as predating the damage.
HEALTHY_GROWTH = 2.0
HEALTHY_LOSS = 1.5


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
    ``configs/_base_/runsafe_runtime.py``.

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
        self.start_norm = None
        self.losses = []  # the total loss of each step since the last checkpoint
        self.saved = []  # per checkpoint: dict(norm, loss, path)

    def before_train(self, runner) -> None:
        # After loading or resuming: the first step is checked too.
        _, self.norm = weight_health(unwrap_model(runner.model))
        self.start_norm = self.norm

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        # Every save follows this hook's check of the step: self.norm is the saved weights'.
        # The path is known once the checkpoint hook has written it (after_train_iter).
        loss = sum(self.losses) / len(self.losses) if self.losses else None
        self.saved.append(dict(norm=self.norm, loss=loss, path=None))
        self.losses = []

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        losses = {k: float(v.detach()) if torch.is_tensor(v) else float(v)
                  for k, v in (outputs or {}).items() if k.startswith('loss')}
        self._name_saved(runner)
        if losses:
            self.losses.append(losses.get('loss', sum(losses.values())))
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

    def _name_saved(self, runner):
        """The path of the checkpoint saved last, once the checkpoint hook has recorded it."""
        last = runner.message_hub.get_info('last_ckpt')
        if self.saved and self.saved[-1]['path'] is None and last and \
                last not in (s['path'] for s in self.saved):
            self.saved[-1]['path'] = last

    def _last_good_checkpoint(self, runner) -> str:
        # This hook runs before the checkpoint hook at every step, so every checkpoint the run
        # wrote was saved after a step that passed these checks, before the damaging one; the
        # one to continue from is the last whose training was still healthy.
        self._name_saved(runner)
        saved = [s for s in self.saved if s['path']]
        if not saved:  # none written by this process: a resumed run's is the one it resumed
            last = runner.message_hub.get_info('last_ckpt')
            if last and osp.isfile(last):
                return (f'the last checkpoint, {last}, predates it (every step up to it passed '
                        f'these checks): resume from it (resume=True in the config).')
            return 'no checkpoint of this run predates it, so the run must start again.'
        healthy, rows = healthy_checkpoint(saved, self.start_norm)
        # The healthy one, the one before it and the first two after it.
        at = saved.index(healthy) if healthy is not None else -1
        report = (f'the weights\' L2 norm and mean loss at this run\'s checkpoints: '
                  f'{"; ".join(rows[max(at - 1, 0):at + 3])}')
        if healthy is None:
            return (f'{report}; none of them is healthy (HEALTHY_GROWTH, HEALTHY_LOSS), so the '
                    f'run must start again.')
        if not osp.isfile(healthy['path']):
            return (f'{report}; the last healthy one, {healthy["path"]}, was removed '
                    f'(max_keep_ckpts), so the run must start again.')
        later = ('' if healthy is saved[-1] else
                 ', the later ones had grown or lost beyond that')
        return (f'{report}; the last healthy one (its norm grown at most {HEALTHY_GROWTH:g}x '
                f'since the healthy one before it and its mean loss at most {HEALTHY_LOSS:g}x '
                f'their lowest{later}) is {healthy["path"]}: resume from it (load_from='
                f'{healthy["path"]!r} and resume=True in the config: not the newest, which '
                f'resume=True alone takes).')


def healthy_checkpoint(saved: list, start_norm: float):
    """The last healthy one of ``saved`` (dicts of norm, loss, path, in order), or None,
    and a description of each: its norm, its growth since the healthy checkpoint before it (or
    the run's start), its mean loss and that loss's ratio to the healthy ones' lowest. The
    first unhealthy checkpoint ends the search: a divergence does not heal."""
    healthy, reference, lowest, rows, ended = None, start_norm, None, [], False
    for s in saved:
        growth = s['norm'] / reference if reference else 1.0
        ratio = s['loss'] / lowest if (lowest and s['loss'] is not None) else 1.0
        ok = not ended and growth <= HEALTHY_GROWTH and ratio <= HEALTHY_LOSS
        loss = 'n/a' if s['loss'] is None else f'{s["loss"]:.4g}'
        rows.append(f'{osp.basename(s["path"])} {s["norm"]:.4g}, x{growth:.3g} since '
                    f'{"the start" if healthy is None else osp.basename(healthy["path"])}, '
                    f'loss {loss} (x{ratio:.3g}){"" if ok else " not healthy"}')
        if not ok:
            ended = True
            continue
        healthy, reference = s, s['norm']
        if s['loss'] is not None:
            lowest = s['loss'] if lowest is None else min(lowest, s['loss'])
    return healthy, rows
