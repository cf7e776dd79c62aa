"""On --resume, the learning rate is the config's.

MMEngine's resume restores the optimizer's and the schedulers' state, lr included, so a run
resumed with another ``optim_wrapper.optimizer.lr`` (the usual remedy after a divergence)
silently keeps the old one. This hook compares the lr the config built (each parameter group's
``initial_lr``, auto_scale_lr applied) with the checkpoint's and, where they differ, scales the
checkpoint's lr, initial lr and schedulers' base values by their ratio before they are loaded:
the run continues as if it had been configured with the new lr from the start, at the same
point of its schedule.
"""
from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.logging import print_log


def _optimizer_states(state: dict):
    """The optimizer state dicts in a checkpoint's 'optimizer' entry (one per wrapper)."""
    if 'param_groups' in state:
        return [state]
    return [s for v in state.values() if isinstance(v, dict) for s in _optimizer_states(v)]


def _initial_lrs(groups):
    return [g.get('initial_lr', g['lr']) for g in groups]


def _wrappers(optim_wrapper):
    """The OptimWrappers of a runner (one, or several in an OptimWrapperDict)."""
    inner = getattr(optim_wrapper, 'optim_wrappers', None)
    return list(inner.values()) if inner else [optim_wrapper]


def _scheduler_states(states):
    """Every scheduler state dict in a checkpoint's 'param_schedulers' (a list, or a dict of
    lists for several optimizers)."""
    if isinstance(states, dict):
        return [s for v in states.values() for s in v]
    return list(states or [])


@HOOKS.register_module()
class ResumeLrFromConfigHook(Hook):
    """Make ``--resume`` honour the config's lr. Declared in
    ``configs/_base_/vanillanet_runtime.py``.

    Example (in a config)::

            default_hooks = dict(resume_lr=dict(type='ResumeLrFromConfigHook'))
    """

    priority = 'VERY_LOW'

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not runner._resume or 'optimizer' not in checkpoint:
            return
        # The optimizer and schedulers are built from the config before a checkpoint is
        # loaded into them.
        configured = [lr for wrapper in _wrappers(runner.optim_wrapper)
                      for lr in _initial_lrs(wrapper.optimizer.param_groups)]
        saved_states = _optimizer_states(checkpoint['optimizer'])
        saved = [lr for s in saved_states for lr in _initial_lrs(s['param_groups'])]
        if len(saved) != len(configured) or not saved or saved[0] == 0:
            return  # another optimizer layout: MMEngine's loading will say so
        ratio = configured[0] / saved[0]
        if ratio == 1:
            return
        for state in saved_states:
            for group in state['param_groups']:
                for key in ('lr', 'initial_lr'):
                    if key in group:
                        group[key] *= ratio
        for scheduler in _scheduler_states(checkpoint.get('param_schedulers')):
            if scheduler.get('param_name') == 'lr':
                scheduler['base_values'] = [v * ratio for v in scheduler['base_values']]
                scheduler['_last_value'] = [v * ratio for v in scheduler['_last_value']]
        print_log(f'--resume: the config\'s lr ({configured[0]:g}) differs from the '
                  f'checkpoint\'s ({saved[0]:g}); the resumed lr and schedule are scaled by '
                  f'{ratio:g}', logger='current', level=30)
