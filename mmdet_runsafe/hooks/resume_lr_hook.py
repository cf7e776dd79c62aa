"""On --resume, the learning rate is the config's.

MMEngine's resume restores the optimizer's and the schedulers' state, lr included, so a run
resumed with another ``optim_wrapper.optimizer.lr`` (the usual remedy after a divergence)
silently keeps the old one. This hook compares the lr the config built for each parameter
group (its ``initial_lr``: auto_scale_lr and layer decay applied) with the checkpoint's and,
where they differ, scales that group's lr and initial lr, and the schedulers' base values for
it, by their ratio before they are loaded: the run continues as if it had been configured with
the new lr from the start, at the same point of its schedule. (Absolute values of a schedule,
such as a cosine schedule's eta_min, are not scaled.)
"""
from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.logging import print_log

from ..runner_state import resuming


def _initial_lrs(groups):
    return [g.get('initial_lr', g['lr']) for g in groups]


def _by_optimizer(runner, checkpoint):
    """(name, the config's optimizer, its state in the checkpoint, its schedulers' states) for
    each optimizer: one, or several in an OptimWrapperDict (keyed by name throughout)."""
    wrappers = getattr(runner.optim_wrapper, 'optim_wrappers', None)
    schedulers = checkpoint.get('param_schedulers') or []
    if not wrappers:
        yield None, runner.optim_wrapper.optimizer, checkpoint['optimizer'], schedulers
        return
    for name, wrapper in wrappers.items():
        yield (name, wrapper.optimizer, checkpoint['optimizer'].get(name),
               schedulers.get(name, []) if isinstance(schedulers, dict) else [])


@HOOKS.register_module()
class ResumeLrFromConfigHook(Hook):
    """Make ``--resume`` honour the config's lr. Declared in
    ``configs/_base_/runsafe_runtime.py``.

    Example (in a config)::

            default_hooks = dict(resume_lr=dict(type='ResumeLrFromConfigHook'))
    """

    priority = 'VERY_LOW'

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not resuming(runner) or 'optimizer' not in checkpoint:
            return
        # The optimizers and schedulers are built from the config before a checkpoint is
        # loaded into them.
        for name, optimizer, state, schedulers in _by_optimizer(runner, checkpoint):
            configured = _initial_lrs(optimizer.param_groups)
            saved = _initial_lrs(state['param_groups']) if state else []
            if len(saved) != len(configured) or 0 in saved:
                continue  # another optimizer layout: MMEngine's loading will say so
            ratios = [c / s for c, s in zip(configured, saved)]
            if all(r == 1 for r in ratios):
                continue
            for group, ratio in zip(state['param_groups'], ratios):
                for key in ('lr', 'initial_lr'):
                    if key in group:
                        group[key] *= ratio
            for scheduler in schedulers:
                if scheduler.get('param_name') == 'lr':
                    for key in ('base_values', '_last_value'):
                        scheduler[key] = [v * r for v, r in zip(scheduler[key], ratios)]
            changed = [f'{s:g} -> {c:g}' for s, c in zip(saved, configured) if s != c]
            print_log(f'resuming: the config\'s lr differs from the checkpoint\'s'
                      f'{f" for optimizer {name}" if name else ""} ({len(changed)} of '
                      f'{len(saved)} parameter groups, e.g. {changed[0]}); the resumed lr and '
                      f'schedule are scaled accordingly', logger='current', level=30)
