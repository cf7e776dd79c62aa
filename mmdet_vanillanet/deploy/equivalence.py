"""Comparing two networks' outputs: weights generated so that a comparison means something, and
the largest difference of the outputs relative to their magnitude.

A fresh network hides fusion errors (a BN at mean 0, variance 1, gamma 1 and beta 0 folds into
nothing), and a file exported from it checks little; ``randomize`` gives every weight and BN
statistic values far from their initial ones. Used by the deploy functions (an export without a
checkpoint; OnnxDetector's check of an exported RPN head), our tools' fusion checks (the
benchmark's --check, tools/backbone_check.py), the benchmarks and the tests.
"""
from typing import Sequence

import torch


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights and BN statistics far from their initial values, in place.

    A fresh BN (mean 0, var 1, gamma 1, beta 0) would hide folding errors. Conv weights are
    scaled by 1/sqrt(fan_in) so that activations stay of order one through the depth.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point():
            continue
        if name.endswith('running_var'):
            tensor.copy_(torch.rand(tensor.shape, generator=gen) * 1.5 + 0.5)
        elif name.endswith(('running_mean', 'bias')):
            tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.2)
        elif tensor.dim() == 1:  # BN gamma
            tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
        else:
            tensor.copy_(torch.randn(tensor.shape, generator=gen) / tensor[0].numel() ** 0.5)
    return model


def max_rel_diff(expected: Sequence[torch.Tensor], got: Sequence[torch.Tensor]) -> float:
    """Largest absolute difference over all maps, relative to the largest expected magnitude."""
    diff = max((a - b).abs().max().item() for a, b in zip(expected, got))
    return diff / max(a.abs().max().item() for a in expected)
