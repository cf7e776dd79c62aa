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
- validation runs after an epoch's checkpoint is written and draws from torch's generator
  (building its dataloader's iterator), which a resumed run does not repeat.
This hook saves the generators' states and the sampler's seed with each checkpoint and, on
``--resume``, gives the sampler that seed and restores the generators just before training
continues, after everything that re-seeds them; and it keeps validation from moving the
training's generators at all. Exact for one process with num_workers=0 and epoch-based loops.
Not exact: dataloader workers keep generators of their own that no checkpoint sees; with
several processes only rank 0's generators are saved (each rank restores them); an
iteration-based loop replays the skipped batches through the pipeline after the restore. These
resume statistically equivalent.
"""
import random

import numpy as np
import torch
from mmdet.registry import HOOKS
from mmengine.hooks import Hook

from ..runner_state import resuming


def _generator_states() -> dict:
    _, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
    states = dict(python=random.getstate(), torch=torch.get_rng_state(),
                  numpy=dict(keys=torch.from_numpy(np_keys.astype(np.int64)), pos=int(np_pos),
                             has_gauss=int(np_gauss), cached_gaussian=float(np_cached)))
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states['cuda'] = torch.cuda.get_rng_state()
    return states


def _set_generator_states(states: dict):
    version, internal, gauss = states['python']
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(states['torch'])
    n = states['numpy']
    np.random.set_state(('MT19937', n['keys'].numpy().astype(np.uint32), n['pos'],
                         n['has_gauss'], n['cached_gaussian']))
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states['cuda'])


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
    order and the generators exactly. Declared in ``configs/_base_/runsafe_runtime.py``.

    Example (in a config)::

            default_hooks = dict(random_state=dict(type='RandomStateHook'))
    """

    priority = 'VERY_LOW'

    def __init__(self):
        self._resumed_state = None
        self._training_state = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint['random_state'] = _generator_states()
        sampler = _seeded_sampler(runner.train_dataloader)
        if sampler is not None:
            checkpoint['random_state']['sampler_seed'] = sampler.seed

    def before_val(self, runner) -> None:
        self._training_state = _generator_states()

    def after_val(self, runner) -> None:
        # Validation draws nothing from the training's generators: a resumed run, which does
        # not repeat the validation that followed its checkpoint, draws the same numbers.
        if self._training_state is not None:
            _set_generator_states(self._training_state)
            self._training_state = None

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # Kept until before_train: MMEngine's resume re-seeds every generator after this call.
        if resuming(runner):
            self._resumed_state = checkpoint.get('random_state')

    def before_train(self, runner) -> None:
        state = self._resumed_state
        if not resuming(runner) or state is None:
            return
        # The sampler was built before the checkpoint was read, with the seed this run drew;
        # checkpoints of 0.2.0 hold no sampler seed, but the runner has adopted theirs.
        sampler = _seeded_sampler(runner.train_dataloader)
        if sampler is not None:
            sampler.seed = state.get('sampler_seed', runner.seed)
        _set_generator_states(state)
