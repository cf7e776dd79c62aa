"""Exact resume: the random number generators continue where the interrupted run left them.

MMEngine restores weights, optimizer, schedulers and the iteration count, and its sampler
reshuffles from (seed, epoch); but the augmentations (random flips, scales) draw from Python's,
numpy's and torch's global generators, which a resumed run re-seeds from the start. Saving their
states with each checkpoint makes the resumed run draw what the uninterrupted one would have.
(With dataloader workers, each worker keeps generators of its own that no checkpoint sees:
exact with num_workers=0, statistically equivalent otherwise.)
"""
import random

import numpy as np
import torch
from mmdet.registry import HOOKS
from mmengine.hooks import Hook


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Save Python's, numpy's and torch's generator states with each checkpoint and restore
    them on ``--resume``. Declared in ``configs/_base_/vanillanet_runtime.py``.

    Example (in a config)::

            default_hooks = dict(random_state=dict(type='RandomStateHook'))
    """

    priority = 'VERY_LOW'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        _, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
        checkpoint['random_state'] = dict(
            python=random.getstate(), torch=torch.get_rng_state(),
            numpy=dict(keys=torch.from_numpy(np_keys.astype(np.int64)), pos=int(np_pos),
                       has_gauss=int(np_gauss), cached_gaussian=float(np_cached)))

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get('random_state')
        if state is None or not runner._resume:
            return
        version, internal, gauss = state['python']
        random.setstate((version, tuple(internal), gauss))
        torch.set_rng_state(state['torch'])
        n = state['numpy']
        np.random.set_state(('MT19937', n['keys'].numpy().astype(np.uint32), n['pos'],
                             n['has_gauss'], n['cached_gaussian']))
