"""Exact resume: the data order and the random number generators continue where the
interrupted run left them, with or without a seed in the config.

MMEngine restores weights, optimizer, schedulers and the iteration count, and its sampler
reshuffles from (seed, epoch); but
- without a configured seed, the sampler is built with the new run's random seed before
  MMEngine's resume reads the old one from the checkpoint, so the resumed run visits the images
  in another order;
- the augmentations (random flips, scales) draw from Python's, numpy's and torch's global
  generators, which a resumed run re-seeds from the start (and MMEngine's resume re-seeds
  again from the checkpoint's seed).
This hook saves the generators' states with each checkpoint and, on ``--resume``, gives the
sampler the checkpoint's seed and restores the generators just before training continues,
after everything that re-seeds them. (With dataloader workers, each worker keeps generators of
its own that no checkpoint sees: exact with num_workers=0, statistically equivalent otherwise.)
"""
import random

import numpy as np
import torch
from mmdet.registry import HOOKS
from mmengine.hooks import Hook


def _seeded_sampler(dataloader):
    """The sampler that shuffles by its ``seed``: the loader's, or the one its batch sampler
    wraps (PyTorch gives a loader built with a batch sampler a sequential ``sampler``)."""
    for sampler in (getattr(getattr(dataloader, 'batch_sampler', None), 'sampler', None),
                    getattr(dataloader, 'sampler', None)):
        if hasattr(sampler, 'seed'):
            return sampler
    return None


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Save the generator states with each checkpoint; on ``--resume``, continue the data
    order and the generators exactly. Declared in ``configs/_base_/vanillanet_runtime.py``.

    Example (in a config)::

            default_hooks = dict(random_state=dict(type='RandomStateHook'))
    """

    priority = 'VERY_LOW'

    def __init__(self):
        self._resumed_state = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        _, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
        checkpoint['random_state'] = dict(
            python=random.getstate(), torch=torch.get_rng_state(),
            numpy=dict(keys=torch.from_numpy(np_keys.astype(np.int64)), pos=int(np_pos),
                       has_gauss=int(np_gauss), cached_gaussian=float(np_cached)))

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # Kept until before_train: MMEngine's resume re-seeds every generator after this call.
        if runner._resume:
            self._resumed_state = checkpoint.get('random_state')

    def before_train(self, runner) -> None:
        if not runner._resume:
            return
        # By now the runner's seed is the checkpoint's (MMEngine's resume adopts it); the
        # sampler was built before, with the seed this run drew.
        sampler = _seeded_sampler(runner.train_dataloader)
        if sampler is not None:
            sampler.seed = runner.seed
        state = self._resumed_state
        if state is None:
            return
        version, internal, gauss = state['python']
        random.setstate((version, tuple(internal), gauss))
        torch.set_rng_state(state['torch'])
        n = state['numpy']
        np.random.set_state(('MT19937', n['keys'].numpy().astype(np.uint32), n['pos'],
                             n['has_gauss'], n['cached_gaussian']))
